"""The bench's report: ``report.html`` (self-contained, its pictures embedded as base64 PNGs) and ``report.png``.

The PNG holds a bar chart of every dimension's mean per run (a run is one ``openwan eval bench --out`` folder;
several are compared side by side) and, with three dimensions or more, a radar chart of the same means. The HTML
adds the table of means, counts and "not measured" sentences, the aggregate with the weights that entered it, and
per run and dimension a strip of frames from the best and the worst video. Charts are drawn with matplotlib (Agg).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from openwan.eval.bench.runner import SCORES_FILE, SUMMARY_FILE, DecodeOptions, VideoSource, decode, iter_rows
from openwan.fileio import atomic_write

REPORT_HTML, REPORT_PNG = "report.html", "report.png"
STRIP_FRAMES, STRIP_HEIGHT = 4, 96  # frames per thumbnail strip, their height in pixels


def load_run(run_dir: str | Path) -> dict:
    """A bench folder's ``name`` (the folder's), ``summary`` and score ``rows``; ValueError when it is none."""
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY_FILE).is_file():
        raise ValueError(f"{run_dir} holds no {SUMMARY_FILE}; give folders written by `openwan eval bench --out`.")
    summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    return {"name": run_dir.resolve().name, "dir": run_dir, "summary": summary,
            "rows": list(iter_rows(run_dir)) if (run_dir / SCORES_FILE).is_file() else []}


def _dimension_names(runs: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names |= dict.fromkeys(run["summary"]["dimensions"])
    return list(names)


def _means(run: dict, names: list[str]) -> list[float | None]:
    per = run["summary"]["dimensions"]
    return [per.get(n, {}).get("mean") for n in names]


def chart_png(runs: list[dict]) -> bytes:
    """The bar chart (and, with >= 3 measured dimensions, the radar chart) of the runs' dimension means, as PNG
    bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = _dimension_names(runs)
    measured = [n for n in names if any(m is not None for r in runs for m in _means(r, [n]))]
    radar = len(measured) >= 3  # over the dimensions some run measured: a missing one is not a zero
    fig = Figure(figsize=(max(6.0, 0.7 * len(names) + 2) + (5.5 if radar else 0), 5.0), layout="constrained")
    grid = fig.add_gridspec(1, 2 if radar else 1, width_ratios=[max(6.0, 0.7 * len(names) + 2), 5.5][:1 + radar])
    bars = fig.add_subplot(grid[0, 0])
    width = 0.8 / len(runs)
    x = np.arange(len(names))
    for k, run in enumerate(runs):
        means = _means(run, names)
        heights = [m if m is not None else 0.0 for m in means]
        drawn = bars.bar(x - 0.4 + width * (k + 0.5), heights, width, label=run["name"])
        for rect, mean in zip(drawn, means):
            if mean is None:  # no video of this run measured it: marked, not drawn as a zero
                bars.text(rect.get_x() + rect.get_width() / 2, 0.02, "no value", ha="center", va="bottom",
                          rotation=90, fontsize=7)
    labels = [n if all(_means(r, [n])[0] is not None for r in runs) else f"{n} (no value)" for n in names]
    bars.set_xticks(x, labels, rotation=40, ha="right", fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("mean score (0-1, higher better)")
    bars.set_title("dimension means")
    bars.legend(fontsize=8, loc="upper right")
    if radar:
        polar = fig.add_subplot(grid[0, 1], projection="polar")
        angles = np.linspace(0, 2 * math.pi, len(measured), endpoint=False)
        for run in runs:
            values = np.array([m if m is not None else 0.0 for m in _means(run, measured)])
            polar.plot(np.append(angles, angles[0]), np.append(values, values[0]), label=run["name"])
            polar.fill(np.append(angles, angles[0]), np.append(values, values[0]), alpha=0.15)
        polar.set_xticks(angles, measured, fontsize=7)
        polar.set_ylim(0, 1)
        polar.set_title("measured dimension means (a run's missing value at 0)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def strip_png(path: str, count: int = STRIP_FRAMES, height: int = STRIP_HEIGHT,
              options: DecodeOptions | None = None) -> bytes | None:
    """``count`` frames spread over the video at ``path`` (over the frames ``options`` keep, as the run scored them)
    side by side, ``height`` px tall, as PNG bytes; None when the file cannot be read any more."""
    try:
        frames = decode(VideoSource(path, Path(path).stem), options or DecodeOptions()).frames
    except Exception:  # a report never fails on a video that vanished or broke since it was scored
        return None
    index = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    pieces = []
    for frame in frames[index]:
        image = Image.fromarray(frame)
        width = max(1, round(image.width * height / image.height))
        pieces.append(image.resize((width, height), Image.BILINEAR))
    gap = 3
    canvas = Image.new("RGB", (sum(p.width for p in pieces) + gap * (len(pieces) - 1), height), "white")
    x = 0
    for piece in pieces:
        canvas.paste(piece, (x, 0))
        x += piece.width + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return f"<em>{html.escape(alt)}: file unreadable</em>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(part: dict | None) -> str:
    if not part:
        return "<td>-</td>"
    mean = "no value" if part.get("mean") is None else f"{part['mean']:.4f}"
    notes = [f"{part.get('count', 0)} measured"]
    if part.get("not_applicable"):
        notes.append(f"{part['not_applicable']} n/a")
    if part.get("errors"):
        notes.append(f"{part['errors']} errors")
    reason = part.get("not_measured_reason")
    title = f' title="{html.escape(reason)}"' if reason else ""
    return f"<td{title}><b>{mean}</b><br><small>{html.escape(', '.join(notes))}</small></td>"


def _aggregate_cell(agg: dict) -> str:
    value = "n/a" if agg.get("value") is None else f"{agg['value']:.4f}"
    weights = ", ".join(f"{k} {v:.3f}" for k, v in agg.get("weights", {}).items())
    return f"<td><b>{value}</b><br><small>{html.escape(weights)}</small></td>"


def _extremes(rows: list[dict], name: str) -> list[tuple[str, dict]]:
    scored = [r for r in rows if (r["scores"].get(name) or {}).get("value") is not None]
    if not scored:
        return []
    scored.sort(key=lambda r: r["scores"][name]["value"])
    return [("best", scored[-1])] + ([("worst", scored[0])] if len(scored) > 1 else [])


def render_html(runs: list[dict], chart: bytes, strips: bool = True) -> str:
    """The report page of ``runs`` with ``chart`` (PNG bytes) and, when ``strips``, best/worst frame strips."""
    names = _dimension_names(runs)
    head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    body = []
    for name in names:
        cells = "".join(_cell(r["summary"]["dimensions"].get(name)) for r in runs)
        stands = next((r["summary"]["dimensions"][name].get("stands_for") for r in runs
                       if r["summary"]["dimensions"].get(name, {}).get("stands_for")), "")
        body.append(f"<tr><th>{html.escape(name)}<br><small>{html.escape(stands)}</small></th>{cells}</tr>")
    agg = "".join(_aggregate_cell(r["summary"]["aggregate"]) for r in runs)
    body.append(f"<tr><th>aggregate<br><small>weights that entered</small></th>{agg}</tr>")
    missing = sorted({(n, p["not_measured_reason"]) for r in runs for n, p in r["summary"]["dimensions"].items()
                      if p.get("not_measured_reason")})
    parts = [f"<h1>openwan eval bench: {html.escape(', '.join(r['name'] for r in runs))}</h1>",
             "<p>" + "<br>".join(f"<b>{html.escape(r['name'])}</b>: {r['summary'].get('videos', 0)} videos scored"
                                 f", {r['summary'].get('videos_failed', 0)} unreadable; inputs "
                                 f"{html.escape(str(r['summary'].get('inputs', '?')))}" for r in runs) + "</p>",
             _img(chart, "dimension means"),
             f"<table><tr><th>dimension</th>{head}</tr>{''.join(body)}</table>",
             f"<p><small>{html.escape(runs[0]['summary']['aggregate'].get('rule', ''))}</small></p>"]
    if missing:
        parts.append("<h2>Not measured</h2><ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(s)}</li>"
                                                           for n, s in missing) + "</ul>")
    if strips:
        for run in runs:
            parts.append(f"<h2>Best and worst videos: {html.escape(run['name'])}</h2>")
            for name in names:
                for label, row in _extremes(run["rows"], name):
                    value = row["scores"][name]["value"]
                    caption = f"{name} {label}: {row['id']} ({value:.4f})"
                    prompt = f"<br><small>{html.escape(row['prompt'])}</small>" if row.get("prompt") else ""
                    options = DecodeOptions(**row["decode"]) if isinstance(row.get("decode"), dict) else None
                    parts.append(f"<figure>{_img(strip_png(row['path'], options=options), caption)}<figcaption>"
                                 f"{html.escape(caption)}{prompt}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}figure{display:inline-block;margin:0.5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>openwan eval bench</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dirs: list[str | Path], out: str | Path, strips: bool = True) -> dict[str, Path]:
    """Write the report of the bench folders ``run_dirs``: ``out`` (an .html file) and the chart beside it as
    ``<stem>.png``. Returns {"html": path, "png": path}."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: name the report .html (its chart is written beside it as .png).")
    if not run_dirs:
        raise ValueError("give at least one bench folder to report on.")
    runs = [load_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    for i, run in enumerate(runs):  # two folders of the same name are told apart by their parent
        if names.count(run["name"]) > 1:
            run["name"] = f"{Path(run['dir']).resolve().parent.name}/{run['name']}#{i}"
    chart = chart_png(runs)
    page = render_html(runs, chart, strips)
    png = out.with_suffix(".png")
    atomic_write(png, lambda tmp: Path(tmp).write_bytes(chart))
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return {"html": out, "png": png}


__all__ = ["write_report", "render_html", "chart_png", "strip_png", "load_run", "REPORT_HTML", "REPORT_PNG"]
