"""Clip manifests: one row per training clip, in Parquet (pyarrow) or JSON Lines, chosen by the file suffix.

A row holds ``path`` (relative paths resolve against the manifest's folder), ``caption``, ``frames``, ``fps``,
``width`` and ``height`` of the source, and optionally ``start``/``end`` (seconds, the clip's bounds in the
file), ``id`` (default: the path as written in the manifest, plus ``@start`` when the clip has a start),
``crop`` ([left, top, right, bottom] in source pixels: the region training sees, e.g. inside a letterbox) and
``weight`` (the clip's sampling weight, >= 0; none = 1, 0 = never drawn). Unknown columns are ignored, so
curation may write its scores beside them (``write_manifest(..., extra=...)``). The id is what caches key their
tensors by, so it does not change when the dataset folder moves.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
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
    crop: tuple[int, int, int, int] | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", default_clip_id(self.path, self.start))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(self.crop))
            _check_crop(self.crop, self.width, self.height, f"clip {self.id!r}")
        if self.weight is not None:
            _check_weight(self.weight, f"clip {self.id!r}")

    @property
    def is_image(self) -> bool:
        """True for still-image files (a 1-frame clip)."""
        return Path(self.path).suffix.lower() in IMAGE_SUFFIXES

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) in pixels of what training sees: the crop box when there is one, else the source."""
        if self.crop is None:
            return self.width, self.height
        left, top, right, bottom = self.crop
        return right - left, bottom - top


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
    if row.get("crop") is not None:
        out["crop"] = _check_crop(row["crop"], out["width"], out["height"], where)
    if row.get("weight") is not None:
        out["weight"] = _check_weight(row["weight"], where)
    return out


def _check_crop(crop, width: int, height: int, where: str) -> tuple[int, int, int, int]:
    """``crop`` as a (left, top, right, bottom) tuple of ints inside a ``width`` x ``height`` frame."""
    if (not isinstance(crop, (list, tuple)) or len(crop) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in crop)):
        raise ValueError(f"{where}: field 'crop' must be a list of 4 integers [left, top, right, bottom] in source "
                         f"pixels, got {crop!r}; fix that row.")
    left, top, right, bottom = (int(v) for v in crop)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"{where}: field 'crop' {[left, top, right, bottom]} must lie inside the {width}x{height} "
                         "source with left < right and top < bottom; fix that row.")
    return left, top, right, bottom


def _check_weight(weight, where: str) -> float:
    """``weight`` as a float, finite and >= 0."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: field 'weight' must be a number, got {weight!r}; fix that row.")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{where}: field 'weight' must be a finite number >= 0 (0: never drawn), got {weight!r}; "
                         "fix that row.")
    return float(weight)


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


def write_manifest(records: Iterable[ClipRecord], path: str | Path, extra: Sequence[dict] | None = None) -> Path:
    """Write ``records`` to ``path`` (``.parquet`` or ``.jsonl``) atomically; returns the path.

    Absolute paths inside the manifest's folder are stored relative to it; every row gets its id written
    out, so ids survive the rewrite. ``extra``: one dict per record of further columns (scores, tiers, cluster
    ids, flags) written beside the record's; values are JSON-able scalars, strings or lists (a missing key is
    null). ``read_manifest`` ignores them; ``pyarrow.parquet.read_table`` or ``json.loads`` read them back.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    folder = path.absolute().parent
    records = list(records)
    extra_names = _extra_names(records, extra)
    rows = []
    for i, record in enumerate(records):
        row = asdict(record)
        row["path"] = _portable_path(row["path"], folder)
        row["crop"] = None if record.crop is None else list(record.crop)
        if extra is not None:
            row.update({name: _plain(extra[i].get(name), name, i + 1) for name in extra_names})
        rows.append(row)
    names = [f.name for f in fields(ClipRecord)] + extra_names
    if suffix == ".parquet":
        atomic_write(path, lambda tmp: pq.write_table(_table(rows, names), tmp))
    else:
        text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def _extra_names(records: list[ClipRecord], extra: Sequence[dict] | None) -> list[str]:
    """The extra columns' names in first-seen order; refuses a wrong count or a name a record field has."""
    if extra is None:
        return []
    if len(extra) != len(records):
        raise ValueError(f"extra has {len(extra)} rows for {len(records)} records; give one dict per record.")
    own = {f.name for f in fields(ClipRecord)}
    names: dict[str, None] = {}
    for i, row in enumerate(extra, 1):
        if not isinstance(row, dict):
            raise ValueError(f"extra row {i} is a {type(row).__name__}, not a dict of column values.")
        for name in row:
            if not isinstance(name, str) or name in own:
                raise ValueError(f"extra row {i} has a column {name!r} that is a manifest field or not a string; "
                                 "set record fields on the ClipRecord and name extra columns otherwise.")
            names[name] = None
    return list(names)


def _plain(value, name: str, row: int):
    """``value`` as plain Python (numpy scalars and arrays, tuples made JSON-able); refuses other objects."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, name, row) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf: not measured
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"extra row {row}: column {name!r} holds a {type(value).__name__} ({value!r}); give numbers, "
                     "strings, booleans or lists of them.")


def _table(rows: list[dict], names: list[str]) -> pa.Table:
    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    types = {**_REQUIRED, **_OPTIONAL}
    known = {name: kinds[types[name][-1]] for name in types}
    known |= {"crop": pa.list_(pa.int64()), "weight": pa.float64()}
    columns = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns.append(pa.array(values, type=known.get(name)))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"column {name!r} mixes kinds of values that Parquet cannot hold in one column ({err});"
                             " give it one kind per column.") from None
    return pa.table(columns, names=names)


__all__ = ["ClipRecord", "read_manifest", "write_manifest", "default_clip_id"]
