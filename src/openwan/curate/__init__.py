"""Data curation: raw videos into a training manifest, as the Wan paper's data pipeline does.

``curate(load_config(path, overrides), out_dir, paths=[...])`` runs the stages (probe and split, fundamental
filters, motion, visual quality, embeddings, deduplication, clusters, captions, task subsets) and writes
``manifest.parquet`` (what ``openwan train`` reads), ``clips.parquet``, ``errors.parquet``, ``sources.parquet`` and a
report. ``openwan curate`` is its command line; docs/curation.md describes the stages, the config and the outputs.
"""

from openwan.curate.config import CurateConfig, config_hash, load_config
from openwan.curate.executors import LocalExecutor, RayExecutor, make_executor
from openwan.curate.pipeline import CurateResult, curate
from openwan.curate.sources import list_sources

__all__ = ["CurateConfig", "CurateResult", "LocalExecutor", "RayExecutor", "config_hash", "curate", "list_sources",
           "load_config", "make_executor"]
