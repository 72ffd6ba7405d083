"""The tables a curation run writes: rows of plain values as Arrow tables with one deterministic type per column,
written as Parquet atomically (the same rows always give the same bytes), and the run's four output tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from openwan.curate.config import CurateConfig
from openwan.curate.select import clip_record
from openwan.data.manifest import write_manifest
from openwan.fileio import atomic_write

CORE_COLUMNS = ("clip_id", "source", "source_hash", "start", "end", "duration", "frames", "fps", "width", "height",
                "codec", "has_audio", "caption")


def _arrow_type(values: Iterable[Any]) -> pa.DataType:
    """One Arrow type for a column's values (nulls allowed): bool, int64, float64, string or a list of those;
    mixed kinds are written as JSON strings."""
    kinds = set()
    items: list[Any] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        elif isinstance(v, list):
            kinds.add("list")
            items += v
        else:
            kinds.add("other")
    if not kinds:
        return pa.null()
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"str"}:
        return pa.string()
    if kinds == {"list"}:
        inner = _arrow_type(items)
        if inner != pa.string() or all(isinstance(i, str) or i is None for i in items):
            return pa.list_(inner if inner != pa.null() else pa.float64())
    return pa.large_string()  # mixed: JSON text


def table_of(rows: Sequence[dict], columns: Sequence[str] | None = None) -> pa.Table:
    """An Arrow table of ``rows`` with one deterministic type per column (see :func:`_arrow_type`); ``columns``
    fixes the order (default: first seen)."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    arrays = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        tp = _arrow_type(values)
        if tp == pa.large_string() and any(not isinstance(v, str) and v is not None for v in values):
            values = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
        if tp == pa.float64() or (pa.types.is_list(tp) and tp.value_type == pa.float64()):
            values = [_floats(v) for v in values]
        arrays[name] = pa.array(values, type=tp)
    return pa.table(arrays) if arrays else pa.table({"empty": pa.array([], pa.null())})


def _floats(value: Any) -> Any:
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return None if value is None else float(value)


def write_table(table: pa.Table, path: Path) -> Path:
    """``table`` as Parquet at ``path``, atomically; the same table always gives the same bytes."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_statistics=False),
                 suffix=".parquet")
    return path


def _manifest_extra(row: dict) -> dict:
    skip = {*CORE_COLUMNS, "crop", "reasons", "kept"}
    return {k: v for k, v in row.items() if k not in skip and not _is_long_vector(v)}


def _is_long_vector(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 16 and all(isinstance(v, (int, float)) for v in value)


def write_outputs(cfg: CurateConfig, out: Path, rows: list[dict], errors: list[dict],
                  source_rows: list[dict]) -> tuple[Path, Path, Path, Path]:
    """manifest.parquet, clips.parquet, errors.parquet and sources.parquet in ``out``."""
    kept = [r for r in rows if r["kept"]]
    records = [clip_record(r, out) for r in kept]
    manifest = write_manifest(records, out / "manifest.parquet", extra=[_manifest_extra(r) for r in kept])
    clip_rows = [{**r, "decision": "kept" if r["kept"] else "rejected"} for r in rows]
    for r in clip_rows:
        r.pop("kept")
    first = [*CORE_COLUMNS, "crop", "decision", "reasons"]
    rest = list(dict.fromkeys(k for r in clip_rows for k in r if k not in first))
    clips = write_table(table_of(clip_rows, first + rest) if clip_rows else _empty(first, {"reasons": pa.list_(
        pa.string()), "crop": pa.list_(pa.int64())}), out / "clips.parquet")
    err_cols = ["source", "clip_id", "stage", "error"]
    errs = write_table(table_of(errors, err_cols) if errors else _empty(err_cols), out / "errors.parquet")
    src_cols = ["source", "source_hash", "status", "clips", "kept", "duration", "dropped_seconds", "codec",
                "width", "height", "fps", "error"]
    srcs = write_table(table_of(source_rows, src_cols), out / "sources.parquet")
    return manifest, clips, errs, srcs


def _empty(columns: Sequence[str], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    types = types or {}
    return pa.table({c: pa.array([], types.get(c, pa.string())) for c in columns})
