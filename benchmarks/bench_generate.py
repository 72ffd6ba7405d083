"""End-to-end generation: our pipeline against diffusers' WanPipeline with the same weights, seconds per stage.

    python benchmarks/bench_generate.py                  # CPU: small fixed config, one run per variant
    python benchmarks/bench_generate.py --device cuda --full   # GPU: t2v-1.3B, 832x480, 81 frames, 50 steps

Each variant runs in its own process (so peak memory is its own): ours with CFG as a batch of 2, ours with the
two guidance passes one after another, and diffusers. Random weights are fine for speed and memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from openwan.checkpoints import keymaps
from openwan.configs import DIT_PRESETS, VAE_PRESETS, DiTConfig, TextEncoderConfig

SMALL = {
    "dit": DiTConfig(dim=512, num_heads=4, num_layers=8, ffn_dim=2048, text_dim=512),
    "text": TextEncoderConfig(vocab_size=384, dim=512, dim_attn=512, ffn_dim=1024, num_heads=8, num_layers=4),
    "size": (128, 128), "frames": 17, "steps": 10,
}
FULL = {
    "dit": DIT_PRESETS["t2v-1.3B"],
    "text": TextEncoderConfig(),
    "size": (832, 480), "frames": 81, "steps": 50,
}
PROMPT, NEGATIVE = "a red circle moving to the right over a grey background", "blurry, static"


def _components(setup: dict, device, dtype):
    from transformers import ByT5Tokenizer, UMT5EncoderModel

    from openwan.models import WanDiT, WanVAE

    torch.manual_seed(0)
    with torch.device(device):
        dit = WanDiT(setup["dit"]).to(dtype).eval()
        vae = WanVAE(VAE_PRESETS["wan2.1"]).eval()
        text = UMT5EncoderModel(setup["text"].to_hf()).to(dtype).eval()
    with torch.no_grad():  # a non-zero head so the sampler has work with real numbers
        dit.head.head.weight.normal_(0, 0.02)
    return dit, vae, text, ByT5Tokenizer()


def _run_variant(variant: str, full: bool, device: str) -> dict:
    setup = FULL if full else SMALL
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit, vae, text, tokenizer = _components(setup, device, dtype)
    width, height = setup["size"]
    frames, steps = setup["frames"], setup["steps"]
    latent_shape = (16, (frames - 1) // 4 + 1, height // 8, width // 8)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant.startswith("ours"):
        from openwan.pipelines import WanPipeline

        pipe = WanPipeline(dit, vae, text, tokenizer, device=device, dtype=dtype)
        out = pipe(PROMPT, NEGATIVE, size=(width, height), frame_num=frames, sample_steps=steps, sample_shift=5.0,
                   guide_scale=5.0, latents=noise, cfg_batch=variant == "ours", progress=False)
        timings = out.timings
    else:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

        params = {k: v for k, v in keymaps.dit_config_to_diffusers(dit.cfg).items() if not k.startswith("_")}
        transformer = WanTransformer3DModel(**params)
        transformer.load_state_dict(keymaps.dit_official_to_diffusers(dit.state_dict()))
        dvae = AutoencoderKLWan()
        dvae.load_state_dict(keymaps.vae_official_to_diffusers(vae.state_dict(), vae.cfg))
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
        base = np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1]  # the reference grid, as ours
        set_timesteps = scheduler.set_timesteps
        scheduler.set_timesteps = lambda n, device=None, **kw: set_timesteps(sigmas=base, device=device)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=transformer.to(device, dtype),
                           vae=dvae.to(device), scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=height, width=width, num_frames=frames,
             num_inference_steps=steps, guidance_scale=5.0, latents=noise[None].to(device), output_type="pt",
             max_sequence_length=512)
        timings = {}
    total = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024**2)
    return {"variant": variant, "total_s": total, "per_step_s": timings.get("denoise", float("nan")) / steps,
            "timings": timings, "peak_gb": peak,
            "peak_kind": "GPU allocated" if device.type == "cuda" else "RSS growth"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--variants", default="ours,ours-no-cfg-batch,diffusers")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_variant(args.child, args.full, args.device)))
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--device", args.device]
        cmd += ["--full"] if args.full else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in row["timings"].items())
        print(f"{variant:20s} total {row['total_s']:8.2f} s  peak {row['peak_gb']:6.2f} GB ({row['peak_kind']})"
              + (f"  [{stages}]" if stages else ""), flush=True)
    theirs = next((r for r in rows if r["variant"] == "diffusers"), None)
    if theirs:
        for r in rows:
            if r is not theirs:
                print(f"{r['variant']}: {theirs['total_s'] / r['total_s']:.2f}x the speed of diffusers")


if __name__ == "__main__":
    main()
