"""Clip manifests: one row per training clip, in Parquet (pyarrow) or JSON Lines, chosen by the file suffix.

A row holds ``path`` (relative paths resolve against the manifest's folder), ``caption``, ``frames``, ``fps``,
``width`` and ``height`` of the source, and optionally ``start``/``end`` (seconds, the clip's bounds in the
file) and ``id`` (default: the path as written in the manifest, plus ``@start`` when the clip has a start).
Unknown columns are ignored, so a curation stage may add its own. The id is what caches key their tensors by,
so it does not change when the dataset folder moves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from openwan.data.video import IMAGE_SUFFIXES
from openwan.fileio import atomic_write

MANIFEST_SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a manifest. ``path`` is as given (``read_manifest`` makes it absolute).

    Without an ``id``, one is derived from ``path`` and ``start`` as given here (``read_manifest`` derives it from
    the path as written in the file); build records with folder-relative paths, or give ids, to keep them
    portable. ``write_manifest`` writes every id out, so it never changes afterwards.
    """

    path: str
    caption: str
    frames: int
    fps: float
    width: int
    height: int
    start: float | None = None
    end: float | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", default_clip_id(self.path, self.start))

    @property
    def is_image(self) -> bool:
        """True for still-image files (a 1-frame clip)."""
        return Path(self.path).suffix.lower() in IMAGE_SUFFIXES


def default_clip_id(path: str, start: float | None) -> str:
    """The id of a clip without one: its path as written in the manifest, plus ``@start`` (ms) when set."""
    return path if not start else f"{path}@{start:.3f}"


# --------------------------------------------------------------------------------------------- checks

_REQUIRED = {"path": (str,), "caption": (str,), "frames": (int,), "fps": (int, float), "width": (int,),
             "height": (int,)}
_OPTIONAL = {"start": (int, float), "end": (int, float), "id": (str,)}


def _type_name(types: tuple[type, ...]) -> str:
    return {(str,): "a string", (int,): "an integer", (int, float): "a number"}[types]


def _checked_row(row: dict, where: str) -> dict:
    """The row's known fields, type-checked; ``where`` (e.g. "row 3 of x.jsonl") names it in errors."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not an object with named fields; write one JSON object per line.")
    out = {}
    for name, types in (*_REQUIRED.items(), *_OPTIONAL.items()):
        value = row.get(name)
        if value is None:
            if name in _REQUIRED:
                raise ValueError(f"{where} has no '{name}' field; add it (every row needs {', '.join(_REQUIRED)}).")
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{where}: field '{name}' must be {_type_name(types)}, got {value!r}; fix that row.")
        out[name] = float(value) if float in types else value
    _check_values(out, where)
    return out


def _check_values(row: dict, where: str) -> None:
    if row["frames"] < 1 or row["width"] < 1 or row["height"] < 1:
        raise ValueError(f"{where}: frames, width and height must be positive; fix that row.")
    if row["fps"] < 0 or (row["frames"] > 1 and row["fps"] <= 0):
        raise ValueError(f"{where}: field 'fps' must be positive for a video (frames > 1); fix that row.")
    start, end = row.get("start"), row.get("end")
    if start is not None and start < 0:
        raise ValueError(f"{where}: field 'start' must be >= 0 seconds; fix that row.")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"{where}: field 'end' must be after 'start'; fix that row.")


def _record(row: dict, folder: Path) -> ClipRecord:
    """A record with its id taken from the path as written, and the path resolved against ``folder``."""
    row = dict(row)
    row.setdefault("id", default_clip_id(row["path"], row.get("start")))
    row["path"] = os.path.normpath(folder / row["path"])  # an absolute row path stays as it is
    return ClipRecord(**row)


# ---------------------------------------------------------------------------------------- read, write


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ValueError(f"{path} is not a manifest; name it *.parquet or *.jsonl.")
    return suffix


def _read_rows(path: Path, suffix: str) -> list[dict]:
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a bad file
            raise ValueError(f"{path} is not a readable Parquet file ({err}); rewrite the manifest.") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); save the manifest as "
                         "UTF-8 JSON lines.") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"line {number} of {path} is not valid JSON ({err.msg}); fix that line.") from None
    return rows


def read_manifest(path: str | Path) -> list[ClipRecord]:
    """The clips of a ``.parquet`` or ``.jsonl`` manifest, paths made absolute against its folder.

    Raises ValueError naming the row (1-based) and the field for a missing or wrongly typed field.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; check the manifest path.")
    folder = path.absolute().parent
    rows = _read_rows(path, suffix)
    return [_record(_checked_row(row, f"row {i} of {path}"), folder) for i, row in enumerate(rows, 1)]


def _portable_path(path: str, folder: Path) -> str:
    """Paths inside the manifest's folder are written relative to it, so the folder can move."""
    if not os.path.isabs(path):
        return path
    rel = os.path.relpath(path, folder)
    return path if rel.startswith("..") else rel


def write_manifest(records: Iterable[ClipRecord], path: str | Path) -> Path:
    """Write ``records`` to ``path`` (``.parquet`` or ``.jsonl``) atomically; returns the path.

    Absolute paths inside the manifest's folder are stored relative to it; every row gets its id written
    out, so ids survive the rewrite.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    folder = path.absolute().parent
    rows = []
    for record in records:
        row = asdict(record)
        row["path"] = _portable_path(row["path"], folder)
        rows.append(row)
    if suffix == ".parquet":
        atomic_write(path, lambda tmp: _write_parquet(rows, tmp))
    else:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def _write_parquet(rows: list[dict], tmp: str) -> None:
    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    types = {**_REQUIRED, **_OPTIONAL}
    schema = pa.schema([(f.name, kinds[types[f.name][-1]]) for f in fields(ClipRecord)])
    columns = {name: [row[name] for row in rows] for name in schema.names}
    pq.write_table(pa.table(columns, schema=schema), tmp)


__all__ = ["ClipRecord", "read_manifest", "write_manifest", "default_clip_id"]
