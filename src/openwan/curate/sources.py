"""The inputs of a curation run: folders, globs, files and manifests listed as :class:`Source` rows, sorted and
each once, with the captions their manifest rows or sidecar files give; and the output folder's check."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from openwan.curate.config import CurateConfig

MANIFEST_SUFFIXES = (".parquet", ".jsonl")


@dataclass(frozen=True)
class Source:
    """One input: ``path`` (absolute), the ``caption`` its manifest row or sidecar file gives ("" when none), and
    ``error`` when it is known unusable before any work (a folder named like a video)."""

    path: str
    caption: str = ""
    error: str | None = None


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_video_name(path: Path, extensions: Sequence[str]) -> bool:
    return path.suffix.lower() in {e.lower() for e in extensions}


def _walk(folder: Path, extensions: Sequence[str]) -> list[Source]:
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        for name in sorted(dirs):
            if _is_video_name(Path(name), extensions):  # a folder named like a video: recorded, not searched
                found.append(Source(str(root_path / name), error=f"{root_path / name} is a folder named like a "
                                    "video; rename it or move the videos out of it."))
        dirs[:] = sorted(d for d in dirs if not _is_video_name(Path(d), extensions) and not d.startswith("."))
        found += [Source(str(root_path / f)) for f in sorted(files) if _is_video_name(Path(f), extensions)]
    return found


def _manifest_sources(path: Path) -> list[Source]:
    """The videos a manifest names, with their captions (the first caption given for a path is kept)."""
    folder = path.absolute().parent
    if path.suffix.lower() == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a bad file
            raise ValueError(f"{path} is not a readable Parquet manifest ({err}); rewrite it.") from None
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"line {number} of {path} is not valid JSON ({err.msg}); fix that line.") from None
    out: dict[str, Source] = {}
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise ValueError(f"row {number} of {path} has no 'path' string; every row must name a video.")
        video = os.path.normpath(folder / row["path"])
        caption = row.get("caption") if isinstance(row.get("caption"), str) else ""
        if video not in out or (caption and not out[video].caption):
            out[video] = Source(video, caption)
    return list(out.values())


def list_sources(cfg: CurateConfig, paths: Sequence[str | Path] = ()) -> list[Source]:
    """Every source video the inputs name (``cfg.input.paths`` and ``paths``), sorted by absolute path, each once.

    A folder is searched recursively for ``input.extensions``; a glob is expanded (``**`` recursive); a manifest
    (``.parquet``/``.jsonl``) gives its rows' videos and captions; any other file is a source as given.
    ValueError for an input that does not exist, a glob that matches nothing, or no video at all.
    """
    exts = cfg.input.extensions
    found: list[Source] = []
    inputs = [str(p) for p in (*cfg.input.paths, *paths)]
    if not inputs:
        raise ValueError("no inputs given; name video folders, globs, files or a manifest (e.g. openwan curate "
                         "run raw/ --out curated/), or set input.paths in the config.")
    for text in inputs:
        path = Path(text).expanduser()
        if _has_glob(text) and not path.exists():
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise ValueError(f"input {text!r} matches no file; check the pattern (quote it so the shell does "
                                 "not expand it).")
            for match in map(Path, matches):
                if match.is_dir() and not _is_video_name(match, exts):
                    found += _walk(match, exts)
                else:
                    found.append(Source(str(match)))
        elif path.is_dir():
            if _is_video_name(path, exts):
                found.append(Source(str(path)))
            else:
                found += _walk(path, exts)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            found += _manifest_sources(path)
        elif path.exists():
            found.append(Source(str(path)))
        else:
            raise ValueError(f"input {text} does not exist; give a video folder, glob, file or manifest.")
    unique: dict[str, Source] = {}
    for source in found:
        key = os.path.abspath(source.path)
        source = Source(key, source.caption, source.error)
        if key not in unique or (source.caption and not unique[key].caption):
            unique[key] = source
    if not unique:
        raise ValueError(f"no videos found in {', '.join(inputs)} (looked for {', '.join(exts)}); give folders, "
                         "globs or files of videos, or set input.extensions.")
    sources = [unique[k] for k in sorted(unique)]
    if cfg.input.sidecar_captions:
        sources = [_with_sidecar(s) for s in sources]
    return sources


def _with_sidecar(source: Source) -> Source:
    """``source`` with the caption of its sidecar file (``NAME.mp4.txt`` or ``NAME.txt``) when it has none; a
    sidecar that cannot be read makes the source an error."""
    from openwan.curate.captions import sidecar_caption

    if source.caption or source.error:
        return source
    try:
        return Source(source.path, sidecar_caption(source.path) or "")
    except (ValueError, OSError) as err:
        return Source(source.path, "", str(err))


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` created and writable, or ValueError naming it."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the curated outputs.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror}); choose another folder.") from None
    return out.absolute()
