"""``openwan eval bench``'s run: find the videos and their prompts, decode each once, score it on every chosen
dimension, and write ``scores.jsonl``, ``summary.json`` and ``errors.jsonl``.

Inputs (:func:`find_videos`): a folder of videos (:data:`VIDEO_SUFFIXES`, not recursive), a glob, one video file,
a list of files, or a manifest (``.jsonl`` / ``.parquet`` as :func:`openwan.data.manifest.read_manifest` reads it:
its caption is the prompt, its start/end and crop are honoured). Prompts come from, in order: ``prompts`` (a
``.txt`` file with one prompt per line matched to the videos sorted by path, or a ``.json`` / ``.jsonl`` file
mapping a video's file name or stem to its prompt), the manifest's caption, a sidecar ``NAME.txt`` beside the
video; else None (dimensions that need a prompt report "not applicable").

Failures never stop a run: a video that cannot be decoded goes to ``errors.jsonl`` and is skipped; a dimension
that raises on a video is recorded as that (video, dimension)'s error. A re-run (``resume``) reuses every stored
score whose video (path, size, modification time), prompt and decoding options are unchanged, and scores only
what is missing: new videos, new dimensions, errors, and "not measured" dimensions that can run now.
"""

from __future__ import annotations

import glob as globlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from openwan.data.manifest import MANIFEST_SUFFIXES, read_manifest
from openwan.data.video import iter_video_frames, read_header
from openwan.eval.bench.base import BenchWeights, Dimension, Score, Video
from openwan.eval.bench.registry import build_dimensions
from openwan.fileio import atomic_write

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif")
SCORES_FILE, SUMMARY_FILE, ERRORS_FILE = "scores.jsonl", "summary.json", "errors.jsonl"
CHECKPOINT_S = 30.0  # scores.jsonl is rewritten at most this often during a run, and at its end
FALLBACK_FPS = 16.0  # for a file whose container declares no frame rate (recorded in the video's meta)

# The aggregate, after VBench's total score: (4 x quality + 1 x semantic) / 5, each group the weighted mean of its
# measured dimensions' means. Weights inside a group follow VBench (dynamic degree counts half); two measures of one
# VBench dimension (imaging quality by sharpness and by MUSIQ) share its weight. Only measured dimensions enter;
# the weights are renormalised over them (a group with none measured drops out and the other takes its share).
GROUP_WEIGHTS = {"quality": 4.0, "semantic": 1.0}
AGGREGATE_WEIGHTS: dict[str, tuple[str, float]] = {
    "subject_consistency": ("quality", 1.0),
    "background_consistency": ("quality", 1.0),
    "temporal_flickering": ("quality", 1.0),
    "motion_smoothness": ("quality", 1.0),
    "pixel_stability": ("quality", 1.0),
    "dynamic_degree": ("quality", 0.5),
    "large_motion": ("quality", 0.5),
    "aesthetic_quality": ("quality", 1.0),
    "imaging_quality": ("quality", 0.5),
    "imaging_quality_musiq": ("quality", 0.5),
    "prompt_alignment": ("semantic", 1.0),
    "camera_motion": ("semantic", 1.0),
    "text_accuracy": ("semantic", 1.0),
    "demo_colour": ("semantic", 1.0),
    "demo_shape": ("semantic", 1.0),
    "demo_motion": ("semantic", 1.0),
}


@dataclass(frozen=True)
class DecodeOptions:
    """How videos are decoded: resampled to ``fps`` (None: as stored), the first ``max_frames`` kept (None: all)."""

    fps: float | None = None
    max_frames: int | None = 128

    def __post_init__(self):
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number of frames per second; got {self.fps}.")
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2 (temporal dimensions compare frames); got "
                             f"{self.max_frames}.")


@dataclass(frozen=True)
class VideoSource:
    """One input to decode: the file, its id, its prompt, and a manifest's start/end (seconds) and crop."""

    path: str
    id: str
    prompt: str | None = None
    start: float | None = None
    end: float | None = None
    crop: tuple[int, int, int, int] | None = None


# ------------------------------------------------------------------------------------------------ inputs


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _video_files(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(inputs, (str, Path)):
        text = str(inputs)
        if _is_glob(text) and not Path(text).exists():
            files = [Path(p) for p in sorted(globlib.glob(text)) if Path(p).suffix.lower() in VIDEO_SUFFIXES]
            if not files:
                raise ValueError(f"no videos match {text}; the pattern must match files ending in "
                                 f"{', '.join(VIDEO_SUFFIXES)}.")
            return files
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not files:
                raise ValueError(f"no videos found in {path}; give a folder holding {', '.join(VIDEO_SUFFIXES)} "
                                 "files, a glob, or a manifest.")
            return files
        inputs = [path]
    files = [Path(p) for p in inputs]
    if not files:
        raise ValueError("no videos were given; give a folder, a glob, video files or a manifest.")
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path} does not exist; check the path (a folder, a glob, a video or a manifest).")
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path} is not a video openwan eval bench reads; give {', '.join(VIDEO_SUFFIXES)} "
                             f"files or a manifest ({', '.join(MANIFEST_SUFFIXES)}).")
    return files


def _ids(files: list[Path]) -> list[str]:
    """Each file's stem; its name where two files share a stem; its path where two share a name."""
    stems = [p.stem for p in files]
    names = [p.name for p in files]
    return [s if stems.count(s) == 1 else (n if names.count(n) == 1 else str(p))
            for s, n, p in zip(stems, names, files)]


def read_prompts_file(path: str | Path) -> list[str] | dict[str, str]:
    """A prompts file: a ``.txt`` as its non-empty lines, a ``.json`` object {video name or stem: prompt}, a
    ``.jsonl`` of {"video"|"path"|"name"|"id": ..., "prompt"|"caption": ...} rows as the same mapping."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {path} does not exist; give a .txt, .json or .jsonl prompts file.")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--prompts {path} is not UTF-8 text; save it as UTF-8.") from None
    if suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"--prompts {path}: name it .txt (one prompt per line), .json or .jsonl (video -> prompt).")
    try:
        rows = [json.loads(text)] if suffix == ".json" else [json.loads(t) for t in text.splitlines() if t.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"--prompts {path} is not valid JSON ({err.msg} at line {err.lineno}); fix it.") from None
    mapping: dict[str, str] = {}
    for row in rows:
        if suffix == ".json" and isinstance(row, dict) and all(isinstance(v, str) for v in row.values()):
            mapping.update(row)
            continue
        key = next((row[k] for k in ("video", "path", "name", "id") if isinstance(row, dict) and k in row), None)
        prompt = next((row[k] for k in ("prompt", "caption") if isinstance(row, dict) and k in row), None)
        if not isinstance(key, str) or not isinstance(prompt, str):
            raise ValueError(f"--prompts {path}: every entry must name a video and its prompt ({{\"video\": "
                             f"\"a.mp4\", \"prompt\": \"...\"}}); got {row!r}.")
        mapping[key] = prompt
    return mapping


def _match_prompts(files: list[Path], prompts: list[str] | dict[str, str], where: str) -> list[str]:
    if isinstance(prompts, list):
        if len(prompts) != len(files):
            raise ValueError(f"--prompts {where} has {len(prompts)} prompts for {len(files)} videos; give one line "
                             "per video, in the order of the videos sorted by path.")
        order = sorted(range(len(files)), key=lambda i: str(files[i]))
        out = [""] * len(files)
        for prompt, i in zip(prompts, order):
            out[i] = prompt
        return out
    keys = {Path(k).name: v for k, v in prompts.items()} | {Path(k).stem: v for k, v in prompts.items()}
    missing = [p.name for p in files if p.name not in keys and p.stem not in keys]
    if missing:
        raise ValueError(f"--prompts {where} gives no prompt for {len(missing)} of {len(files)} videos (e.g. "
                         f"{', '.join(missing[:3])}); key its entries by the videos' file names or stems.")
    return [keys.get(p.name, keys.get(p.stem)) for p in files]


def find_videos(inputs: str | Path | Iterable[str | Path],
                prompts: str | Path | list[str] | dict[str, str] | None = None) -> list[VideoSource]:
    """The videos ``inputs`` name (a folder, a glob, files, or a manifest), each with its prompt (see the module
    docstring). Refuses, before any decoding, inputs that name no video and prompts that do not match them."""
    given = None if prompts is None else (read_prompts_file(prompts) if isinstance(prompts, (str, Path))
                                          else prompts)
    where = str(prompts) if isinstance(prompts, (str, Path)) else "(given)"
    single = Path(inputs) if isinstance(inputs, (str, Path)) else None
    if single is not None and single.suffix.lower() in MANIFEST_SUFFIXES:
        records = read_manifest(single)
        if not records:
            raise ValueError(f"{single} lists no clips; give a manifest with at least one row.")
        files = [Path(r.path) for r in records]
        texts = _match_prompts(files, given, where) if given is not None else [r.caption for r in records]
        return [VideoSource(r.path, r.id, t, r.start, r.end, r.crop) for r, t in zip(records, texts)]
    files = _video_files(inputs)
    if given is not None:
        texts = _match_prompts(files, given, where)
    else:
        sidecars = [p.with_suffix(".txt") for p in files]
        texts = [s.read_text(encoding="utf-8").strip() if s.is_file() else None for s in sidecars]
    return [VideoSource(str(p), i, t) for p, i, t in zip(files, _ids(files), texts)]


def decode(source: VideoSource, options: DecodeOptions = DecodeOptions()) -> Video:
    """``source`` decoded once into a :class:`Video` (uint8 frames); ValueError for a file that cannot be read."""
    header = read_header(source.path)
    rate = header["fps"] if header["fps"] > 0 else None
    fps = options.fps or rate or FALLBACK_FPS
    first = round(source.start * fps) if source.start else 0
    last = round(source.end * fps) if source.end else None
    frames = []
    for i, frame in enumerate(iter_video_frames(source.path, options.fps)):
        if i < first:
            continue
        if last is not None and i >= last:
            break
        frame = frame.numpy()
        if source.crop is not None:
            left, top, right, bottom = source.crop
            frame = frame[top:bottom, left:right]
        frames.append(frame)
        if options.max_frames is not None and len(frames) >= options.max_frames:
            break
    if not frames:
        raise ValueError(f"{source.path} has no frames to score; the file is empty or its clip bounds miss it.")
    meta = {"source_fps": rate, "source_frames": header["frames"], **({"fps_assumed": True} if not rate else {})}
    return Video(np.stack(frames), fps, source.prompt, source.path, source.id, meta)


# ------------------------------------------------------------------------------------------------ scoring


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def plain(value):
    """``value`` as JSON: numpy scalars and arrays as numbers and lists, NaN and infinities as None, other objects
    as their text."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


class _Scorer:
    """The chosen dimensions, each checked once for availability and set up on first use. A dimension whose check
    or setup raises is not measured from then on, its sentence naming the error (kept in ``setup_errors``)."""

    def __init__(self, dimensions: list[Dimension]):
        self.dimensions = {d.name: d for d in dimensions}
        self.unavailable: dict[str, str | None] = {}
        self.setup_errors: dict[str, str] = {}
        for d in dimensions:
            try:
                self.unavailable[d.name] = d.available()
            except Exception as err:  # a broken check is that dimension's failure, not the run's
                self._failed(d.name, "could not tell whether it can run", err)
        self.ready: set[str] = set()

    def _failed(self, name: str, what: str, err: Exception) -> None:
        self.setup_errors[name] = _error_text(err)
        self.unavailable[name] = f"not measured: {name} {what} ({_error_text(err)})"

    def runnable(self, name: str) -> bool:
        return self.unavailable[name] is None

    def _setup(self, name: str) -> None:
        if name in self.ready or not self.runnable(name):
            return
        try:
            self.dimensions[name].setup()
            self.ready.add(name)
        except Exception as err:
            self._failed(name, "could not load", err)

    def score(self, video: Video, names: Iterable[str]) -> tuple[dict[str, dict], dict[str, str]]:
        scores, errors = {}, {}
        for name in names:
            self._setup(name)
            if self.unavailable[name] is not None:
                scores[name] = Score(None, not_measured=self.unavailable[name]).to_json()
                continue
            dim = self.dimensions[name]
            try:
                score = dim.score(video)
                if not isinstance(score, Score):
                    raise TypeError(f"{type(dim).__name__}.score returned {type(score).__name__}, not a Score")
                scores[name] = plain(score.to_json())
            except Exception as err:  # one dimension's failure on one video is recorded, never fatal
                errors[name] = _error_text(err)
                scores[name] = {"value": None, "error": errors[name]}
        return scores, errors


def score_videos(videos: Iterable[Video], dimensions: list[Dimension]) -> list[dict]:
    """One row per video: ``id``, ``path``, ``prompt`` and ``scores`` {dimension: Score.to_json()}; a dimension
    that raised on the video has ``{"value": None, "error": "Type: message"}`` there instead."""
    scorer = _Scorer(dimensions)
    rows = []
    for video in videos:
        scores, _ = scorer.score(video, scorer.dimensions)
        rows.append({"id": video.id, "path": video.path, "prompt": video.prompt, "scores": scores})
    return rows


# ------------------------------------------------------------------------------------------------ summary


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict], names: list[str], dimensions: list[Dimension] | None = None,
              weights: dict[str, tuple[str, float]] | None = None) -> dict:
    """Per dimension: ``mean`` of the measured values, ``count`` measured, ``not_applicable``, ``not_measured``
    (count and its sentence), ``errors``; and ``aggregate`` (see :data:`AGGREGATE_WEIGHTS`)."""
    weights = AGGREGATE_WEIGHTS if weights is None else weights
    by_name = {d.name: d for d in dimensions or []}
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        entries = [row["scores"][name] for row in rows if name in row["scores"]]
        values = [e["value"] for e in entries if e.get("value") is not None]
        reasons = [e["not_measured"] for e in entries if e.get("not_measured")]
        part = {"mean": _mean(values), "count": len(values),
                "not_applicable": sum(1 for e in entries if e.get("not_applicable")),
                "not_measured": len(reasons), "not_measured_reason": reasons[0] if reasons else None,
                "errors": sum(1 for e in entries if e.get("error"))}
        if name in by_name:
            part["stands_for"] = by_name[name].stands_for
        per[name] = part
    return {"dimensions": per, "aggregate": aggregate({n: p["mean"] for n, p in per.items()}, weights)}


def aggregate(means: dict[str, float | None], weights: dict[str, tuple[str, float]] | None = None) -> dict:
    """The weighted aggregate of the measured ``means``: ``value`` (None when nothing entered), each group's score,
    the effective ``weights`` of the dimensions that entered (summing to 1) and why the others did not."""
    weights = AGGREGATE_WEIGHTS if weights is None else weights
    left_out = {n: "not measured on any video" for n, m in means.items() if m is None}
    left_out |= {n: "has no aggregate weight" for n, m in means.items() if m is not None and n not in weights}
    groups: dict[str, dict[str, float]] = {}
    for name, mean in means.items():
        if mean is not None and name in weights and weights[name][1] > 0:
            groups.setdefault(weights[name][0], {})[name] = weights[name][1]
    scores = {g: sum(w * means[n] for n, w in members.items()) / sum(members.values())
              for g, members in groups.items()}
    total = sum(GROUP_WEIGHTS.get(g, 1.0) for g in groups)
    effective = {n: GROUP_WEIGHTS.get(g, 1.0) / total * w / sum(members.values())
                 for g, members in groups.items() for n, w in members.items()}
    value = sum(effective[n] * means[n] for n in effective) if effective else None
    return {"value": value, "groups": scores, "weights": effective, "entered": sorted(effective),
            "left_out": left_out,
            "rule": "VBench's total: (4 x quality + 1 x semantic) / 5 over measured dimensions, renormalised"}


# ------------------------------------------------------------------------------------------------ the run


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _stamp(path: str) -> dict:
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _stored(out_dir: Path) -> dict[str, dict]:
    """The rows of an earlier run's scores.jsonl by id (an unreadable file or line is ignored: it is re-scored)."""
    path = out_dir / SCORES_FILE
    rows = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def _to_do(row: dict | None, source: VideoSource, stamp: dict, options: dict, scorer: _Scorer,
           names: list[str]) -> tuple[dict, list[str]]:
    """What an earlier row still gives (its scores of unchanged inputs) and the dimensions left to score."""
    same = (row is not None and row.get("path") == source.path and row.get("prompt") == source.prompt
            and row.get("file") == stamp and row.get("decode") == options)
    kept = {n: e for n, e in (row["scores"].items() if same else ()) if n in names}
    redo = [n for n in names if n not in kept or kept[n].get("error")
            or (kept[n].get("not_measured") and scorer.runnable(n))]
    return {n: e for n, e in kept.items() if n not in redo}, redo


def _describe(inputs) -> str | list[str]:
    """The inputs as summary.json records them: the path or glob, the files, or past a few files their folder."""
    if isinstance(inputs, (str, Path)):
        return str(inputs)
    files = [str(i) for i in inputs]
    if len(files) <= 8:
        return files
    return f"{len(files)} files in {os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])}"


def run_bench(inputs, out_dir: str | Path, *, prompts=None, dimensions: list[str] | list[Dimension] | None = None,
              weights: BenchWeights | None = None, resume: bool = True, decode_options: DecodeOptions | None = None,
              aggregate_weights: dict[str, tuple[str, float]] | None = None, progress: bool = False) -> dict:
    """Score the videos ``inputs`` names (see :func:`find_videos`) on ``dimensions`` (names or built
    :class:`Dimension` objects; None: every registered one) and write scores.jsonl, summary.json and errors.jsonl
    under ``out_dir``. Returns the summary."""
    options = decode_options or DecodeOptions()
    if dimensions is None or all(isinstance(d, str) for d in dimensions):
        dims = build_dimensions(None if dimensions is None else list(dimensions), weights)
    else:
        dims = list(dimensions)
    names = [d.name for d in dims]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"give at least one dimension, each once; got {names}.")
    sources = find_videos(inputs, prompts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = _stored(out_dir) if resume else {}
    scorer, decode_json = _Scorer(dims), asdict(options)
    rows, errors, reused = [], [], 0
    started = saved = time.perf_counter()
    for k, source in enumerate(tqdm(sources, desc="bench", unit="video", disable=not progress)):
        try:
            stamp = _stamp(source.path)
            kept, redo = _to_do(stored.get(source.id), source, stamp, decode_json, scorer, names)
            scores = kept
            if redo:
                video = decode(source, options)
                fresh, failed = scorer.score(video, redo)
                scores = {**kept, **fresh}
                errors += [{"id": source.id, "path": source.path, "dimension": n, "error": e}
                           for n, e in failed.items()]
            else:
                reused += 1
        except Exception as err:  # a corrupt or vanished video is recorded and skipped
            errors.append({"id": source.id, "path": source.path, "dimension": None, "error": _error_text(err)})
            continue
        errors += [{"id": source.id, "path": source.path, "dimension": n, "error": e["error"]}
                   for n, e in kept.items() if e.get("error")]
        rows.append({"id": source.id, "path": source.path, "prompt": source.prompt,
                     "scores": {n: scores[n] for n in names}, "file": stamp, "decode": decode_json})
        if time.perf_counter() - saved > CHECKPOINT_S:  # an interrupted run keeps what it scored
            later = [stored[s.id] for s in sources[k + 1:] if s.id in stored]  # and what earlier runs did
            _write_text(out_dir / SCORES_FILE, _jsonl(rows + later))
            saved = time.perf_counter()
    errors += [{"id": None, "path": None, "dimension": n, "error": e} for n, e in scorer.setup_errors.items()]
    summary = {"inputs": _describe(inputs),
               "videos": len(rows), "videos_failed": sum(1 for e in errors if e["dimension"] is None),
               "videos_reused": reused, "decode": decode_json, **summarize(rows, names, dims, aggregate_weights),
               "files": {"scores": SCORES_FILE, "summary": SUMMARY_FILE, "errors": ERRORS_FILE},
               "seconds": round(time.perf_counter() - started, 2)}
    _write_text(out_dir / SCORES_FILE, _jsonl(rows))
    _write_text(out_dir / ERRORS_FILE, _jsonl(errors))
    _write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def iter_rows(out_dir: str | Path) -> Iterator[dict]:
    """The rows of a run's scores.jsonl."""
    yield from _stored(Path(out_dir)).values()


__all__ = ["run_bench", "score_videos", "find_videos", "decode", "summarize", "aggregate", "read_prompts_file",
           "DecodeOptions", "VideoSource", "AGGREGATE_WEIGHTS", "GROUP_WEIGHTS", "VIDEO_SUFFIXES"]
