"""Training step time and tokens/s: with and without activation checkpointing, from a latent cache vs raw video.

    python benchmarks/bench_train.py                 # CPU: a small DiT (4 blocks, dim 256), 17 frames at 128x128
    python benchmarks/bench_train.py --preset demo-small --size 64x64 --frames 17 --batch 16 --sources cache \
        --checkpointing off --first-frame 0.3         # the demo recipe's DiT step (per-token timesteps)
    python benchmarks/bench_train.py --device cuda --preset t2v-1.3B --size 832x480 --frames 81
                                                     # GPU: t2v-1.3B at 480p, 81 frames, bf16 autocast, batch 1

Each configuration runs ``--warmup`` steps, then ``--steps`` timed steps; the median is reported. A step is
everything the trainer does per batch: (for raw video) decode the clip with PyAV as the manifest dataset does,
resize/crop, VAE-encode it and umT5-encode its caption (no DataLoader workers: the decode is on the clock);
then σ/noise, forward, backward, clipping, AdamW and EMA. "from cache" batches hold the latents and text states
already. On a GPU the table adds peak memory and MFU (model FLOPs, counted by
torch.utils.flop_counter on one step without activation checkpointing, over step time and the chip's dense bf16
peak). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ByT5Tokenizer, UMT5EncoderModel

from openwan.configs import DIT_PRESETS, TEXT_ENCODER_PRESETS, VAE_PRESETS
from openwan.data.buckets import Bucket
from openwan.data.dataset import load_clip
from openwan.data.manifest import ClipRecord
from openwan.data.video import save_video
from openwan.models import WanDiT, WanVAE
from openwan.train import Trainer, load_config

# Dense bf16 peak of the chips we report on (NVIDIA spec sheets, SXM parts, no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
SMALL_CPU_DIT = DIT_PRESETS["tiny"].replace(dim=256, ffn_dim=1024, num_heads=4, num_layers=4)
CAPTION = "a red ball rolls across a wooden table, soft light"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class RawClips:
    """Raw batches the way the manifest dataset makes them (openwan.data.dataset.load_clip): decode the mp4 with
    PyAV at 16 fps, resize + center-crop to the bucket, scale to [-1, 1]."""

    def __init__(self, path: Path, frames: int, size: tuple[int, int], batch: int):
        width, height = size
        self.record = ClipRecord(path=str(path), caption=CAPTION, frames=frames, fps=16, width=width, height=height)
        self.bucket = Bucket(frames, height, width)
        self.batch = batch

    def __iter__(self):
        while True:
            videos = [load_clip(self.record, self.bucket, fps=16) for _ in range(self.batch)]  # [3, T, H, W] each
            yield {"video": torch.stack(videos), "caption": [CAPTION] * self.batch}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _encoders(args, device, dit_cfg):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = WanVAE(VAE_PRESETS["tiny" if args.preset == "small" else "wan2.1"]).to(device, dtype).eval()
    text_preset = "tiny" if dit_cfg.text_dim == TEXT_ENCODER_PRESETS["tiny"].dim else "umt5-xxl"
    encoder = UMT5EncoderModel(TEXT_ENCODER_PRESETS[text_preset].to_hf()).to(device, dtype).eval()
    return vae.requires_grad_(False), encoder.requires_grad_(False), ByT5Tokenizer()


def _cached_batch(dit_cfg, args) -> dict:
    """What a latent + text cache hands the trainer (random values: speed does not depend on them)."""
    g = torch.Generator().manual_seed(0)
    width, height = args.size
    latent = (args.batch, dit_cfg.in_dim, 1 + (args.frames - 1) // 4, height // 8, width // 8)
    return {"latents": torch.randn(latent, generator=g),
            "context": torch.randn(args.batch, dit_cfg.text_len, dit_cfg.text_dim, generator=g),
            "context_empty": torch.randn(2, dit_cfg.text_dim, generator=g)}


def measure(args, device, checkpointing: bool, source: str, clip: Path, flops_holder: dict) -> dict:
    dit_cfg = SMALL_CPU_DIT if args.preset == "small" else DIT_PRESETS[args.preset]
    cfg = load_config(None, [f"output_dir={args.out}", "log.progress=false", "checkpoint.every=0",
                             f"activation_checkpointing={str(checkpointing).lower()}", f"device={device}",
                             "ema.decay=0.999", "text_dropout=0.1", "timesteps.mode=logit_normal",
                             f"timesteps.first_frame={args.first_frame}"])
    torch.manual_seed(0)
    with torch.device(device):
        dit = WanDiT(dit_cfg)
    cached = _cached_batch(dit_cfg, args)
    if source == "raw":
        vae, encoder, tokenizer = _encoders(args, device, dit_cfg)
        trainer = Trainer(cfg, dit=dit, vae=vae, text_encoder=encoder, tokenizer=tokenizer, data=None)
        batches = iter(RawClips(clip, args.frames, args.size, args.batch))
    else:
        trainer = Trainer(cfg, dit=dit, data=None)
        batches = iter(lambda: cached, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        metrics = trainer.train_step(next(batches))
        trainer.step += 1
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    tokens = metrics["tokens_per_s"] * metrics["step_time"]
    row = {"source": source, "activation_checkpointing": checkpointing, "step_s": step, "tokens": round(tokens),
           "tokens_per_s": tokens / step, "latent_shape": metrics["latent_shape"], "batch": args.batch}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    if "flops" not in flops_holder and not checkpointing:  # model FLOPs: forward + backward, no recompute
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(cached)
        flops_holder["flops"] = counter.get_total_flops()
    if "flops" in flops_holder and source == "cache":
        row["tflop_per_step"] = flops_holder["flops"] / 1e12
        row["achieved_tflops"] = flops_holder["flops"] / step / 1e12
        if device.type == "cuda":
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            if peak:
                row["mfu"] = row["achieved_tflops"] / peak
    del trainer, dit
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="small", help="small (CPU default) or a DiT preset, e.g. t2v-1.3B")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 128x128 on CPU, 832x480 otherwise)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip, 4n+1 (default 17 / 81)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sources", default=None,
                        help="comma list of cache, raw (default both on CPU, cache elsewhere: raw builds umT5-XXL)")
    parser.add_argument("--checkpointing", default="off,on", help="comma list of off, on")
    parser.add_argument("--first-frame", type=float, default=0.0,
                        help="timesteps.first_frame: this fraction of samples has its first latent frame clean, so "
                             "the DiT takes per-token timesteps (the demo recipe's 0.3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    small = args.preset == "small"
    args.size = tuple(int(v) for v in (args.size or ("128x128" if small else "832x480")).split("x"))
    args.frames = args.frames or (17 if small else 81)
    args.sources = args.sources or ("cache,raw" if small else "cache")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows, flops = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        args.out = tmp
        clip = Path(tmp) / "clip.mp4"
        g = torch.Generator().manual_seed(0)
        width, height = args.size
        save_video(torch.rand(args.frames, height, width, 3, generator=g), clip, fps=16)
        for checkpointing in [c == "on" for c in args.checkpointing.split(",")]:
            for source in args.sources.split(","):
                row = measure(args, device, checkpointing, source, clip, flops)
                rows.append(row)
                extra = "".join(f"  {k} {row[k]:.3g}" for k in ("achieved_tflops", "peak_memory_gb", "mfu") if k in row)
                print(f"{source:5s} checkpointing={'on ' if checkpointing else 'off'} step {row['step_s']:.3f} s  "
                      f"{row['tokens_per_s']:9.0f} tokens/s  latents {row['latent_shape']}{extra}", flush=True)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
