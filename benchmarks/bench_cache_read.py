"""Reading training batches from a latent + text cache: ``CachedDataset`` (shards kept open) against opening the
safetensors shard for every tensor (``safe_open`` parses the shard's header each time).

    python benchmarks/bench_cache_read.py                          # a 1,024-clip cache built here (tiny models)
    python benchmarks/bench_cache_read.py --cache runs/demo-model/cache    # an existing cache, e.g. the recipe's

Both read the same random batches (``--batch`` clips, as the trainer draws them) and time ``dataset[i]`` for every
clip of a batch, then ``collate``; the median per batch is reported.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import ByT5Tokenizer, UMT5EncoderModel

from openwan.configs import TEXT_ENCODER_PRESETS, VAE_PRESETS
from openwan.data.buckets import Bucket
from openwan.data.cache import CachedDataset, _read_tensor, build_latent_cache, build_text_cache
from openwan.data.dataset import collate
from openwan.data.manifest import ClipRecord
from openwan.data.video import save_video
from openwan.models import WanVAE


class ReopeningDataset(CachedDataset):
    """The peer: every tensor read opens its shard afresh."""

    def _read(self, shard: str, key: str) -> torch.Tensor:
        return _read_tensor(self.cache_dir / shard, key)


def build_cache(folder: Path, clips: int) -> Path:
    """``clips`` distinct 17-frame 64x64 clips through a tiny VAE and umT5, in 256-clip shards (the default)."""
    g = torch.Generator().manual_seed(0)
    records = []
    for i in range(clips):
        path = folder / f"clip{i:05d}.mp4"
        save_video(torch.rand(17, 64, 64, 3, generator=g), path, fps=16)
        records.append(ClipRecord(str(path), f"clip number {i}", 17, 16.0, 64, 64))
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    encoder = UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()).eval()
    cache = folder / "cache"
    with torch.no_grad():
        build_latent_cache(records, vae, [Bucket(17, 64, 64)], cache, batch_size=16)
        build_text_cache(records, encoder, ByT5Tokenizer(), cache, text_len=64)
    return cache


def time_batches(dataset: CachedDataset, batches: list[list[int]]) -> float:
    times = []
    for batch in batches:
        start = time.perf_counter()
        collate([dataset[i] for i in batch])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="an existing cache folder (default: build one)")
    parser.add_argument("--clips", type=int, default=1024, help="clips in the cache built here")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or build_cache(Path(tmp), args.clips)
        kept, reopening = CachedDataset(cache), ReopeningDataset(cache)
        rng = random.Random(0)
        batches = [rng.sample(range(len(kept)), args.batch) for _ in range(args.batches)]
        time_batches(kept, batches[:2])  # warm the page cache for both
        ours, peer = time_batches(kept, batches), time_batches(reopening, batches)
    print(f"{len(kept)} clips, batches of {args.batch}: shards kept open {ours * 1e3:.1f} ms/batch, "
          f"opened per read {peer * 1e3:.1f} ms/batch ({peer / ours:.1f}x)")


if __name__ == "__main__":
    main()
