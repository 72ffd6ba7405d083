"""Per-phase selection: ``openwan curate select`` picks a training phase's clips from a run's ``clips.parquet`` and
gives each a sampling weight, written as a manifest that ``openwan train`` reads directly (its ``weight`` column
drives the bucket sampler: each epoch draws clips by weight, with replacement).

The steps, in order:

1. **filters** (each needs its column; a table without it is refused by name): ``drop_rejected`` (``decision``),
   ``min_quality`` (``quality_score``), ``min_duration`` / ``max_duration`` (``duration``), ``min_short_side``
   (``width``/``height``, or the ``crop`` box when set), ``tiers`` (``motion_tier``), ``subsets``
   (``subset_<name>``, e.g. ``subset_i2v``).
2. **weights**: the product of the clip's motion tier's weight (``tier_weights``), a cluster balance factor
   ``cluster_size ** -cluster_alpha`` (sizes counted among the selected clips by ``cluster_id``, so with alpha 1
   every cluster gets the same total weight and the long tail is drawn as often as the head) and a quality factor
   ``percentile ** quality_power`` (the clip's ``quality_score`` rank among the selected, in (0, 1]). Clips of
   weight 0 are dropped; the rest are scaled to a mean weight of 1.
3. **max_clips**: at most this many clips, drawn by weight without replacement (deterministic from ``seed``).
4. **caption_styles**: each clip becomes one row per caption variant it has (``captions_styles`` /
   ``captions_texts``) among the styles named, id ``clip_id#style``, sharing the clip's weight equally.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from openwan.configio import apply_overrides, parse, read_config_file, to_plain
from openwan.data.manifest import ClipRecord, write_manifest

Tier = Literal["optimal", "medium", "static", "camera", "low_quality", "shaky"]  # openwan.curate.motion.TIERS
Subset = Literal["i2v", "continuation", "flf2v"]
CLIP_COLUMNS = ("clip_id", "source", "start", "end", "frames", "fps", "width", "height", "caption")
LONG_VECTOR = 16  # numeric lists longer than this (embeddings) stay out of the manifest


@dataclass(frozen=True)
class TierWeights:
    """Sampling weight per motion tier (>= 0; 0 drops the tier). The defaults favour clear subject motion, as the
    paper's motion-quality step does; a clip without a tier (the motion stage off or failed) gets 1."""

    optimal: float = 1.0
    medium: float = 0.7
    static: float = 0.2
    camera: float = 0.5
    low_quality: float = 0.1
    shaky: float = 0.0

    def __post_init__(self) -> None:
        for name in Tier.__args__:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"select.tier_weights.{name} must be a finite number >= 0; got {value}.")

    def uniform(self) -> bool:
        """True when every tier has the same weight (the tier does not matter)."""
        return len({getattr(self, name) for name in Tier.__args__}) == 1


@dataclass(frozen=True)
class SelectConfig:
    """One training phase's selection (see the module docstring). Limits of 0 (or None) are off."""

    phase: str = "default"
    drop_rejected: bool = True
    min_quality: float | None = None  # on the quality_score scale
    min_duration: float = 0.0  # seconds
    max_duration: float = 0.0  # seconds; 0: no limit
    min_short_side: int = 0  # pixels of the (cropped) source
    tiers: tuple[Tier, ...] = ()  # motion tiers allowed; empty: every tier
    subsets: tuple[Subset, ...] = ()  # subsets a clip must be in (all of them)
    tier_weights: TierWeights = field(default_factory=TierWeights)
    cluster_alpha: float = 0.0  # weight *= cluster_size ** -alpha; 0: no balance, 1: equal weight per cluster
    quality_power: float = 0.0  # weight *= quality percentile ** power; 0: quality does not weigh
    max_clips: int = 0  # 0: no limit
    seed: int = 0
    caption_styles: tuple[str, ...] = ()  # () : the primary caption only; ("all",): every variant a clip has

    def __post_init__(self) -> None:
        if not self.phase or any(c in self.phase for c in "\n\r"):
            raise ValueError(f"select.phase must be a one-line name; got {self.phase!r}.")
        for name in ("min_duration", "max_duration", "cluster_alpha", "quality_power"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"select.{name} must be a finite number >= 0; got {value}.")
        if self.max_duration and self.max_duration < self.min_duration:
            raise ValueError(f"select.max_duration ({self.max_duration}) must be 0 (no limit) or at least "
                             f"select.min_duration ({self.min_duration}).")
        if self.min_quality is not None and not math.isfinite(self.min_quality):
            raise ValueError(f"select.min_quality must be a finite number or null; got {self.min_quality}.")
        if self.min_short_side < 0 or self.max_clips < 0:
            raise ValueError(f"select.min_short_side and select.max_clips must be >= 0; got {self.min_short_side} "
                             f"and {self.max_clips}.")
        if len(set(self.caption_styles)) != len(self.caption_styles) or any(not s for s in self.caption_styles):
            raise ValueError(f"select.caption_styles must name distinct styles; got {list(self.caption_styles)}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectConfig:
        """A config from a plain dict; ValueError names an unknown or bad field."""
        return parse(cls, data, "select")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain dicts and lists (what YAML writes)."""
        return to_plain(self)


def load_select_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SelectConfig:
    """A phase's :class:`SelectConfig` from a YAML/TOML file of its fields (None: the defaults) and ``a.b=value``
    overrides (e.g. ``tier_weights.static=0``)."""
    data = read_config_file(path) if path is not None else {}
    if overrides:
        data = apply_overrides(data, overrides)
    return SelectConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------- the table


def read_clips_table(path: str | Path) -> list[dict]:
    """Every row of a curation run's ``clips.parquet`` as a dict of all its columns.

    A relative ``clip_path`` (re-encoded clips) is made absolute against the table's folder. ValueError for a
    missing or unreadable file and for a table without the columns every clip has (``clip_id``, ``source``,
    ``start``, ``end``, ``frames``, ``fps``, ``width``, ``height``, ``caption``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give a curation run's clips.parquet.")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a bad file
        raise ValueError(f"{path} is not a readable Parquet table ({err}); give a curation run's clips.parquet.") \
            from None
    missing = [c for c in CLIP_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} column(s); it is not a curation run's clips table "
                         "(openwan curate run writes clips.parquet).")
    rows = table.to_pylist()
    folder = path.absolute().parent
    for row in rows:
        if row.get("clip_path") and not os.path.isabs(row["clip_path"]):
            row["clip_path"] = os.path.normpath(folder / row["clip_path"])
    return rows


def _need(rows: list[dict], column: str, setting: str) -> None:
    if rows and not any(column in row for row in rows):
        raise ValueError(f"{setting} needs the clips table's '{column}' column, which it lacks; enable the stage "
                         f"that writes it in the curation run, or turn {setting} off.")


def _check_columns(rows: list[dict], cfg: SelectConfig) -> None:
    """Every column the config's filters and weights read is there, before anything is computed."""
    if cfg.drop_rejected:
        _need(rows, "decision", "select.drop_rejected")
    if cfg.min_quality is not None:
        _need(rows, "quality_score", "select.min_quality")
    if cfg.quality_power:
        _need(rows, "quality_score", "select.quality_power")
    if cfg.min_duration or cfg.max_duration:
        _need(rows, "duration", "select.min_duration/max_duration")
    if cfg.tiers:
        _need(rows, "motion_tier", "select.tiers")
    if not cfg.tier_weights.uniform():
        _need(rows, "motion_tier", "select.tier_weights (set every tier's weight equal to ignore tiers)")
    for subset in cfg.subsets:
        _need(rows, f"subset_{subset}", f"select.subsets ({subset})")
    if cfg.cluster_alpha:
        _need(rows, "cluster_id", "select.cluster_alpha")
    if cfg.caption_styles:
        _need(rows, "captions_styles", "select.caption_styles")
        _need(rows, "captions_texts", "select.caption_styles")


# ------------------------------------------------------------------------------------------------ select


def _short_side(row: dict) -> int:
    crop = row.get("crop")
    if crop:
        return min(crop[2] - crop[0], crop[3] - crop[1])
    return min(int(row["width"]), int(row["height"]))


def _passes(row: dict, cfg: SelectConfig) -> bool:
    if cfg.drop_rejected and row.get("decision") != "kept":
        return False
    if cfg.min_quality is not None and (row.get("quality_score") is None or row["quality_score"] < cfg.min_quality):
        return False
    duration = row.get("duration")
    if cfg.min_duration and (duration is None or duration < cfg.min_duration):
        return False
    if cfg.max_duration and (duration is None or duration > cfg.max_duration):
        return False
    if cfg.min_short_side and _short_side(row) < cfg.min_short_side:
        return False
    if cfg.tiers and row.get("motion_tier") not in cfg.tiers:
        return False
    return all(row.get(f"subset_{subset}") is True for subset in cfg.subsets)


def _percentiles(values: list[float | None]) -> np.ndarray:
    """Each value's rank percentile in (0, 1] among the given ones (ties share their mean rank); None -> 0.5."""
    known = [v for v in values if v is not None]
    ranks: dict[float, list[int]] = {}
    order = sorted(known)
    for i, v in enumerate(order):
        ranks.setdefault(v, []).append(i + 1)
    mean_rank = {v: sum(r) / len(r) / len(order) for v, r in ranks.items()}
    return np.array([0.5 if v is None else mean_rank[v] for v in values])


def clip_weights(rows: list[dict], cfg: SelectConfig) -> np.ndarray:
    """Unnormalised sampling weight of each row: tier weight x cluster balance x quality factor (see the module
    docstring)."""
    weights = np.array([1.0 if r.get("motion_tier") is None else getattr(cfg.tier_weights, r["motion_tier"], 1.0)
                        for r in rows])
    if cfg.cluster_alpha:
        sizes = Counter(r.get("cluster_id") for r in rows)  # clips without a cluster form one group
        weights *= np.array([sizes[r.get("cluster_id")] ** -cfg.cluster_alpha for r in rows])
    if cfg.quality_power:
        weights *= _percentiles([r.get("quality_score") for r in rows]) ** cfg.quality_power
    return weights


def _draw(rows: list[dict], weights: np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` row indices drawn by weight without replacement (Efraimidis-Spirakis keys), in the rows' order."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 36])))
    keys = np.log(rng.random(len(rows))) / weights  # larger is likelier; weights are > 0 here
    return sorted(np.argsort(-keys, kind="stable")[:count].tolist())


def _variants(row: dict, styles: tuple[str, ...]) -> list[tuple[str, str]]:
    """(style, caption) pairs of the row's caption variants among ``styles`` ("all": every one)."""
    names, texts = row.get("captions_styles") or [], row.get("captions_texts") or []
    return [(s, t) for s, t in zip(names, texts) if t and ("all" in styles or s in styles)]


def select_clips(rows: list[dict], cfg: SelectConfig) -> list[dict]:
    """The phase's rows, each a copy of its clips-table row with ``weight`` (mean 1 over the selected clips) and
    ``select_phase``; caption variants as extra rows (``clip_id#style``). ValueError, before anything is computed,
    when the table lacks a column the config needs."""
    _check_columns(rows, cfg)
    chosen = [r for r in rows if _passes(r, cfg)]
    if not chosen:
        return []
    weights = clip_weights(chosen, cfg)
    keep = weights > 0
    chosen, weights = [r for r, k in zip(chosen, keep) if k], weights[keep]
    if cfg.max_clips and len(chosen) > cfg.max_clips:
        picked = _draw(chosen, weights, cfg.max_clips, cfg.seed)
        chosen, weights = [chosen[i] for i in picked], weights[picked]
    if not chosen:
        return []
    weights = weights / weights.mean()
    out = []
    for row, weight in zip(chosen, weights.tolist()):
        variants = _variants(row, cfg.caption_styles) if cfg.caption_styles else []
        if not variants:
            out.append({**row, "weight": weight, "select_phase": cfg.phase})
            continue
        for style, text in variants:
            out.append({**row, "clip_id": f"{row['clip_id']}#{style}", "caption": text, "caption_style": style,
                        "weight": weight / len(variants), "select_phase": cfg.phase})
    return out


# ------------------------------------------------------------------------------------------------- write

_NOT_EXTRA = {*CLIP_COLUMNS, "crop", "weight", "clip_path", "decision", "reasons"}


def _long_vector(value: Any) -> bool:
    return isinstance(value, list) and len(value) > LONG_VECTOR and all(isinstance(x, (int, float)) for x in value)


def _extra_columns(rows: list[dict]) -> list[dict]:
    """The columns written beside the records: all but the record's own, the decision, and any column holding a
    long numeric vector (embeddings) in some row."""
    vectors = {k for row in rows for k, v in row.items() if _long_vector(v)}
    skip = _NOT_EXTRA | vectors
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


def write_selection(rows: list[dict], path: str | Path, clips_path: str | Path | None = None) -> Path:
    """Write :func:`select_clips`'s rows as a training manifest (``.parquet`` or ``.jsonl``) atomically: one
    :class:`~openwan.data.manifest.ClipRecord` per row (the clip's source range, or its re-encoded file, its crop
    and weight) with the row's scores beside. ``clips_path``: the clips table the rows came from, against whose
    folder relative paths resolve. Returns the path."""
    folder = Path(clips_path).absolute().parent if clips_path is not None else Path.cwd()
    records = [clip_record(row, folder) for row in rows]
    return write_manifest(records, path, extra=_extra_columns(rows))


def clip_record(row: dict, folder: str | Path = ".") -> ClipRecord:
    """The training-manifest record of a clips-table row: its re-encoded ``clip_path`` when it has one, else its
    ``source`` with ``start``/``end``; relative paths resolve against ``folder``.

    A record's ``frames`` counts the frames of the *file* (the dataset reads up to ``end`` within it), while the
    table's ``frames`` counts the clip's own: a source range gets ``max(frames, ceil(end * fps))``, the frames up
    to the clip's end, so a clip that starts late in its source keeps all its frames."""
    own_file = bool(row.get("clip_path"))
    media = os.path.normpath(Path(folder) / (row["clip_path"] if own_file else row["source"]))
    fps, frames = float(row["fps"]), int(row["frames"])
    start, end = (None, None) if own_file else (float(row["start"]), float(row["end"]))
    if end is not None and fps > 0:
        frames = max(frames, math.ceil(end * fps - 1e-6))
    weight = row.get("weight")
    return ClipRecord(path=media, caption=row.get("caption") or "", frames=frames, fps=fps,
                      width=int(row["width"]), height=int(row["height"]), start=start, end=end,
                      id=str(row["clip_id"]), crop=tuple(row["crop"]) if row.get("crop") else None,
                      weight=None if weight is None else float(weight))


__all__ = ["SelectConfig", "TierWeights", "load_select_config", "read_clips_table", "select_clips", "clip_weights",
           "write_selection", "clip_record"]
