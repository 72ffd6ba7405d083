"""Latent and text caches: encode the data once, then train without the VAE and umT5 in memory.

One cache folder holds both, as sharded safetensors keyed by clip id:

    index.json                 {id: {"shard": "latents-00000.safetensors", "bucket": [f, h, w], "caption": str}}
    latents-NNNNN.safetensors  normalised VAE latents [16, F, h, w] per clip (float32 unless asked otherwise)
    text_index.json            {"text_len": n, "items": {id: {"shard": "text-00000.safetensors", "length": L,
                                                              "caption": str}}}
    text-NNNNN.safetensors     each caption's umT5 states trimmed to its own tokens, [L, dim] (L <= text_len)
    text_empty.safetensors     the same for "" (the text-dropout prompt), under the key "empty"

Text is stored trimmed (smaller than text_len rows) and zero-padded to text_len when read, which gives exactly
what ``pad_context`` gives. Every file is written to a temporary name and renamed; a shard's index entries are
written after the shard, so a killed build loses at most the unwritten shard, and a rerun skips every clip
already cached (with the same bucket, or the same caption).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets
from openwan.data.dataset import VideoClipDataset
from openwan.data.manifest import ClipRecord
from openwan.fileio import atomic_write
from openwan.models.text_encoder import encode_prompts

logger = logging.getLogger(__name__)

LATENT_INDEX = "index.json"
TEXT_INDEX = "text_index.json"
TEXT_EMPTY = "text_empty.safetensors"


@dataclass
class CacheReport:
    """What a cache build did: ids written now, ids already cached, bad files (path -> reason), and ids of
    clips too short for every bucket."""

    cached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    no_bucket: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ helpers


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; delete the cache folder and build it again.") from None


def _write_json(path: Path, data) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, ensure_ascii=False) + "\n"))


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def _check_unique(records: Sequence[ClipRecord]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"clip id {record.id!r} appears twice in the records; give each clip a unique id.")
        seen.add(record.id)


class _ShardWriter:
    """Collects tensors and writes them ``shard_size`` at a time as ``{prefix}-NNNNN.safetensors``, each shard
    before the index entries that point at it."""

    def __init__(self, folder: Path, prefix: str, shard_size: int, entries: dict, save_index) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1; got {shard_size}.")
        self.folder, self.prefix, self.shard_size = folder, prefix, shard_size
        self.entries, self.save_index = entries, save_index
        numbers = [int(m.group(1)) for e in entries.values() if (m := re.search(r"-(\d+)\.", e["shard"]))]
        self.next_number = max(numbers, default=-1) + 1  # an orphan shard (no index entry) is overwritten
        self.tensors: dict[str, torch.Tensor] = {}
        self.pending: dict[str, dict] = {}

    def add(self, key: str, tensor: torch.Tensor, entry: dict) -> None:
        self.tensors[key] = tensor.detach().cpu().contiguous().clone()  # own storage: safetensors needs it
        self.pending[key] = entry
        if len(self.tensors) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.tensors:
            return
        name = f"{self.prefix}-{self.next_number:05d}.safetensors"
        _save_tensors(self.tensors, self.folder / name)
        self.entries.update({k: {"shard": name, **e} for k, e in self.pending.items()})
        self.save_index()
        logger.info("cache: wrote %s (%d items)", name, len(self.tensors))
        self.next_number += 1
        self.tensors, self.pending = {}, {}


# ------------------------------------------------------------------------------------------- latents


class _Loads(Dataset):
    """(index, item, reason) per dataset index, so bad files are known in the main process with workers too."""

    def __init__(self, dataset: VideoClipDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, dict | None, str | None]:
        return (self.indices[i], *self.dataset.load(self.indices[i]))


def _loaded(dataset: VideoClipDataset, indices: list[int], num_workers: int) -> Iterator[tuple]:
    loads = _Loads(dataset, indices)
    if num_workers == 0:
        yield from (loads[i] for i in range(len(loads)))
        return
    # spawn: a worker forked from a process that has decoded video with PyAV can inherit a lock one of FFmpeg's
    # threads held at the fork, and wait on it forever; a fresh interpreter inherits nothing.
    yield from DataLoader(loads, batch_size=None, num_workers=num_workers, collate_fn=_unchanged,
                          multiprocessing_context="spawn")


def _unchanged(item):
    return item  # a module-level function, so it pickles for spawned workers


@torch.no_grad()
def _encode_batch(vae, videos: list[torch.Tensor]) -> torch.Tensor:
    device = next(vae.parameters()).device
    return vae.encode(torch.stack(videos).to(device))  # [B, 16, F, h, w] normalised, float32


def build_latent_cache(records: Sequence[ClipRecord], vae, buckets: Sequence[Bucket], out_dir: str | Path,
                       shard_size: int = 256, *, fps: float = 16, batch_size: int = 1, num_workers: int = 0,
                       dtype: torch.dtype = torch.float32) -> CacheReport:
    """Encode every clip with ``vae`` (``vae.encode``: normalised latents, no_grad, eval mode) into ``out_dir``.

    Clips are assigned with ``assign_bucket(record, buckets, fps)``, decoded by ``VideoClipDataset`` (with
    ``num_workers`` loader processes) and encoded ``batch_size`` at a time within a bucket; latents are stored
    in ``dtype``, ``shard_size`` clips per shard. Clips already cached with the same bucket are skipped; bad
    files are logged and listed in the report, never fatal.
    """
    _check_unique(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / LATENT_INDEX
    index = _read_json(index_path, {})
    assignments = assign_buckets(records, buckets, fps)
    report = CacheReport(no_bucket=[r.id for r, b in zip(records, assignments) if b is None])
    todo = []
    for i, (record, bucket) in enumerate(zip(records, assignments)):
        if bucket is None:
            continue
        if index.get(record.id, {}).get("bucket") == bucket.as_list():
            report.skipped.append(record.id)
        else:
            todo.append(i)
    todo.sort(key=lambda i: (assignments[i], i))  # one bucket after another, so batches share a shape
    writer = _ShardWriter(out_dir, "latents", shard_size, index, lambda: _write_json(index_path, index))
    dataset = VideoClipDataset(records, assignments, fps)
    was_training = vae.training
    vae.eval()
    try:
        _encode_all(dataset, todo, vae, writer, report, batch_size, num_workers, dtype)
        writer.flush()
    finally:
        vae.train(was_training)
    _log_report("latent", report)
    return report


def _encode_all(dataset: VideoClipDataset, todo: list[int], vae, writer: _ShardWriter, report: CacheReport,
                batch_size: int, num_workers: int, dtype: torch.dtype) -> None:
    batch: list[tuple[ClipRecord, Bucket, torch.Tensor]] = []

    def flush() -> None:
        latents = _encode_batch(vae, [video for _, _, video in batch])
        for (record, bucket, _), z in zip(batch, latents):
            writer.add(record.id, z.to(dtype), {"bucket": bucket.as_list(), "caption": record.caption})
            report.cached.append(record.id)
        batch.clear()

    for i, item, reason in _loaded(dataset, todo, num_workers):
        record, bucket = dataset.records[i], dataset.buckets[i]
        if item is None:
            report.bad[record.path] = reason
            continue
        if batch and (batch[0][1] != bucket or len(batch) >= batch_size):
            flush()
        batch.append((record, bucket, item["video"]))
    if batch:
        flush()


def _log_report(kind: str, report: CacheReport) -> None:
    logger.info("%s cache: %d written, %d already cached, %d bad files, %d clips too short for every bucket",
                kind, len(report.cached), len(report.skipped), len(report.bad), len(report.no_bucket))
    for path, reason in report.bad.items():
        logger.warning("%s cache skipped %s: %s", kind, path, reason)


# ---------------------------------------------------------------------------------------------- text


def build_text_cache(records: Sequence[ClipRecord], encoder, tokenizer, out_dir: str | Path, text_len: int = 512,
                     *, batch_size: int = 16, shard_size: int = 4096) -> CacheReport:
    """Encode every caption with ``encode_prompts(encoder, tokenizer, captions, text_len)`` into ``out_dir``,
    plus the encoding of "" once. Clips already cached with the same caption are skipped."""
    _check_unique(records)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / TEXT_INDEX
    index = _read_json(index_path, {"text_len": text_len, "items": {}})
    if index["text_len"] != text_len:
        raise ValueError(f"{index_path} was built with text_len={index['text_len']}, not {text_len}; use that "
                         "text_len or a new cache folder.")
    items = index["items"]
    report = CacheReport()
    todo = []
    for record in records:
        if items.get(record.id, {}).get("caption") == record.caption:
            report.skipped.append(record.id)
        else:
            todo.append(record)
    writer = _ShardWriter(out_dir, "text", shard_size, items, lambda: _write_json(index_path, index))
    was_training = encoder.training
    encoder.eval()
    try:
        if not (out_dir / TEXT_EMPTY).is_file():
            _save_tensors({"empty": encode_prompts(encoder, tokenizer, [""], text_len)[0].cpu()}, out_dir / TEXT_EMPTY)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for record, ctx in zip(chunk, encode_prompts(encoder, tokenizer, [r.caption for r in chunk], text_len)):
                writer.add(record.id, ctx, {"length": ctx.shape[0], "caption": record.caption})
                report.cached.append(record.id)
        writer.flush()
    finally:
        encoder.train(was_training)
    _log_report("text", report)
    return report


# ------------------------------------------------------------------------------------------- dataset


OPEN_SHARDS = 64  # shards a CachedDataset keeps open (each holds a file handle and a memory map)


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:  # maps the one tensor; other shards stay on disk
        return f.get_tensor(key)


class CachedDataset(Dataset):
    """Items ``{"key", "latents" [16, F, h, w], "context" [text_len, dim], "context_empty" [text_len, dim]}``
    read one at a time from a cache folder (``build_latent_cache`` + ``build_text_cache`` into one folder).

    Without a text cache the items carry ``"caption"`` instead of the contexts, for encoding on the fly.
    ``records``: follow their order and ids (index i is ``records[i]``; clips not in the cache get bucket None,
    so a sampler never draws them) — this keeps indices aligned with a ``VideoClipDataset`` over the same
    records. ``buckets[i]`` is item i's bucket, for ``BucketBatchSampler``; :meth:`fit_buckets` serves items at
    shorter buckets than they were cached at.
    """

    def __init__(self, cache_dir: str | Path, records: Sequence[ClipRecord] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        index_path = self.cache_dir / LATENT_INDEX
        if not index_path.is_file():
            raise ValueError(f"{self.cache_dir} holds no latent cache ({LATENT_INDEX}); build one with "
                             "build_latent_cache first.")
        self.latents = _read_json(index_path, {})
        text = _read_json(self.cache_dir / TEXT_INDEX, None)
        self.text = text["items"] if text else None
        self.text_len = text["text_len"] if text else None
        self.context_empty = self._empty() if text else None
        usable = {k for k in self.latents if self.text is None or k in self.text}
        self.keys = [r.id for r in records] if records is not None else [k for k in self.latents if k in usable]
        self.buckets = [Bucket(*self.latents[k]["bucket"]) if k in usable else None for k in self.keys]
        self.served = list(self.buckets)  # the bucket each item is served at (see fit_buckets)
        self._shards: OrderedDict[str, object] = OrderedDict()  # open shards, most recently read last
        missing = sum(b is None for b in self.buckets)
        if missing:
            logger.warning("%d of %d clips are not in the cache %s and will not be drawn", missing, len(self.keys),
                           self.cache_dir)

    def fit_buckets(self, buckets: Sequence[Bucket], whole: bool = False) -> list[Bucket | None]:
        """Each item's bucket among ``buckets``, which the item is served at from now on: its cached bucket, else
        the longest one of the same size with fewer frames, else None (not drawn). ``whole``: an item that fits a
        shorter bucket is served whole, at its cached bucket, for the caller to cut its own window from (the
        trainer's ``window: random``).

        A shorter bucket is served as the first latent frames of the cached clip. Wan's VAE is causal in time (it
        encodes frame 0 alone, then 4 frames per latent frame, each seeing only earlier frames), so the first
        1 + (f - 1) / 4 latent frames of a clip are exactly the encoding of its first f frames: one cache of long
        clips serves a curriculum that starts on short ones, or on images (f = 1).
        """
        wanted = list(dict.fromkeys(buckets))
        served = []
        for cached in self.buckets:
            fit = None
            if cached is not None:
                shorter = [b for b in wanted if (b.height, b.width) == (cached.height, cached.width)
                           and b.frames <= cached.frames]
                fit = max(shorter, key=lambda b: b.frames, default=None)
                if whole and fit is not None:
                    fit = cached
            served.append(fit)
        self.served = served
        return list(served)

    def _read(self, shard: str, key: str) -> torch.Tensor:
        """``key`` from ``shard``, kept open: opening a shard parses its header, which on every read costs a small
        DiT's training step a noticeable share (benchmarks/bench_cache_read.py)."""
        handle = self._shards.pop(shard, None)
        if handle is None:
            handle = safe_open(str(self.cache_dir / shard), framework="pt")
            if len(self._shards) >= OPEN_SHARDS:
                self._shards.popitem(last=False)
        self._shards[shard] = handle
        return handle.get_tensor(key)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # open shards stay in the process that opened them (DataLoader workers reopen)
        state["_shards"] = OrderedDict()
        return state

    def _empty(self) -> torch.Tensor:
        path = self.cache_dir / TEXT_EMPTY
        if not path.is_file():
            raise ValueError(f"{path} is missing; build the text cache again with build_text_cache.")
        return self._padded(_read_tensor(path, "empty"))

    def _padded(self, context: torch.Tensor) -> torch.Tensor:
        out = context.new_zeros(self.text_len, context.shape[-1])  # [text_len, dim], as pad_context pads
        out[: context.shape[0]] = context
        return out

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index]
        if self.buckets[index] is None:
            raise ValueError(f"clip {key!r} is not in the cache {self.cache_dir}; draw indices with "
                             "batch_sampler(), which skips it.")
        latents = self._read(self.latents[key]["shard"], key)
        served = self.served[index]
        if served is not None and served != self.buckets[index]:
            latents = latents[:, : served.latent_frames].clone()  # a shorter bucket: see fit_buckets
        item = {"key": key, "latents": latents}
        if self.text is None:
            item["caption"] = self.latents[key]["caption"]
            return item
        item["context"] = self._padded(self._read(self.text[key]["shard"], key))
        item["context_empty"] = self.context_empty
        return item

    def batch_sampler(self, batch_size: int, seed: int = 0, **kwargs) -> BucketBatchSampler:
        """A ``BucketBatchSampler`` over this cache's buckets (keyword arguments go to it)."""
        return BucketBatchSampler(self.buckets, batch_size, seed, **kwargs)


def cut_windows(latents: torch.Tensor, frames: int, generators: Sequence[torch.Generator],
                anchored: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
    """Windows of ``frames`` latent frames from latents [B, C, F, h, w], each sample's at a uniform random latent
    offset in [0, F - frames] drawn from its own generator (the last F - frames + 1 latent positions all serve as
    starts, the clip's first one included). F == frames returns ``latents`` itself, drawing nothing.

    ``anchored`` [B] (bool): those samples' windows are the clip's first latent frame (a stream's anchor) followed by
    ``frames`` - 1 consecutive frames at an offset in [1, F - frames + 1], drawn the same way."""
    total = latents.shape[2]
    if frames > total:
        raise ValueError(f"a window of {frames} latent frames does not fit clips of {total}; give the stage a shorter "
                         "bucket, or build the cache from longer clips.")
    if frames == total:
        return latents
    if len(generators) != latents.shape[0]:
        raise ValueError(f"cut_windows needs one generator per sample; got {len(generators)} for {latents.shape[0]}.")
    anchored = [False] * latents.shape[0] if anchored is None else [bool(a) for a in anchored]
    starts = [int(torch.randint(0, total - frames + 1, (1,), generator=g)) for g in generators]
    return torch.stack([torch.cat([x[:, :1], x[:, s + 1:s + frames]], dim=1) if a else x[:, s:s + frames]
                        for x, s, a in zip(latents, starts, anchored)])


__all__ = ["build_latent_cache", "build_text_cache", "CachedDataset", "CacheReport", "cut_windows", "LATENT_INDEX",
           "TEXT_INDEX", "TEXT_EMPTY"]
