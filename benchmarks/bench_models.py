"""Our DiT forward and VAE decode against diffusers', same weights, same process, alternating runs.

    python benchmarks/bench_models.py                 # CPU configuration of docs/benchmarks.md
    python benchmarks/bench_models.py --device cuda --full   # t2v-1.3B, 480x832, 81 frames, bf16 (GPU)
    python benchmarks/bench_models.py --memory        # peak memory of decode_stream vs diffusers' decode
    python benchmarks/bench_models.py --vae22 --reps 1   # the released Wan2.2 VAE, 5 frames at 128x128 (CPU)

Prints seconds (median of --reps alternating runs), ours/theirs time ratios and achieved GFLOP/s. On CPU it also
times the demo VAE with its CPU conv choices (3D convs straight to oneDNN, small convs' weights in channels-last
layout; ours) against torch's own choice with the ordinary layout (same code and weights), also one latent frame at a
time as the streaming decoder runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from openwan.checkpoints import keymaps
from openwan.configs import VAE_PRESETS, DiTConfig, VAEConfig
from openwan.models import WanDiT, WanVAE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def compare(name: str, ours, theirs, device, reps: int, peer: str = "diffusers", warmup: bool = True) -> dict:
    if warmup:  # allocator, kernels, RoPE tables; runs of minutes each (--vae22 on CPU) skip it
        ours(), theirs()
    t_ours, t_theirs = [], []
    for _ in range(reps):  # alternate so drift (thermal, other load) hits both alike
        t_ours.append(_time(ours, device))
        t_theirs.append(_time(theirs, device))
    flops = _flops(ours)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    row = {"what": name, "peer": peer, "ours_s": mo, "peer_s": mt, "ratio": mo / mt, "gflop": flops / 1e9,
           "ours_gflops": flops / mo / 1e9, "peer_gflops": flops / mt / 1e9}
    print(f"{name:34s} ours {mo:8.3f} s  {peer} {mt:8.3f} s  ours/theirs {mo / mt:5.3f}  "
          f"{flops / 1e9:9.1f} GFLOP  ours {flops / mo / 1e9:7.1f} GFLOP/s  {peer} {flops / mt / 1e9:7.1f} GFLOP/s",
          flush=True)
    return row


def dit_pair(cfg: DiTConfig, device, dtype):
    ours = WanDiT(cfg).to(device=device, dtype=dtype).eval()
    params = {k: v for k, v in keymaps.dit_config_to_diffusers(cfg).items() if not k.startswith("_")}
    theirs = WanTransformer3DModel(**params)
    theirs.load_state_dict(keymaps.dit_official_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs.to(device=device, dtype=dtype).eval()


def bench_dit(cfg: DiTConfig, latent: tuple[int, int, int], device, dtype, reps: int) -> dict:
    ours, theirs = dit_pair(cfg, device, dtype)
    f, h, w = latent
    x = torch.randn(1, cfg.in_dim, f, h, w, device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    with torch.no_grad():
        return compare(f"DiT forward {cfg.dim}d x{cfg.num_layers} {f}x{h}x{w}", lambda: ours(x, t, ctx),
                       lambda: theirs(x, t, ctx, return_dict=False)[0], device, reps)


def vae_pair(cfg: VAEConfig, device, dtype):
    ours = WanVAE(cfg).to(device=device, dtype=dtype).eval()
    params = {k: v for k, v in keymaps.vae_config_to_diffusers(cfg).items() if not k.startswith("_")}
    theirs = AutoencoderKLWan(**params)
    theirs.load_state_dict(keymaps.vae_official_to_diffusers(ours.state_dict(), cfg), strict=True)
    return ours, theirs.to(device=device, dtype=dtype).eval()


def bench_vae(cfg: VAEConfig, latent: tuple[int, int, int], device, dtype, reps: int, batch: int = 1,
              label: str = "", warmup: bool = True) -> list[dict]:
    """Decode of a ``latent`` (frames, height, width) and encode of the clip it stands for, ``batch`` at once."""
    ours, theirs = vae_pair(cfg, device, dtype)
    f, h, w = latent
    z = torch.randn(batch, cfg.z_dim, f, h, w, device=device, dtype=dtype)
    s = cfg.spatial_compression
    x = torch.rand(batch, 3, 1 + 4 * (f - 1), s * h, s * w, device=device, dtype=dtype) * 2 - 1
    mean = torch.tensor(cfg.latents_mean, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    name = f"{label}VAE %s {batch}x{f}x{h}x{w} latent"
    with torch.no_grad():
        return [compare(name % "decode", lambda: ours.decode(z),
                        lambda: theirs.decode(z * std + mean, return_dict=False)[0], device, reps, warmup=warmup),
                compare(name % "encode", lambda: ours.encode(x),
                        lambda: theirs.encode(x, return_dict=False)[0].mode(), device, reps, warmup=warmup)]


def bench_vae_layout(cfg: VAEConfig, frames: int, size: int, batch: int, reps: int, label: str = "demo",
                     train: bool = True) -> list[dict]:
    """Our VAE on CPU with its conv choices (the defaults: 3D convs straight to oneDNN,
    ``openwan.models.vae_layers.use_onednn_conv3d``, small convs' weights in channels-last layout,
    ``cpu_conv_weight``) against torch's own choice with the ordinary layout, same weights: a training step (encode,
    decode, squared error, backward), as ``openwan train-vae --stage 2`` takes on the demo VAE, an encode without
    gradients, as building a latent cache, and a decode one latent frame at a time (batch 1), as the stream's."""
    from openwan.models import vae_layers as vae_module

    model = WanVAE(cfg)
    x = torch.rand(batch, 3, frames, size, size) * 2 - 1

    def train_step():
        model.zero_grad(set_to_none=True)
        mu, _ = model.encode_moments(x)
        (model.decode(model.normalize(mu)) - x).square().mean().backward()

    def layout(on: bool, fn):
        def run():
            vae_module.CPU_CHANNELS_LAST = vae_module.CPU_ONEDNN_CONV3D = on
            try:
                fn()
            finally:
                vae_module.CPU_CHANNELS_LAST = vae_module.CPU_ONEDNN_CONV3D = True
        return run

    z = model.normalize(model.encode_moments(x[:1])[0]).detach()  # [1, C, F, h, w]

    def stream_decode():
        cache = vae_module.FeatureCache()
        for k in range(z.shape[2]):
            cache.next_chunk()
            model.decode_chunk(model.decoder_input(z[:, :, k:k + 1]), cache)

    name = f"{label} VAE %s {batch}x{frames}x{size}x{size}, our CPU conv choices vs torch's"
    cpu, peer = torch.device("cpu"), "torch's choice"
    rows = [compare(name % "train step", layout(True, train_step), layout(False, train_step), cpu, reps, peer)
            ] if train else []
    with torch.no_grad():
        rows.append(compare(name % "encode", layout(True, lambda: model.encode(x)),
                            layout(False, lambda: model.encode(x)), cpu, reps, peer))
        rows.append(compare(f"{label} VAE decode 1x{frames}x{size}x{size} one latent frame at a time, our CPU conv "
                            "choices vs torch's", layout(True, stream_decode), layout(False, stream_decode), cpu,
                            reps, peer))
    return rows


# ----------------------------------------------------------------------------------- peak memory


def _memory_child(which: str, frames: int, size: int) -> None:
    """Runs in a fresh process: decode once, print peak RSS growth (MiB) over the loaded model."""
    torch.manual_seed(0)
    cfg = VAEConfig()
    latent_t = 1 + (frames - 1) // 4
    z = torch.randn(1, 16, latent_t, size // 8, size // 8)
    if which == "ours":
        model = WanVAE(cfg).eval()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            n = sum(chunk.shape[2] for chunk in model.decode_stream(z))  # chunks are consumed, then dropped
    else:
        model = AutoencoderKLWan().eval()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            n = model.decode(z, return_dict=False)[0].shape[2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"which": which, "frames": n, "peak_mib": (peak - base) / 1024}))


def bench_memory(size: int) -> list[dict]:
    rows = []
    for frames in (9, 17, 33, 65):
        row = {"frames": frames}
        for which in ("ours", "diffusers"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", which, str(frames), str(size)],
                                 check=True, capture_output=True, text=True).stdout
            row[which] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
        print(f"decode {frames:3d} frames {size}x{size}: decode_stream peak +{row['ours']:7.1f} MiB   "
              f"diffusers decode peak +{row['diffusers']:7.1f} MiB", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="t2v-1.3B at 480x832, 81 frames, bf16 (GPU)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="peak memory of streaming decode vs diffusers")
    parser.add_argument("--memory-size", type=int, default=64, help="pixel size of the memory benchmark")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--vae-only", action="store_true", help="skip the DiT rows")
    parser.add_argument("--vae22", action="store_true", help="only the released Wan2.2 VAE (160/256 wide, 48 "
                        "latent channels) on 5 frames at 128x128, no warm-up run")
    args = parser.parse_args()
    if args.memory_child:
        which, frames, size = args.memory_child
        return _memory_child(which, int(frames), int(size))
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.memory:
        bench_memory(args.memory_size)
        return
    if args.vae22:
        bench_vae(VAE_PRESETS["wan2.2"], (2, 8, 8), device, torch.float32, args.reps, label="Wan2.2 ", warmup=False)
        return
    if args.full:
        from openwan.configs import DIT_PRESETS

        dtype = torch.bfloat16
        bench_dit(DIT_PRESETS["t2v-1.3B"], (21, 60, 104), device, dtype, args.reps)
        bench_vae(VAEConfig(), (21, 60, 104), device, dtype, args.reps)
        return
    if not args.vae_only:
        bench_dit(DiTConfig(dim=512, num_heads=4, num_layers=8, ffn_dim=2048), (5, 32, 32), device, torch.float32,
                  args.reps)
    bench_vae(VAEConfig(), (3, 8, 8), device, torch.float32, args.reps)
    # the bundled demo model's VAE on a batch of its 17-frame 64x64 clips: what building its latent cache does
    bench_vae(VAE_PRESETS["demo"], (5, 8, 8), device, torch.float32, args.reps, batch=16, label="demo ")
    if device.type == "cpu":  # the weight layout only matters to oneDNN's CPU kernels
        bench_vae_layout(VAE_PRESETS["demo"], 9, 64, 4, args.reps)
        bench_vae_layout(VAEConfig(), 9, 64, 1, args.reps, label="released", train=False)  # its convs keep the layout


if __name__ == "__main__":
    main()
