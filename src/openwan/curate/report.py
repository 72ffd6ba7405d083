"""The run's report: what was kept and rejected and why, every score's histogram, the tier and cluster counts, and
thumbnails per tier, as one self-contained HTML page (images embedded as PNG) or one PNG of the histograms.

Built from the tables a run writes (``clips.parquet``, ``sources.parquet``, ``errors.parquet``), so
``openwan curate report DIR`` can rebuild it for any finished run.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from openwan.curate.config import ReportConfig
from openwan.curate.frames import read_clip_frames
from openwan.fileio import atomic_write

NOT_SCORES = {"start", "end", "duration", "frames", "fps", "width", "height", "has_audio", "kept"}
HIST_BINS = 30
THUMB_SHORT_SIDE = 96  # px


def score_columns(rows: Sequence[dict]) -> list[str]:
    """The numeric value columns of the clip rows (stage scores), in first-seen order; booleans, ids and the
    clip's own facts (start, fps, size, ...) are not scores."""
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key in NOT_SCORES or key.endswith("_id") or key.startswith("cluster"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names[key] = None
    return list(names)


def tier_columns(rows: Sequence[dict]) -> list[str]:
    """Columns holding a category (string) a clip is sorted into, e.g. ``motion_tier``."""
    return list(dict.fromkeys(k for row in rows for k, v in row.items() if k.endswith("_tier") and isinstance(v, str)))


def cluster_columns(rows: Sequence[dict]) -> list[str]:
    """Integer columns naming a cluster (``cluster_id``)."""
    return list(dict.fromkeys(k for row in rows for k, v in row.items()
                              if k.endswith("cluster_id") and isinstance(v, int) and not isinstance(v, bool)))


def reason_kind(reason: str) -> str:
    """A rejection reason without its particulars, for counting reasons by kind: the text before its first
    parenthesis, each word holding a digit (a measured value, a limit, a clip id) written ``N``. So "the camera
    shakes: jitter 0.0027 ... (limit 0.002)" and "... jitter 0.0031 ..." count as one kind."""
    head = reason.split("(")[0]
    words = ["N" if any(c.isdigit() for c in w) else w for w in head.split()]
    return " ".join(words).rstrip(" :;,.-") or reason


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=64, metadata={"Software": None})
    return buffer.getvalue()


def histograms(rows: Sequence[dict], columns: Sequence[str]) -> bytes | None:
    """One PNG with a histogram per score column (kept clips and rejected clips stacked), or None without scores."""
    if not columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    lines = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4 * cols, 2.6 * lines), squeeze=False)
    for ax, name in zip(axes.flat, columns):
        kept = np.array([float(r[name]) for r in rows if r.get("kept") and _finite(r.get(name))])
        rejected = np.array([float(r[name]) for r in rows if not r.get("kept") and _finite(r.get(name))])
        both = np.concatenate([kept, rejected])
        low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
        edges = np.linspace(low, high if high > low else low + 1.0, HIST_BINS + 1)
        kept_counts, _ = np.histogram(kept, edges)
        all_counts, _ = np.histogram(both, edges)
        ax.stairs(all_counts, edges, fill=True, color="tab:red", label="rejected")  # kept stacked under rejected
        ax.stairs(kept_counts, edges, fill=True, color="tab:green", label="kept")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(nbins=4)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.04, top=0.96, wspace=0.25, hspace=0.6)
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def thumbnail(row: dict) -> bytes | None:
    """A PNG of the clip's middle frame (inside its crop), short side :data:`THUMB_SHORT_SIDE`; None when it
    cannot be read."""
    from PIL import Image


    middle = (row["start"] + row["end"]) / 2
    try:
        frames = read_clip_frames(row["source"], middle, row["end"], fps=1.0, short_side=THUMB_SHORT_SIDE * 4,
                                  max_frames=1)
        if row.get("crop"):
            frames = frames.cropped(tuple(row["crop"]))
    except (ValueError, OSError):
        return None
    image = Image.fromarray(frames.frames[0])
    scale = THUMB_SHORT_SIDE / min(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _img(png: bytes, title: str = "") -> str:
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}">'


def _table(headers: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in line) + "</tr>" for line in lines)
    return f"<table><tr>{head}</tr>{body}</table>"


def _thumbnail_groups(rows: Sequence[dict], per_group: int) -> list[tuple[str, list[dict]]]:
    """(title, clips) per tier of the first tier column (or kept / rejected without one): the first
    ``per_group`` clips of each, in table order."""
    tiers = tier_columns(rows)
    if tiers:
        key = tiers[0]
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(f"{key} = {row.get(key)}", []).append(row)
    else:
        groups = {"kept": [r for r in rows if r.get("kept")], "rejected": [r for r in rows if not r.get("kept")]}
    return [(title, clips[:per_group]) for title, clips in sorted(groups.items()) if clips]


def render_html(rows: Sequence[dict], sources: Sequence[dict], errors: Sequence[dict], cfg: ReportConfig,
                notes: dict[str, str] | None = None) -> str:
    """The report page as HTML text (self-contained: images are embedded). ``notes``: section -> what it did not
    measure and what to give to measure it."""
    kept = sum(bool(r.get("kept")) for r in rows)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>openwan curate report</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}"
             "img{margin:2px}figure{display:inline-block;margin:4px;font-size:11px;max-width:220px}"
             "</style></head><body><h1>openwan curate report</h1>"]
    processed = sum(s.get("status") == "processed" for s in sources)
    parts.append(_table(["sources", "processed", "failed", "clips", "kept", "rejected", "errors"],
                        [[len(sources), processed, len(sources) - processed, len(rows), kept, len(rows) - kept,
                          len(errors)]]))
    if notes:
        parts.append("<h2>Not measured</h2>" + _table(["section", "note"], sorted(notes.items())))
    reasons = Counter(reason_kind(r) for row in rows for r in row.get("reasons") or [])
    parts.append("<h2>Rejections by reason</h2>")
    parts.append(_table(["reason", "clips"], reasons.most_common()) if reasons else "<p>No clip was rejected.</p>")
    for name in tier_columns(rows):
        counts = Counter(str(r.get(name)) for r in rows)
        kept_counts = Counter(str(r.get(name)) for r in rows if r.get("kept"))
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(_table(["tier", "clips", "kept"], [[t, n, kept_counts[t]] for t, n in sorted(counts.items())]))
    for name in cluster_columns(rows):
        counts = Counter(r.get(name) for r in rows if r.get(name) is not None)
        parts.append(f"<h2>{html.escape(name)}: {len(counts)} clusters</h2>")
        parts.append(_table(["cluster", "clips"], sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    png = histograms(rows, score_columns(rows))
    if png is not None:
        parts.append("<h2>Scores (kept green, rejected red)</h2>" + _img(png))
    if cfg.thumbnails:
        parts.append("<h2>Thumbnails</h2>")
        for title, clips in _thumbnail_groups(rows, cfg.thumbnails):
            parts.append(f"<h3>{html.escape(title)}</h3>")
            for row in clips:
                thumb = thumbnail(row)
                label = row["clip_id"] + ("" if row.get("kept") else " — " + "; ".join(row.get("reasons") or []))
                image = _img(thumb, row["clip_id"]) if thumb else "(unreadable)"
                parts.append(f"<figure>{image}<figcaption>{html.escape(label)}</figcaption></figure>")
    if errors:
        parts.append("<h2>Errors</h2>")
        parts.append(_table(["source", "clip", "stage", "error"],
                            [[e.get("source") or "", e.get("clip_id") or "", e["stage"], e["error"]] for e in errors]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, cfg: ReportConfig, rows: Sequence[dict], sources: Sequence[dict],
                 errors: Sequence[dict], notes: dict[str, str] | None = None) -> Path:
    """``report.html`` (or ``report.png``: the histograms alone) in ``out_dir``, atomically; returns its path.
    ``rows`` are clip rows with ``kept`` and ``reasons``; ``notes`` what the run did not measure (HTML only)."""
    out = Path(out_dir)
    if cfg.format == "png":
        png = histograms(rows, score_columns(rows))
        if png is None:  # no scores: an image saying so, so the file a user asked for is there
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=(4, 1))
            fig.text(0.5, 0.5, f"{len(rows)} clips, no scores", ha="center", va="center")
            png = _figure_png(fig)
            plt.close(fig)
        path = out / "report.png"
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(png), suffix=".png")
        return path
    text = render_html(rows, sources, errors, cfg, notes)
    path = out / "report.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), suffix=".html")
    return path


def report_from_tables(out_dir: str | Path, cfg: ReportConfig | None = None) -> Path:
    """Rebuild the report of a finished run from its ``clips.parquet``, ``sources.parquet`` and ``errors.parquet``
    (ValueError when ``out_dir`` holds no finished run)."""
    out = Path(out_dir)
    tables = {}
    for name in ("clips", "sources", "errors"):
        path = out / f"{name}.parquet"
        if not path.is_file():
            raise ValueError(f"{out} holds no {name}.parquet; give the --out folder of a finished openwan curate run.")
        try:
            tables[name] = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several kinds for a bad file
            raise ValueError(f"{path} is not a readable Parquet table ({err}); rerun openwan curate run.") from None
    rows = [{**r, "kept": r.get("decision") == "kept"} for r in tables["clips"]]
    return write_report(out, cfg or ReportConfig(), rows, tables["sources"], tables["errors"])


__all__ = ["write_report", "report_from_tables", "render_html", "histograms", "thumbnail", "score_columns",
           "tier_columns", "cluster_columns", "reason_kind"]
