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
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openwan.curate.config import SECTIONS, CurateConfig, config_hash
from openwan.curate.executors import LocalExecutor, make_executor
from openwan.curate.probe import content_hash
from openwan.curate.report import reason_kind, write_report
from openwan.curate.sources import Source, check_out_dir, list_sources
from openwan.curate.steps import (
    CAPTION_STAGE,
    CLIP_STAGES,
    GLOBAL_STAGES,
    CaptionStep,
    ClipStep,
    ReencodeStep,
    SplitStep,
    build_stage,
    clip_stages,
    clip_steps,
    decode_clip,
    error_text,
    global_stages,
    plain,
    stage_enabled,
)
from openwan.curate.tables import write_outputs
from openwan.fileio import atomic_write

SPLIT_VERSION = 2  # bump when the split cache's content changes meaning
CLIP_VERSION = 1


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
        return _Run(cfg, out, sources, executor, bar)()
    finally:
        if own:
            executor.close()


def _progress(cfg: CurateConfig) -> Callable[..., Any]:
    from tqdm.auto import tqdm

    def bar(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="item", disable=not cfg.run.progress, dynamic_ncols=True)

    return bar


class _Run:
    """One run's phases over its sources, in order; each phase adds to ``rows`` (one per clip), ``errors``, and
    the ``computed`` counts and ``seconds`` of :class:`CurateResult`."""

    def __init__(self, cfg: CurateConfig, out: Path, sources: list[Source], executor: Any, bar) -> None:
        self.cfg, self.out, self.sources, self.executor, self.bar = cfg, out, sources, executor, bar
        self.cache = out / "cache"
        self.seconds: dict[str, float] = {}
        self.computed: dict[str, int] = {}
        self.errors: list[dict] = []
        self.rows: list[dict] = []
        self.source_rows: list[dict] = []

    def __call__(self) -> CurateResult:
        t0 = time.perf_counter()
        keys, split_results = self.split()
        self.seconds["split"] = time.perf_counter() - t0
        self.clip_rows(keys, split_results)
        for name, phase in (("clips", self.analyse), ("global", self.global_stages), ("captions", self.captions)):
            t0 = time.perf_counter()
            phase()
            self.seconds[name] = time.perf_counter() - t0
        if self.cfg.split.reencode:
            t0 = time.perf_counter()
            self.reencode()
            self.seconds["reencode"] = time.perf_counter() - t0
        else:
            self.computed["reencode"] = 0
        return self.finish()

    # 1. sources: hash, probe, split
    def split(self) -> tuple[dict[str, str], dict[str, dict]]:
        """Each source's cache key and its split: ``{"probe", "clips", "dropped_seconds"}`` or ``{"error"}``."""
        split_hash = _analysis_hash(self.cfg, ["split"], SPLIT_VERSION)
        results: dict[str, dict] = {}
        keys: dict[str, str] = {}
        with self.bar(len(self.sources), "hash") as pbar:
            for source in self.sources:
                if source.error is None:
                    try:
                        keys[source.path] = source_key(source.path, self.cfg)
                    except ValueError as err:
                        results[source.path] = {"error": {"stage": "hash", "error": str(err)}}
                else:
                    results[source.path] = {"error": {"stage": "input", "error": source.error}}
                pbar.update(1)
        todo: list[dict] = []
        for source in self.sources:
            if source.path not in keys:
                continue
            cached = _read_json(self.cache / "split" / f"{keys[source.path]}-{split_hash}.json")
            if cached is not None:
                results[source.path] = cached
            else:
                todo.append({"path": source.path, "hash": keys[source.path]})
        with self.bar(len(todo), "probe+split") as pbar:
            for task in self.executor.map([SplitStep(self.cfg)], todo):
                result = plain({k: v for k, v in task.items() if k not in ("path", "hash")})
                # a probe error follows from the file's bytes (cached with them); a failed split may not (a GPU out
                # of memory): that source is tried again by the next run
                if result.get("error", {}).get("stage") != "split":
                    _write_json(self.cache / "split" / f"{task['hash']}-{split_hash}.json", result)
                results[task["path"]] = result
                pbar.update(1)
        self.computed["split"] = len(todo)
        return keys, results

    def clip_rows(self, keys: dict[str, str], split_results: dict[str, dict]) -> None:
        """The source table's rows and a row per clip of every source that split."""
        for source in self.sources:
            result = split_results[source.path]
            info = result.get("probe") or {}
            entry = {"source": source.path, "source_hash": keys.get(source.path), "status": "processed",
                     "clips": 0, "kept": 0, "duration": info.get("duration"),
                     "dropped_seconds": result.get("dropped_seconds"), "codec": info.get("codec"),
                     "width": info.get("width"), "height": info.get("height"), "fps": info.get("fps"), "error": None}
            if "error" in result:
                entry.update(status="error", error=f"{result['error']['stage']}: {result['error']['error']}")
                self.errors.append({"source": source.path, "clip_id": None, **result["error"]})
            else:
                for start, end in result["clips"]:
                    self.rows.append(_clip_row(source, keys[source.path], info, start, end))
            self.source_rows.append(entry)

    # 2. clips
    def analyse(self) -> None:
        """The per-clip stages on every clip (cached results reused)."""
        specs = clip_stages(self.cfg)
        clip_hash = _analysis_hash(self.cfg, sorted({s[0] for s in CLIP_STAGES} & set(SECTIONS)), CLIP_VERSION)
        results: dict[str, dict] = {}
        todo = []
        for row in self.rows:
            key = _clip_key(row, clip_hash)
            cached = _read_json(self.cache / "clips" / f"{key}.json")
            if cached is not None:
                results[row["clip_id"]] = cached
            else:
                todo.append({"row": row, "key": key, "values": {}, "reasons": [], "errors": [], "crop": None})
        with self.bar(len(todo), "clips: " + (", ".join(s[0] for s in specs) or "decode")) as pbar:
            for task in self.executor.map(clip_steps(self.cfg, specs), todo):
                result = plain({k: task[k] for k in ("values", "reasons", "errors", "crop")})
                if not result["errors"]:  # a failed clip is tried again by the next run
                    _write_json(self.cache / "clips" / f"{task['key']}.json", result)
                results[task["row"]["clip_id"]] = result
                pbar.update(1)
        self.computed["clips"] = len(todo)
        for row in self.rows:
            result = results[row["clip_id"]]
            row.update(result["values"])
            row["crop"] = result["crop"]
            row["reasons"] = list(result["reasons"])
            self.errors += [{"source": row["source"], "clip_id": row["clip_id"], **e} for e in result["errors"]]

    # 3. global stages, then 4. decisions
    def global_stages(self) -> None:
        """Deduplication and clustering over all rows; then each clip is kept iff it has no reason."""
        for spec in global_stages(self.cfg):
            stage, name = build_stage(self.cfg, spec), spec[0]
            with self.bar(1, name) as pbar:
                try:
                    outputs = stage(self.rows) if self.rows else []
                except Exception as err:  # noqa: BLE001 - recorded; the clips keep what they have
                    self.errors.append({"source": None, "clip_id": None, "stage": name, "error": error_text(err)})
                    outputs = []
                pbar.update(1)
            for row, o in zip(self.rows, outputs):
                row.update(plain(o.values))
                row["reasons"] += [str(r) for r in o.reasons]
        for row in self.rows:
            row["kept"] = not row["reasons"]

    # 5. captions
    def captions(self) -> None:
        """Caption every kept clip; a caption that fails, or is required and missing, rejects the clip."""
        self.computed["captions"] = 0
        if not stage_enabled(self.cfg, "captions"):
            return
        caption_hash = _analysis_hash(self.cfg, ["captions"], CLIP_VERSION)
        results = {}
        todo = []
        for row in self.rows:
            if not row["kept"]:
                continue
            key = _clip_key(row, caption_hash)
            cached = _read_json(self.cache / "captions" / f"{key}.json")
            if cached is not None:
                results[row["clip_id"]] = cached
            else:
                todo.append({"row": dict(row), "key": key})
        # keep mode reads no frame and loads no model: it runs here rather than on the workers
        runner = LocalExecutor() if self.cfg.captions.mode == "keep" else self.executor
        with self.bar(len(todo), "captions") as pbar:
            for task in runner.map([CaptionStep(self.cfg)], todo):
                result = plain({k: task[k] for k in ("values", "reasons", "errors")})
                if not result["errors"] and not result["reasons"]:  # a failed request is tried again next run
                    _write_json(self.cache / "captions" / f"{task['key']}.json", result)
                results[task["row"]["clip_id"]] = result
                pbar.update(1)
        self.computed["captions"] = len(todo)
        for row in self.rows:
            result = results.get(row["clip_id"])
            if result is not None:
                row.update(result["values"])
                row["reasons"] += result["reasons"]
                row["kept"] = not row["reasons"]
                self.errors += [{"source": row["source"], "clip_id": row["clip_id"], **e} for e in result["errors"]]

    def reencode(self) -> None:
        """``split.reencode``: each kept clip as its own file, out/clips/<clip>.mp4, made once."""
        todo = []
        for row in self.rows:
            if row["kept"]:
                row["clip_path"] = f"clips/{clip_file_name(row)}"
                if not (self.out / row["clip_path"]).is_file():
                    todo.append({"clip_id": row["clip_id"], "source": row["source"], "start": row["start"],
                                 "end": row["end"], "file": row["clip_path"]})
        by_id = {row["clip_id"]: row for row in self.rows}
        with self.bar(len(todo), "reencode") as pbar:
            for task in self.executor.map([ReencodeStep(self.out)], todo):
                row = by_id[task["clip_id"]]
                for e in task["errors"]:
                    self.errors.append({"source": row["source"], "clip_id": row["clip_id"], **e})
                    row["reasons"].append(f"the clip could not be re-encoded ({e['error']})")
                    row["kept"] = False
                    row["clip_path"] = None
                pbar.update(1)
        self.computed["reencode"] = len(todo)

    # 6. outputs
    def finish(self) -> CurateResult:
        """The tables and the report, written; the counts."""
        cfg, rows, errors, source_rows = self.cfg, self.rows, self.errors, self.source_rows
        t0 = time.perf_counter()
        rows.sort(key=lambda r: (r["source"], r["start"], r["end"]))
        errors.sort(key=lambda e: (e["source"] or "", e["clip_id"] or "", e["stage"], e["error"]))
        by_source = Counter(r["source"] for r in rows)
        kept_by_source = Counter(r["source"] for r in rows if r["kept"])
        for entry in source_rows:
            entry["clips"], entry["kept"] = by_source[entry["source"]], kept_by_source[entry["source"]]
        paths = write_outputs(cfg, self.out, rows, errors, source_rows)
        check_accounting(self.sources, source_rows, rows)
        self.seconds["outputs"] = time.perf_counter() - t0
        report = None
        if cfg.report.enabled:
            t0 = time.perf_counter()
            report = write_report(self.out, cfg.report, rows, source_rows, errors, not_measured(cfg))
            self.seconds["report"] = time.perf_counter() - t0
        rejections = Counter(reason_kind(r) for row in rows for r in row["reasons"])
        kept = sum(r["kept"] for r in rows)
        counts = {"sources": len(self.sources), "processed": sum(e["status"] == "processed" for e in source_rows),
                  "failed": sum(e["status"] == "error" for e in source_rows), "clips": len(rows), "kept": kept,
                  "rejected": len(rows) - kept, "errors": len(errors)}
        return CurateResult(self.out, *paths, report, counts, self.computed, self.seconds,
                            dict(sorted(rejections.items())), not_measured(cfg))


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
           "check_accounting", "not_measured", "CLIP_STAGES", "GLOBAL_STAGES", "CAPTION_STAGE"]
