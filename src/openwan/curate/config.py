"""The curation config: one frozen dataclass per YAML section, read like a training config.

:class:`CurateConfig` composes the core's sections (``input``, ``run``, ``report``) with every stage's section,
each defined in its stage's module (``split`` in shots.py, ``limits``/``borders``/``exposure``/``blur`` in
filters.py, ...). :func:`load_config` reads a YAML/TOML file and ``a.b=value`` overrides through
:mod:`openwan.configio`, exactly as ``openwan train --config F key=value`` does: an unknown section or field, a
value of the wrong type or out of range is a ValueError naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from openwan.configio import apply_overrides, check, parse, read_config_file, to_plain, write_yaml
from openwan.curate.aesthetic import AestheticConfig
from openwan.curate.captions import CaptionConfig
from openwan.curate.dedup import ClusterConfig, DedupConfig
from openwan.curate.embed import EmbedConfig
from openwan.curate.filters import BlurConfig, BordersConfig, ExposureConfig, LimitsConfig
from openwan.curate.motion import MotionConfig
from openwan.curate.nsfw import NSFWConfig
from openwan.curate.ocr import OCRConfig
from openwan.curate.overlays import OverlayConfig
from openwan.curate.quality import QualityConfig
from openwan.curate.scorer import ScorerConfig
from openwan.curate.shots import SplitConfig
from openwan.curate.subsets import SubsetConfig

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")


@dataclass(frozen=True)
class InputConfig:
    """Where the raw videos are. ``paths``: folders (searched recursively for ``extensions``), glob patterns
    (``raw/**/*.mp4``), video files, or a manifest (``.parquet``/``.jsonl``) whose rows name videos (its captions
    are kept). Paths given on the command line are added to these. ``sidecar_captions``: a ``NAME.txt`` beside
    ``NAME.mp4`` is that video's caption."""

    paths: tuple[str, ...] = ()
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    sidecar_captions: bool = True

    def __post_init__(self) -> None:
        for ext in self.extensions:
            check(ext.startswith(".") and len(ext) > 1, "input.extensions", "file suffixes such as .mp4", ext)


@dataclass(frozen=True)
class RunConfig:
    """How the stages run. ``executor``: ``local`` (in this process, or a pool of ``workers`` processes or
    threads) or ``ray`` (Ray Data: a local Ray started with ``workers`` CPUs, or the cluster at ``ray_address``).
    ``analysis_fps`` / ``analysis_size``: each clip is decoded once at this rate, its short side resized to this
    many pixels, for every stage. ``hash_content``: key the caches by the SHA-256 of each file's bytes (a renamed
    or copied file is recognised); false keys them by path, size and modification time (no full read).
    ``progress``: tqdm bars per phase on stderr."""

    executor: Literal["local", "ray"] = "local"
    workers: int = 1
    pool: Literal["process", "thread"] = "process"
    ray_address: str | None = None
    analysis_fps: float = 8.0
    analysis_size: int = 256
    hash_content: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check(1 <= self.workers <= 1024, "run.workers", "an integer in [1, 1024]", self.workers)
        check(0 < self.analysis_fps <= 60, "run.analysis_fps", "a number in (0, 60]", self.analysis_fps)
        check(32 <= self.analysis_size <= 2048, "run.analysis_size", "an integer in [32, 2048] (pixels)",
              self.analysis_size)
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"run.ray_address {self.ray_address!r} is set but run.executor is "
                             f"{self.executor!r}; set run.executor=ray (or --executor ray) to use a Ray cluster.")


@dataclass(frozen=True)
class ReportConfig:
    """The run's report: ``report.html`` (histograms as embedded PNGs, tier and cluster counts, thumbnails per
    tier, rejections by reason) or ``report.png`` (the histograms alone). ``thumbnails``: clips shown per tier."""

    enabled: bool = True
    format: Literal["html", "png"] = "html"
    thumbnails: int = 6

    def __post_init__(self) -> None:
        check(0 <= self.thumbnails <= 100, "report.thumbnails", "an integer in [0, 100]", self.thumbnails)


@dataclass(frozen=True)
class CurateConfig:
    """Every section of a curation run, in run order after ``input`` and ``run``."""

    input: InputConfig = field(default_factory=InputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    borders: BordersConfig = field(default_factory=BordersConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    ocr: OCRConfig = field(default_factory=OCRConfig)
    nsfw: NSFWConfig = field(default_factory=NSFWConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    subsets: SubsetConfig = field(default_factory=SubsetConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain dicts and lists (what YAML writes)."""
        return to_plain(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        return write_yaml(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurateConfig:
        """A config from plain dicts; ValueError names an unknown section or field, or a bad value."""
        return parse(cls, data)

    def section(self, name: str) -> Any:
        """The section called ``name``; ValueError for an unknown one."""
        if name not in SECTIONS:
            raise ValueError(f"unknown curation section {name!r}; the sections are: {', '.join(SECTIONS)}.")
        return getattr(self, name)


SECTIONS = tuple(f.name for f in fields(CurateConfig))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CurateConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) curation config (None: the defaults) and apply ``a.b=value``
    overrides (values read as YAML), as ``openwan train --config F key=value`` does."""
    data = read_config_file(path) if path is not None else {}
    cfg = CurateConfig.from_dict(data)
    if overrides:
        cfg = CurateConfig.from_dict(apply_overrides(cfg.to_dict(), overrides))
    return cfg


def config_hash(cfg: CurateConfig, sections: Sequence[str]) -> str:
    """12 hex digits of the SHA-256 of the named sections' values: what a cache entry made under them is keyed by,
    so a changed setting recomputes what depends on it and nothing else."""
    plain = {name: to_plain(cfg.section(name)) for name in sections}
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = ["CurateConfig", "InputConfig", "RunConfig", "ReportConfig", "SECTIONS", "VIDEO_EXTENSIONS",
           "load_config", "config_hash"]
