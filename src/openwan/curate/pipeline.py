"""``curate(cfg, out_dir)``: raw videos in; a training manifest, every clip's scores and decision, an error table,
a per-source table and a report out.

The run, phase by phase (each with a progress bar):

1. **sources** — the inputs are listed (folders, globs, files, manifests) and sorted; each source is hashed
   (its bytes' SHA-256), probed, and split at its shot boundaries into clips of the configured length. A source
   that cannot be read is recorded in ``errors.parquet`` and ``sources.parquet``, never fatal.
2. **clips** — each clip is decoded once at ``run.analysis_fps`` / ``run.analysis_size`` and runs the enabled
   per-clip stages in order (limits, borders, exposure, blur, overlay, ocr, nsfw, motion, quality, embed,
   aesthetic, scorer, subsets); the border stage's crop is applied to the frames the later stages see and
   recorded. A stage that raises is recorded as an error and rejects the clip with that reason.
3. **global** — deduplication and clustering over all clips' rows.
4. **decisions** — a clip is kept iff it has no reason; every reason is kept.
5. **captions** — per kept clip (sees the row, OCR text included).
6. **outputs** — ``manifest.parquet`` (the kept clips as :class:`~openwan.data.manifest.ClipRecord` rows with
   their scores beside; ``openwan train`` reads it), ``clips.parquet``, ``errors.parquet``, ``sources.parquet``
   and the report, each written atomically and deterministically (sorted by source and start, no time stamps).

Resumable: the split of each source, each clip's stage results and each caption are cached under
``out/cache/`` as JSON, keyed by the source's content hash, the clip's range and a hash of the settings they
depend on, and written atomically by this (the driver) process as results arrive, whichever executor computed
them. A rerun, after a finished run or a killed one, computes only what is missing and writes the same tables.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.config import SECTIONS, CurateConfig, config_hash
from openwan.curate.executors import LocalExecutor, make_executor
from openwan.curate.frames import read_clip_frames
from openwan.curate.probe import content_hash, probe
from openwan.curate.report import reason_kind, write_report
from openwan.curate.shots import cut_clip, detect_shots, short_shots, split_shots
from openwan.curate.sources import Source, check_out_dir, list_sources
from openwan.curate.tables import write_outputs
from openwan.fileio import atomic_write

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

SPLIT_VERSION = 2  # bump when the split cache's content changes meaning
CLIP_VERSION = 1


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


# ------------------------------------------------------------------------------------------ tasks
#
# The work of a run is three maps over plain dicts (picklable, so an executor may run them anywhere): split a
# source, analyse a clip, caption a clip. Each is a chain of steps (a step holds its stages, set up once per
# worker); the executors decide where the steps run. Results come back to the driver, which caches them.


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples -> lists, NumPy scalars -> Python): fresh and cached results
    are then the same values, so the tables are the same bytes."""
    return json.loads(json.dumps(value, default=_json_default, allow_nan=True))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    raise TypeError(f"a curation value of type {type(value).__name__} is not JSON-able: {value!r}")


def _error_text(err: BaseException) -> str:
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
            return {**task, "error": {"stage": "probe", "error": _error_text(err)}}
        try:
            shots = detect_shots(task["path"], self.cfg.split)
            clips = split_shots(shots, info["fps"], self.cfg.split)
            dropped = round(sum(b - a for a, b in short_shots(shots, info["fps"], self.cfg.split)), 6)
        except Exception as err:  # noqa: BLE001
            return {**task, "probe": info, "error": {"stage": "split", "error": _error_text(err)}}
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
                task["values"].update(_plain(out.values))
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
    text = _error_text(err)
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
            task["values"] = _plain(out.values)
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
            task["errors"].append({"stage": "reencode", "error": _error_text(err)})
        return task


# ------------------------------------------------------------------------------------------ caches


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or a file from before a crash that is not JSON: recompute
        return None


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, allow_nan=True)  # key order kept: it is the column order of the tables
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def source_key(path: str, cfg: CurateConfig) -> str:
    """What a source's caches are keyed by: the SHA-256 of its bytes (``run.hash_content``), else of its path,
    size and modification time. ValueError for a file that cannot be read."""
    if cfg.run.hash_content:

        return content_hash(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror}).") from None
    return hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def _clip_key(row: dict, settings: str) -> str:
    text = f"{row['source_hash']}\0{row['start']!r}\0{row['end']!r}\0{settings}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _analysis_hash(cfg: CurateConfig, sections: Sequence[str], version: int) -> str:
    text = json.dumps({"fps": cfg.run.analysis_fps, "size": cfg.run.analysis_size, "v": version,
                       "sections": config_hash(cfg, sections)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def clip_file_name(row: dict) -> str:
    """The file name of a clip's re-encoded copy: ``<source stem>-<hash8>-<start>-<end>.mp4``."""
    return f"{Path(row['source']).stem}-{row['source_hash'][:8]}-{row['start']:.3f}-{row['end']:.3f}.mp4"


def clip_id(source: str, source_hash: str, start: float, end: float) -> str:
    """A clip's readable, stable id: ``<source stem>-<8 hex of its content hash>#<start>-<end>`` (seconds)."""
    return f"{Path(source).stem}-{source_hash[:8]}#{start:.3f}-{end:.3f}"


# ------------------------------------------------------------------------------------------ the run


def not_measured(cfg: CurateConfig) -> dict[str, str]:
    """What this config leaves unmeasured, by section, and what to give or install to measure it: the model stages
    that need weights no package ships (LAION aesthetics, the expert scorer, a semantic embedder, a captioning
    model)."""
    notes = {}
    if not stage_enabled(cfg, "aesthetic"):
        from openwan.curate.aesthetic import NOT_MEASURED

        notes["aesthetic"] = NOT_MEASURED
    if not stage_enabled(cfg, "scorer"):
        notes["scorer"] = ("not measured: train an expert scorer (openwan curate label-sheet, then train-scorer) "
                           "and give scorer.path")
    if stage_enabled(cfg, "embed") and cfg.embed.resolved == "pixels":
        notes["embed"] = ("weight-free pixel features (colour, layout, texture); for semantic embeddings give "
                          "embed.path (a Wan i2v release's CLIP) or embed.embedder=open-clip")
    if stage_enabled(cfg, "captions") and cfg.captions.mode == "keep":
        notes["captions"] = ("kept from the input; to write captions give captions.mode=vlm with "
                             "captions.model_dir, or captions.mode=endpoint with captions.url")
    return notes




@dataclass
class CurateResult:
    """What a run wrote and counted. ``counts``: sources, processed and failed sources, clips, kept, rejected,
    errors. ``computed``: how many items each phase computed in this run (the rest came from the caches).
    ``seconds``: wall time per phase."""

    out_dir: Path
    manifest: Path
    clips: Path
    errors: Path
    sources: Path
    report: Path | None
    counts: dict[str, int]
    computed: dict[str, int]
    seconds: dict[str, float]
    rejections: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def check_inputs(cfg: CurateConfig, out_dir: str | Path, paths: Sequence[str | Path] = ()) -> tuple[list[Source], Path]:
    """Everything a run needs, checked before any compute: the sources (ValueError when none), a writable output
    folder, the executor's package, and every enabled stage built from its section."""
    if cfg.run.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("run.executor=ray needs Ray Data; install it with pip install 'ray[data]' (or "
                             "pip install 'openwan[curate]'), or use the local executor.") from None
    sources = list_sources(cfg, paths)
    out = check_out_dir(out_dir)
    for spec in [*clip_stages(cfg), *global_stages(cfg)]:
        build_stage(cfg, spec)
    if stage_enabled(cfg, "captions"):
        build_stage(cfg, CAPTION_STAGE)
    return sources, out


def curate(cfg: CurateConfig, out_dir: str | Path, executor: Any = None, paths: Sequence[str | Path] = (),
           progress: Callable[..., Any] | None = None) -> CurateResult:
    """Run the curation of ``cfg`` (inputs: ``cfg.input.paths`` and ``paths``) into ``out_dir``; see the module
    docstring. ``executor``: an :mod:`openwan.curate.executors` executor (None: the one ``cfg.run`` names).
    Bad config or inputs raise ValueError before any compute; unreadable sources and failing stages are recorded.
    """
    sources, out = check_inputs(cfg, out_dir, paths)
    bar = progress or _progress(cfg)
    own = executor is None
    executor = make_executor(cfg.run) if own else executor
    try:
        return _run(cfg, out, sources, executor, bar)
    finally:
        if own:
            executor.close()


def _progress(cfg: CurateConfig) -> Callable[..., Any]:
    from tqdm.auto import tqdm

    def bar(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="item", disable=not cfg.run.progress, dynamic_ncols=True)

    return bar


def _run(cfg: CurateConfig, out: Path, sources: list[Source], executor: Any, bar) -> CurateResult:
    cache = out / "cache"
    seconds: dict[str, float] = {}
    computed: dict[str, int] = {}
    errors: list[dict] = []

    # 1. sources: hash, probe, split
    t0 = time.perf_counter()
    split_hash = _analysis_hash(cfg, ["split"], SPLIT_VERSION)
    split_results: dict[str, dict] = {}
    todo: list[dict] = []
    keys: dict[str, str] = {}
    with bar(len(sources), "hash") as pbar:
        for source in sources:
            if source.error is None:
                try:
                    keys[source.path] = source_key(source.path, cfg)
                except ValueError as err:
                    split_results[source.path] = {"error": {"stage": "hash", "error": str(err)}}
            else:
                split_results[source.path] = {"error": {"stage": "input", "error": source.error}}
            pbar.update(1)
    for source in sources:
        if source.path not in keys:
            continue
        cached = _read_json(cache / "split" / f"{keys[source.path]}-{split_hash}.json")
        if cached is not None:
            split_results[source.path] = cached
        else:
            todo.append({"path": source.path, "hash": keys[source.path]})
    with bar(len(todo), "probe+split") as pbar:
        for task in executor.map([SplitStep(cfg)], todo):
            result = _plain({k: v for k, v in task.items() if k not in ("path", "hash")})
            # a probe error follows from the file's bytes (cached with them); a failed split may not (a GPU out of
            # memory): that source is tried again by the next run
            if result.get("error", {}).get("stage") != "split":
                _write_json(cache / "split" / f"{task['hash']}-{split_hash}.json", result)
            split_results[task["path"]] = result
            pbar.update(1)
    computed["split"] = len(todo)
    seconds["split"] = time.perf_counter() - t0

    # clip rows
    rows: list[dict] = []
    source_rows: list[dict] = []
    for source in sources:
        result = split_results[source.path]
        info = result.get("probe") or {}
        entry = {"source": source.path, "source_hash": keys.get(source.path), "status": "processed", "clips": 0,
                 "kept": 0, "duration": info.get("duration"), "dropped_seconds": result.get("dropped_seconds"),
                 "codec": info.get("codec"), "width": info.get("width"), "height": info.get("height"),
                 "fps": info.get("fps"), "error": None}
        if "error" in result:
            entry.update(status="error", error=f"{result['error']['stage']}: {result['error']['error']}")
            errors.append({"source": source.path, "clip_id": None, **result["error"]})
        else:
            for start, end in result["clips"]:
                rows.append(_clip_row(source, keys[source.path], info, start, end))
        source_rows.append(entry)

    # 2. clips
    t0 = time.perf_counter()
    specs = clip_stages(cfg)
    clip_hash = _analysis_hash(cfg, sorted({s[0] for s in CLIP_STAGES} & set(SECTIONS)), CLIP_VERSION)
    results: dict[str, dict] = {}
    todo = []
    for row in rows:
        key = _clip_key(row, clip_hash)
        cached = _read_json(cache / "clips" / f"{key}.json")
        if cached is not None:
            results[row["clip_id"]] = cached
        else:
            todo.append({"row": row, "key": key, "values": {}, "reasons": [], "errors": [], "crop": None})
    with bar(len(todo), "clips: " + (", ".join(s[0] for s in specs) or "decode")) as pbar:
        for task in executor.map(clip_steps(cfg, specs), todo):
            result = _plain({k: task[k] for k in ("values", "reasons", "errors", "crop")})
            if not result["errors"]:  # a failed clip is tried again by the next run
                _write_json(cache / "clips" / f"{task['key']}.json", result)
            results[task["row"]["clip_id"]] = result
            pbar.update(1)
    computed["clips"] = len(todo)
    seconds["clips"] = time.perf_counter() - t0
    for row in rows:
        result = results[row["clip_id"]]
        row.update(result["values"])
        row["crop"] = result["crop"]
        row["reasons"] = list(result["reasons"])
        errors += [{"source": row["source"], "clip_id": row["clip_id"], **e} for e in result["errors"]]

    # 3. global stages
    t0 = time.perf_counter()
    for spec in global_stages(cfg):
        stage, name = build_stage(cfg, spec), spec[0]
        with bar(1, name) as pbar:
            try:
                outputs = stage(rows) if rows else []
            except Exception as err:  # noqa: BLE001 - recorded; the clips keep what they have
                errors.append({"source": None, "clip_id": None, "stage": name, "error": _error_text(err)})
                outputs = []
            pbar.update(1)
        for row, o in zip(rows, outputs):
            row.update(_plain(o.values))
            row["reasons"] += [str(r) for r in o.reasons]
    seconds["global"] = time.perf_counter() - t0

    # 4. decisions
    for row in rows:
        row["kept"] = not row["reasons"]

    # 5. captions (a caption that fails or is required and missing rejects the clip)
    t0 = time.perf_counter()
    computed["captions"] = 0
    if stage_enabled(cfg, "captions"):
        caption_hash = _analysis_hash(cfg, ["captions"], CLIP_VERSION)
        results = {}
        todo = []
        for row in rows:
            if not row["kept"]:
                continue
            key = _clip_key(row, caption_hash)
            cached = _read_json(cache / "captions" / f"{key}.json")
            if cached is not None:
                results[row["clip_id"]] = cached
            else:
                todo.append({"row": dict(row), "key": key})
        # keep mode reads no frame and loads no model: it runs here rather than on the workers
        runner = LocalExecutor() if cfg.captions.mode == "keep" else executor
        with bar(len(todo), "captions") as pbar:
            for task in runner.map([CaptionStep(cfg)], todo):
                result = _plain({k: task[k] for k in ("values", "reasons", "errors")})
                if not result["errors"] and not result["reasons"]:  # a failed request is tried again next run
                    _write_json(cache / "captions" / f"{task['key']}.json", result)
                results[task["row"]["clip_id"]] = result
                pbar.update(1)
        computed["captions"] = len(todo)
        for row in rows:
            result = results.get(row["clip_id"])
            if result is not None:
                row.update(result["values"])
                row["reasons"] += result["reasons"]
                row["kept"] = not row["reasons"]
                errors += [{"source": row["source"], "clip_id": row["clip_id"], **e} for e in result["errors"]]
    seconds["captions"] = time.perf_counter() - t0

    # re-encoded clips (split.reencode): out/clips/<clip>.mp4, made once
    t0 = time.perf_counter()
    computed["reencode"] = 0
    if cfg.split.reencode:
        todo = []
        for row in rows:
            if row["kept"]:
                row["clip_path"] = f"clips/{clip_file_name(row)}"
                if not (out / row["clip_path"]).is_file():
                    todo.append({"clip_id": row["clip_id"], "source": row["source"], "start": row["start"],
                                 "end": row["end"], "file": row["clip_path"]})
        by_id = {row["clip_id"]: row for row in rows}
        with bar(len(todo), "reencode") as pbar:
            for task in executor.map([ReencodeStep(out)], todo):
                row = by_id[task["clip_id"]]
                for e in task["errors"]:
                    errors.append({"source": row["source"], "clip_id": row["clip_id"], **e})
                    row["reasons"].append(f"the clip could not be re-encoded ({e['error']})")
                    row["kept"] = False
                    row["clip_path"] = None
                pbar.update(1)
        computed["reencode"] = len(todo)
        seconds["reencode"] = time.perf_counter() - t0

    # 6. outputs
    t0 = time.perf_counter()
    rows.sort(key=lambda r: (r["source"], r["start"], r["end"]))
    errors.sort(key=lambda e: (e["source"] or "", e["clip_id"] or "", e["stage"], e["error"]))
    by_source = Counter(r["source"] for r in rows)
    kept_by_source = Counter(r["source"] for r in rows if r["kept"])
    for entry in source_rows:
        entry["clips"], entry["kept"] = by_source[entry["source"]], kept_by_source[entry["source"]]
    paths = write_outputs(cfg, out, rows, errors, source_rows)
    check_accounting(sources, source_rows, rows)
    seconds["outputs"] = time.perf_counter() - t0
    report = None
    if cfg.report.enabled:
        t0 = time.perf_counter()
        report = write_report(out, cfg.report, rows, source_rows, errors, not_measured(cfg))
        seconds["report"] = time.perf_counter() - t0
    rejections = Counter(reason_kind(r) for row in rows for r in row["reasons"])
    kept = sum(r["kept"] for r in rows)
    counts = {"sources": len(sources), "processed": sum(e["status"] == "processed" for e in source_rows),
              "failed": sum(e["status"] == "error" for e in source_rows), "clips": len(rows), "kept": kept,
              "rejected": len(rows) - kept, "errors": len(errors)}
    return CurateResult(out, *paths, report, counts, computed, seconds, dict(sorted(rejections.items())),
                        not_measured(cfg))


def _clip_row(source: Source, key: str, info: dict, start: float, end: float) -> dict:
    fps = float(info["fps"])
    return {"clip_id": clip_id(source.path, key, start, end), "source": source.path, "source_hash": key,
            "start": float(start), "end": float(end), "duration": float(end - start),
            "frames": max(1, int(round((end - start) * fps))), "fps": fps, "width": int(info["width"]),
            "height": int(info["height"]), "codec": str(info.get("codec", "")),
            "has_audio": bool(info.get("has_audio", False)), "caption": source.caption}


def check_accounting(sources: Sequence[Source], source_rows: Sequence[dict], rows: Sequence[dict]) -> None:
    """Nothing lost: every input source is in the source table as processed or error, every clip comes from a
    processed source and is kept or rejected with a reason. RuntimeError (a bug, not a user error) otherwise."""
    listed = [e["source"] for e in source_rows]
    if sorted(listed) != sorted(s.path for s in sources) or len(set(listed)) != len(listed):
        raise RuntimeError("the source table does not hold every input source exactly once")
    if any(e["status"] not in ("processed", "error") for e in source_rows):
        raise RuntimeError("a source is neither processed nor an error")
    processed = {e["source"] for e in source_rows if e["status"] == "processed"}
    for row in rows:
        if row["source"] not in processed:
            raise RuntimeError(f"clip {row['clip_id']} comes from a source that was not processed")
        if row["kept"] == bool(row["reasons"]):
            raise RuntimeError(f"clip {row['clip_id']} is neither kept nor rejected with a reason")


__all__ = ["curate", "CurateResult", "check_inputs", "build_stage", "stage_enabled", "clip_stages", "global_stages",
           "clip_steps", "SplitStep", "ClipStep", "CaptionStep", "decode_clip", "clip_id", "source_key",
           "check_accounting", "not_measured", "CLIP_STAGES", "GLOBAL_STAGES"]
