"""The work of a curation run as steps an executor runs: the stage registry, and the three maps over plain dicts
(picklable, so an executor may run them anywhere) — split a source, analyse a clip, caption a clip — plus the
re-encoding of kept clips. Each step holds its stages, set up once per worker; the executors
(:mod:`openwan.curate.executors`) decide where the steps run, and :mod:`openwan.curate.pipeline` caches what comes
back.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.config import SECTIONS, CurateConfig
from openwan.curate.frames import read_clip_frames
from openwan.curate.probe import probe
from openwan.curate.shots import cut_clip, detect_shots, short_shots, split_shots

# (config section, module in openwan.curate, stage class), in run order. A section may have a per-clip part and a
# global part (dedup: each clip's key-frame hashes, then the comparison of all clips).
CLIP_STAGES: tuple[tuple[str, str, str], ...] = (
    ("limits", "filters", "LimitsStage"),
    ("borders", "filters", "BordersStage"),
    ("exposure", "filters", "ExposureStage"),
    ("blur", "filters", "BlurStage"),
    ("overlay", "overlays", "OverlayStage"),
    ("ocr", "ocr", "OCRStage"),
    ("nsfw", "nsfw", "NSFWStage"),
    ("motion", "motion", "MotionStage"),
    ("quality", "quality", "QualityStage"),
    ("embed", "embed", "EmbedStage"),
    ("aesthetic", "aesthetic", "AestheticStage"),
    ("scorer", "scorer", "ScorerStage"),
    ("subsets", "subsets", "SubsetStage"),
    ("dedup", "dedup", "DedupHashStage"),
)
GLOBAL_STAGES: tuple[tuple[str, str, str], ...] = (("dedup", "dedup", "DedupStage"),
                                                   ("clusters", "dedup", "ClusterStage"))
CAPTION_STAGE = ("captions", "captions", "CaptionStage")
Spec = tuple[str, str, str]


# ------------------------------------------------------------------------------------------ stages


def stage_enabled(cfg: CurateConfig, section: str) -> bool:
    """Whether the config has ``section`` and it is on (``enabled`` true, or no ``enabled`` field)."""
    return section in SECTIONS and bool(getattr(cfg.section(section), "enabled", True))


def build_stage(cfg: CurateConfig, spec: Spec) -> Any:
    """The stage ``spec`` = (section, module, class) built from its section (cheap: models load in ``setup``).
    Imports its module only now, so a run imports only the stages it uses."""
    section, module, cls = spec
    stage_cls = getattr(importlib.import_module(f"openwan.curate.{module}"), cls)
    return stage_cls(cfg.section(section))


def clip_stages(cfg: CurateConfig) -> list[Spec]:
    """The enabled per-clip stages, in run order."""
    return [spec for spec in CLIP_STAGES if stage_enabled(cfg, spec[0])]


def global_stages(cfg: CurateConfig) -> list[Spec]:
    """The enabled global stages, in run order."""
    return [spec for spec in GLOBAL_STAGES if stage_enabled(cfg, spec[0])]


# ------------------------------------------------------------------------------------------ steps


def plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples -> lists, NumPy scalars -> Python): fresh and cached results
    are then the same values, so the tables are the same bytes."""
    return json.loads(json.dumps(value, default=_json_default, allow_nan=True))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    raise TypeError(f"a curation value of type {type(value).__name__} is not JSON-able: {value!r}")


def error_text(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"


class SplitStep:
    """Probe a source and cut it into clips at its shots: ``{"path"}`` -> adds ``probe`` (the container's facts),
    ``clips`` ([start, end] seconds) and ``dropped_seconds`` (in shots too short to keep), or ``error``."""

    name = "split"

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self.resources = Resources(num_cpus=1.0, num_gpus=1.0 if cfg.split.device.startswith("cuda") else 0.0)

    def setup(self) -> None:
        pass  # the shot detector's network is loaded once per process on first use (shots._transnet)

    def __call__(self, task: dict) -> dict:

        try:
            info = probe(task["path"])
        except Exception as err:  # noqa: BLE001 - any unreadable source is recorded, never fatal
            return {**task, "error": {"stage": "probe", "error": error_text(err)}}
        try:
            shots = detect_shots(task["path"], self.cfg.split)
            clips = split_shots(shots, info["fps"], self.cfg.split)
            dropped = round(sum(b - a for a, b in short_shots(shots, info["fps"], self.cfg.split)), 6)
        except Exception as err:  # noqa: BLE001
            return {**task, "probe": info, "error": {"stage": "split", "error": error_text(err)}}
        return {**task, "probe": info, "clips": [[a, b] for a, b in clips], "dropped_seconds": dropped}


class ClipStep:
    """One or more per-clip stages run in order on a clip's frames; the first step of a chain decodes them.

    A task is ``{"row": clip row, "values": {}, "reasons": [], "errors": [], "crop": None}``; each stage's values
    and reasons are added, the border stage's crop cuts the frames the next stages see, and a stage that raises
    adds an error and a reason and ends the clip's analysis.
    """

    def __init__(self, cfg: CurateConfig, specs: Sequence[Spec], decode: bool, keep_frames: bool):
        self.cfg, self.specs, self.decode, self.keep_frames = cfg, list(specs), decode, keep_frames
        self.name = "+".join(s[0] for s in self.specs) or "decode"
        self.stages: list[Any] | None = None
        stages = [build_stage(cfg, s) for s in self.specs]
        self.resources = _merge_resources([getattr(s, "resources", Resources()) for s in stages])

    def setup(self) -> None:
        if self.stages is None:
            stages = [build_stage(self.cfg, s) for s in self.specs]
            for stage in stages:
                stage.setup()
            self.stages = stages

    def __call__(self, task: dict) -> dict:
        self.setup()
        frames = task.pop("frames", None)
        if self.decode and not task["errors"]:
            try:
                frames = decode_clip(task["row"], self.cfg)
            except Exception as err:  # noqa: BLE001 - a clip that cannot be decoded is recorded, never fatal
                _fail(task, "frames", err)
        for stage in self.stages:
            if task["errors"]:
                break
            row = {**task["row"], **task["values"], "crop": task["crop"]}
            try:
                out: StageOutput = stage(row, frames)
                task["values"].update(plain(out.values))
                task["reasons"] += [str(r) for r in out.reasons]
                if out.crop is not None:
                    task["crop"] = [int(v) for v in out.crop]
                    frames = frames.cropped(tuple(task["crop"]))
            except Exception as err:  # noqa: BLE001 - recorded with the clip, never fatal
                _fail(task, stage.name, err)
        if self.keep_frames and frames is not None and not task["errors"]:
            task["frames"] = frames
        return task


def _fail(task: dict, stage: str, err: BaseException) -> None:
    text = error_text(err)
    task["errors"].append({"stage": stage, "error": text})
    task["reasons"].append(f"the {stage} stage failed on this clip ({text})")


def _merge_resources(resources: Sequence[Resources]) -> Resources:
    if not resources:
        return Resources()
    return Resources(num_cpus=max(r.num_cpus for r in resources), num_gpus=max(r.num_gpus for r in resources))


def decode_clip(row: dict, cfg: CurateConfig) -> ClipFrames:
    """A clip's analysis frames: ``run.analysis_fps`` from its start, short side ``run.analysis_size``."""
    return read_clip_frames(row["source"], row["start"], row["end"], fps=cfg.run.analysis_fps,
                            short_side=cfg.run.analysis_size)


def clip_steps(cfg: CurateConfig, specs: Sequence[Spec] | None = None) -> list[ClipStep]:
    """The per-clip stages as steps: consecutive stages that ask for the same GPUs (none, mostly) share a step,
    one worker running them on one decode with the most CPUs any of them asks for; a stage asking for a GPU
    starts a step of its own, so only it holds the GPU."""
    specs = clip_stages(cfg) if specs is None else list(specs)
    groups: list[list[Spec]] = []
    last: float | None = None
    for spec in specs:
        gpus = getattr(build_stage(cfg, spec), "resources", Resources()).num_gpus
        if groups and gpus == last:
            groups[-1].append(spec)
        else:
            groups.append([spec])
        last = gpus
    groups = groups or [[]]
    return [ClipStep(cfg, g, decode=(i == 0), keep_frames=(i < len(groups) - 1)) for i, g in enumerate(groups)]


class CaptionStep:
    """The caption stage on a kept clip: ``{"row": the clip's full row}`` -> adds ``values`` (``caption`` and the
    ``captions_*`` columns), ``reasons`` and ``errors``. In ``keep`` mode no frame is decoded."""

    name = "captions"

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self.resources = getattr(build_stage(cfg, CAPTION_STAGE), "resources", Resources())
        self.stage: Any = None

    def setup(self) -> None:
        if self.stage is None:
            stage = build_stage(self.cfg, CAPTION_STAGE)
            stage.setup()
            self.stage = stage

    def __call__(self, task: dict) -> dict:
        self.setup()
        row = task["row"]
        task.update(values={}, reasons=[], errors=[])
        try:
            if self.cfg.captions.mode == "keep":
                frames = ClipFrames(np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0), self.cfg.run.analysis_fps,
                                    (row["width"], row["height"]))
            else:
                frames = decode_clip(row, self.cfg)
                if row.get("crop"):
                    frames = frames.cropped(tuple(row["crop"]))
            out = self.stage(row, frames)
            task["values"] = plain(out.values)
            task["reasons"] = [str(r) for r in out.reasons]
        except Exception as err:  # noqa: BLE001 - recorded, and the clip is rejected with the reason
            _fail(task, "captions", err)
        return task


class ReencodeStep:
    """A kept clip's range re-encoded as its own H.264 file (``split.reencode``): ``{"source", "start", "end",
    "file"}`` (``file`` relative to the output folder) -> adds ``errors``."""

    name = "reencode"
    resources = Resources()

    def __init__(self, out: Path):
        self.out = out

    def setup(self) -> None:
        pass

    def __call__(self, task: dict) -> dict:

        task["errors"] = []
        try:
            cut_clip(task["source"], task["start"], task["end"], self.out / task["file"])
        except Exception as err:  # noqa: BLE001 - recorded, and the clip is rejected with the reason
            task["errors"].append({"stage": "reencode", "error": error_text(err)})
        return task
