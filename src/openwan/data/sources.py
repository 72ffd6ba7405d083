"""Batch sources for the trainers: iterables of batch dicts whose position can be saved and restored.

A trainer reads any :class:`BatchSource`; :class:`ListBatches` serves a fixed list (tests, small runs) and
:class:`SamplerLoader` wraps a ``DataLoader`` over a resumable :class:`~openwan.data.buckets.BucketBatchSampler`.
:func:`bucket_source` builds the latter from a clip manifest (raw videos) or a latent + text cache, and
:func:`clip_loader` from a manifest cropped to one bucket (what the VAE trains on). Both honour the clips' sampling
weights (a manifest's ``weight`` column, or a cache entry's ``weight``): with any weight given, each epoch draws
clips by weight (a clip without one counts 1); with none, every clip once per epoch. A manifest given together
with a cache selects and weights the cache's clips: the cache holds the tensors, the manifest (e.g. one phase's
``openwan curate select`` output) says which clips to draw and how often.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets
from openwan.data.cache import CachedDataset
from openwan.data.dataset import VideoClipDataset, collate, scan_manifest
from openwan.data.manifest import ClipRecord, read_manifest

log = logging.getLogger("openwan.data")


@runtime_checkable
class BatchSource(Protocol):
    """What a trainer reads batches from: an iterable of batch dicts whose position can be saved and restored.

    ``state_dict()`` is taken after a batch has been consumed and must be JSON-serialisable; after
    ``load_state_dict(state)`` a new iteration continues with exactly the batches that followed it. Iteration
    may end (an epoch); the trainer then iterates again. ``None`` or empty batches are skipped.
    """

    def __iter__(self) -> Iterator[dict | None]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


DataFactory = Callable[[int, Any], BatchSource]
"""Builds the batch source of stage ``index`` (from the stage's config); a trainer calls it when the stage starts."""


class ListBatches:
    """A fixed list of batch dicts served in order, round and round: the smallest resumable :class:`BatchSource`."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("ListBatches needs at least one batch.")
        self.position = 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class SamplerLoader:
    """A DataLoader over a resumable batch sampler (``openwan.data.BucketBatchSampler``), as a :class:`BatchSource`.

    Workers prefetch, so the sampler runs ahead of training; the state handed out is the sampler's position after
    the batches the trainer actually took (``state_dict(consumed=n)``). One pass is one epoch: the sampler moves
    to the next epoch itself, and the trainer iterates again. The workers of a dataset that decodes video
    (:class:`VideoClipDataset`) start as fresh processes: a worker forked after the process has used FFmpeg, e.g.
    to write a sample video, can wait forever on a lock FFmpeg held (PyAV 18.1.1 does).
    """

    def __init__(self, dataset, batch_sampler, collate_fn, num_workers: int = 0, seed: int = 0):
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.num_workers, self.seed = num_workers, seed
        self._state = _json_copy(batch_sampler.state_dict())

    def __iter__(self) -> Iterator[dict | None]:
        # An own generator, seeded by the epoch: worker seeds must not draw from torch's global generator, and a
        # resumed run must give its workers the seeds the uninterrupted run gave them.
        generator = torch.Generator().manual_seed(self.seed + int(self._state.get("epoch", 0)))
        spawn = self.num_workers > 0 and isinstance(self.dataset, VideoClipDataset)
        loader = DataLoader(self.dataset, batch_sampler=self.batch_sampler, collate_fn=self.collate_fn,
                            num_workers=self.num_workers, generator=generator,
                            multiprocessing_context="spawn" if spawn else None)
        for consumed, batch in enumerate(loader, 1):
            self._state = _json_copy(self.batch_sampler.state_dict(consumed=consumed))
            yield batch

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)
        self._state = _json_copy(state)


def bucket_source(*, manifest: str | None, cache_dir: str | None, buckets: Sequence[Sequence[int]], batch_size: int,
                  seed: int, fps: float = 16.0, num_workers: int = 0, image_video_ratio: float | None = None,
                  dp_rank: int = 0, dp_size: int = 1, label: str = "the data", whole: bool = False) -> SamplerLoader:
    """Batches of ``batch_size`` clips (the global batch) from a manifest of raw clips or a latent + text cache,
    each at one of ``buckets`` ((frames, height, width) in pixels); data-parallel rank ``dp_rank`` of ``dp_size``
    gets its ``batch_size / dp_size`` samples of each. ``label`` names the source in messages (e.g. a stage).

    With both ``manifest`` and ``cache_dir``, the cache's clips that the manifest names (by id) are drawn, by the
    manifest's weights. Sampling weights: the manifest's ``weight`` column, else the cache entries' ``weight``.
    ``whole``: cached clips longer than a bucket come whole (``CachedDataset.fit_buckets``), for the trainer to cut
    a window from; a cache is needed for it."""
    wanted = [Bucket(*b) for b in buckets]
    if whole and not cache_dir:
        raise ValueError(f"{label}: window: random cuts windows from a latent cache; set data.cache_dir (build the "
                         "cache from clips longer than the stage's buckets), or use window: start.")
    if manifest and not cache_dir:
        records = read_manifest(manifest)
        assignments = assign_buckets(records, wanted, fps=fps)
        dataset = VideoClipDataset(records, assignments, fps=fps)
        weights = record_weights(records)
        where = f"manifest {manifest}"
    else:
        records = read_manifest(manifest) if manifest else None
        dataset = CachedDataset(cache_dir, records)
        # A cache holds each clip at the bucket it was built for: the source serves those in its buckets, and the
        # first frames of longer ones (exact for a causal VAE; see CachedDataset.fit_buckets).
        assignments = dataset.fit_buckets(wanted, whole=whole)
        if not any(assignments):
            cached = sorted({tuple(b.as_list()) for b in dataset.buckets if b is not None})
            raise ValueError(f"{label}: no clip of the cache {cache_dir} is in the buckets "
                             f"{[list(b) for b in buckets]}; the cache holds {[list(b) for b in cached]}"
                             " — set the buckets to those, or to fewer frames at the same height and width"
                             " (served as a clip's first latent frames), or build a cache for these.")
        if records is not None:
            weights = record_weights(records)
            where = f"cache {cache_dir} (clips and weights of manifest {manifest})"
        else:
            weights = _weights([dataset.latents.get(key, {}).get("weight") for key in dataset.keys])
            where = f"cache {cache_dir}"
    used = sum(a is not None for a in assignments)
    log.info("%s: %d of %d clips of the %s fit its buckets", label, used, len(assignments), where)
    if weights is not None:
        drawn = sum(a is not None and w > 0 for a, w in zip(assignments, weights))
        log.info("%s: sampling by weight; %d of them have a weight above 0", label, drawn)
    # Cut into global batches of batch_size (the same plan for any dp_size), each split over the dp ranks.
    sampler = BucketBatchSampler(assignments, batch_size // dp_size, seed=seed, image_video_ratio=image_video_ratio,
                                 rank=dp_rank, world_size=dp_size, weights=weights)
    return SamplerLoader(dataset, sampler, collate, num_workers=num_workers, seed=seed)


def clip_loader(manifest: str, frames: int, size: int, *, fps: float, batch_size: int, num_workers: int,
                seed: int) -> SamplerLoader:
    """Resumable batches ``{"video": [B, 3, frames, size, size]}`` in [-1, 1] over a manifest's usable clips
    (unreadable files and clips too short for ``frames`` at ``fps`` are left out, and counted in the log)."""
    records, bad = scan_manifest(read_manifest(manifest))
    assignments = assign_buckets(records, [Bucket(frames, size, size)], fps=fps)
    usable = sum(b is not None for b in assignments)
    log.info("%d clips usable at %dx%dx%d; %d unreadable, %d too short", usable, frames, size, size, len(bad),
             len(records) - usable)
    if usable < batch_size:
        raise ValueError(f"only {usable} clips of {manifest} give {frames} frames at {fps} fps; add clips, lower "
                         "the frames (--frames) or the batch size (--batch-size).")
    dataset = VideoClipDataset(records, assignments, fps=fps)
    sampler = BucketBatchSampler(assignments, batch_size, seed=seed, weights=record_weights(records))
    return SamplerLoader(dataset, sampler, collate, num_workers=num_workers, seed=seed)


def record_weights(records: Sequence[ClipRecord]) -> list[float] | None:
    """The records' sampling weights for ``BucketBatchSampler``: None when no record has one (every clip once per
    epoch), else one per record with a missing weight counted as 1."""
    return _weights([r.weight for r in records])


def _weights(values: Sequence[float | None]) -> list[float] | None:
    if all(v is None for v in values):
        return None
    return [1.0 if v is None else float(v) for v in values]


def _json_copy(state: Any) -> Any:
    return json.loads(json.dumps(state))


__all__ = ["BatchSource", "DataFactory", "ListBatches", "SamplerLoader", "bucket_source", "clip_loader",
           "record_weights"]
