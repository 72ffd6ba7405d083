"""``openwan train-vae``: train the Wan2.1 VAE in the paper's three stages from a clip manifest, configured like
``openwan train`` (a YAML/TOML file plus ``field.path=value`` overrides) or by flags that set the same fields."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from openwan.configio import apply_overrides, read_config_file, write_yaml

HELP = "train the Wan2.1 VAE: 2D image VAE (stage 1), inflated 3D causal VAE (2), GAN fine-tune (3)"
EPILOG = """examples:
  openwan train-vae --stage 1 --manifest clips.jsonl --out out/vae1 --size 256 --steps 20000
  openwan train-vae --stage 2 --manifest clips.jsonl --out out/vae2 --init out/vae1/image_vae.pth
  openwan train-vae --stage 3 --manifest clips.jsonl --out out/vae3 --init out/vae2/Wan2.1_VAE.pth --gan-start 2000
  openwan train-vae --stage 2 --manifest clips.jsonl --out out/vae-dec --init out/vae2/Wan2.1_VAE.pth --freeze-encoder
  openwan train-vae --config vae.yaml lr=2e-4 data.batch_size=8 --print-config

A config file holds the fields of openwan.train.VAETrainConfig (stage, steps, lr, ..., model: {preset, init,
decoder_dim}, data: {manifest, size, frames, fps, batch_size, num_workers}, output_dir, resume); each flag sets
one of them (shown in its help), and FIELD=VALUE overrides come last. Stage 1 writes image_vae.pth (+ .json);
stages 2 and 3 write Wan2.1_VAE.pth in the official layout and Wan2.1_VAE.json beside it with the latent mean/std
measured on the data (--freeze-encoder keeps the --init VAE's: its latents do not change, so a DiT trained on them
still fits the new decoder). Checkpoints are step-NNNNNNNN folders in the output folder; --resume continues from the
newest. No perceptual network is downloaded: pass local VGG16/AlexNet weights with --perceptual (torchvision or
lpips files, optionally the LPIPS heads), else training says so and runs without."""

# flag destination -> config field (dotted path); a flag left out leaves the field to the file or its default
FIELDS = {
    "stage": "stage", "manifest": "data.manifest", "out": "output_dir", "init": "model.init",
    "preset": "model.preset", "size": "data.size", "frames": "data.frames", "fps": "data.fps",
    "batch_size": "data.batch_size", "workers": "data.num_workers", "steps": "steps", "lr": "lr",
    "warmup_steps": "warmup_steps", "min_lr_ratio": "min_lr_ratio", "grad_clip": "grad_clip",
    "l1_weight": "l1_weight", "l2_weight": "l2_weight", "kl_weight": "kl_weight", "colour_weight": "colour_weight",
    "perceptual": "perceptual_weights", "gan_start": "gan_start", "gan_weight": "gan_weight",
    "gan_adaptive": "gan_adaptive", "disc_dim": "disc_dim", "device": "device", "precision": "precision",
    "seed": "seed", "save_every": "save_every", "keep_last": "keep_last", "log_every": "log_every",
    "freeze_encoder": "freeze_encoder", "decoder_dim": "model.decoder_dim", "resume": "resume",
    "fresh_3d": "model.fresh_3d", "per_frame_start": "model.per_frame", "decode_noise": "decode_noise",
}


def add_parser(sub) -> None:
    p = sub.add_parser("train-vae", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="VAE training config (.yaml, .yml or .toml)")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="config overrides, e.g. lr=2e-4 data.size=128 (values are read as YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--stage", type=int, choices=[1, 2, 3], help="stage (1, 2 or 3)")
    p.add_argument("--manifest", help="data.manifest: clips and images (.jsonl or .parquet manifest)")
    p.add_argument("--out", help="output_dir: checkpoints, metrics.jsonl and the trained VAE")
    p.add_argument("--init", help="model.init: stage 2: the stage-1 image_vae.pth; stage 3: the stage-2 "
                                  "Wan2.1_VAE.pth; stage 1: continue from an image_vae.pth")
    p.add_argument("--preset", help="model.preset: VAE architecture of a fresh stage 1 (wan2.1, tiny, demo) or of "
                                    "--fresh-3d (also demo-22: 4x16x16 patchified residual, demo-dcae: 4x32x32)")
    p.add_argument("--size", type=int, help="data.size: square crop side in pixels (default 256; stages 2-3: 128)")
    p.add_argument("--frames", type=int, help="data.frames: frames per clip, 4n+1 (default 1; stages 2-3: 5)")
    p.add_argument("--fps", type=float, help="data.fps: frame rate clips are sampled at (default 16)")
    p.add_argument("--batch-size", type=int, help="data.batch_size (default 4)")
    p.add_argument("--workers", type=int, help="data.num_workers: data loading processes (default 2)")
    p.add_argument("--steps", type=int, help="steps (default 1000)")
    p.add_argument("--lr", type=float, help="lr: peak learning rate (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, help="warmup_steps (default 0)")
    p.add_argument("--min-lr-ratio", type=float,
                   help="min_lr_ratio: cosine-decay the lr after warm-up to lr × this at the last step (default 1: "
                        "constant)")
    p.add_argument("--grad-clip", type=float, help="grad_clip: max gradient norm, 0 disables (default 1)")
    p.add_argument("--l1-weight", type=float, help="l1_weight (default 3)")
    p.add_argument("--l2-weight", type=float, help="l2_weight: mean squared error weight (default 0: L1 only)")
    p.add_argument("--kl-weight", type=float, help="kl_weight (default 3e-6)")
    p.add_argument("--colour-weight", type=float,
                   help="colour_weight: latent colour probe weight: the posterior mean must carry each latent cell's "
                        "mean colour linearly, which keeps the colour of flat areas (default 0)")
    p.add_argument("--perceptual", nargs="*", metavar="FILE",
                   help="perceptual_weights: local perceptual network weights (VGG16/AlexNet backbone, optionally "
                        "LPIPS heads)")
    p.add_argument("--gan-start", type=int, help="gan_start: stage 3: step from which the GAN loss applies")
    p.add_argument("--gan-weight", type=float, help="gan_weight (default 0.5)")
    p.add_argument("--no-adaptive-gan", dest="gan_adaptive", action="store_false",
                   help="gan_adaptive=false: stage 3: use --gan-weight as a fixed weight")
    p.add_argument("--disc-dim", type=int, help="disc_dim: stage 3: discriminator base width (default 64)")
    p.add_argument("--device", help="device: cuda, cuda:1, cpu or auto (default: cuda when available)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="precision (default auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--save-every", type=int, help="save_every: steps between checkpoints, 0: at the end (default 500)")
    p.add_argument("--keep-last", type=int, help="keep_last: checkpoints kept (default 2)")
    p.add_argument("--log-every", type=int, help="log_every: steps between log lines (default 10)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="freeze_encoder: stages 2-3: train only the decoder of the --init VAE; its latents stay the "
                        "same, so a DiT trained on them keeps working with the new decoder")
    p.add_argument("--decoder-dim", type=int, metavar="N",
                   help="model.decoder_dim: decoder base width: a fresh stage 1 builds its decoder N wide; an --init "
                        "VAE with a narrower decoder is widened to N, coding as before")
    p.add_argument("--resume", action="store_true", help="resume: continue the run in --out from its newest checkpoint")
    p.add_argument("--fresh-3d", action="store_true",
                   help="model.fresh_3d: stage 2 without --init: train a fresh 3D VAE of --preset directly on clips "
                        "(the way to train demo-22 / demo-dcae, which have no 2D image stage)")
    p.add_argument("--per-frame-start", action="store_true",
                   help="model.per_frame: stage 2 with --init a 3D VAE trained on single frames (--frames 1): start "
                        "from its newest-frame taps alone (older temporal taps zeroed, temporal resampling passing "
                        "frames through), so it codes clips frame by frame as an inflated image VAE does")
    p.add_argument("--decode-noise", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="decode_noise: with --freeze-encoder: train the decoder on latents noised to a flow-matching "
                        "level drawn from [LOW, HIGH] (e.g. 0 0.1), decoding the clean clip (LTX-Video's denoising "
                        "decoder)")
    p.set_defaults(run=run)


def resolve_config(args: argparse.Namespace):  # -> openwan.train.VAETrainConfig
    """The config file (if any) with the CLI's device defaults under it, the flags given and the overrides on top."""
    # Loaded on use: openwan.train brings torch and the models, and every other openwan command should start fast.
    from openwan.train.vae_config import VAETrainConfig

    data: dict[str, Any] = {"device": "auto", "precision": "auto"}
    config = getattr(args, "config", None)
    if config is not None:
        data.update(read_config_file(config))
    for dest, field in FIELDS.items():
        if dest in args:
            _set(data, field.split("."), getattr(args, dest))
    cfg = VAETrainConfig.from_dict(apply_overrides(data, getattr(args, "overrides", [])))
    if not getattr(args, "print_config", False):
        for field, flag in (("data.manifest", "--manifest"), ("output_dir", "--out")):
            section, _, name = field.rpartition(".")
            if getattr(getattr(cfg, section) if section else cfg, name) is None:
                raise ValueError(f"train-vae needs {field} (the flag {flag}, or the field in --config).")
    return cfg


def _set(data: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[path[-1]] = list(value) if isinstance(value, tuple) else value


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if getattr(args, "print_config", False):
        print(write_yaml(cfg.to_dict()), end="")
        return 0
    import torch

    from openwan.train.vae_trainer import train_vae

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Subnormal floats appear while a fresh VAE reorganises; on x86 CPUs each takes a slow path that can make a
    # step many times slower. Values below 1.2e-38 become 0.
    torch.set_flush_denormal(True)
    path = train_vae(cfg)
    sidecar = path.with_suffix(".json").name
    what = ("config" if cfg.stage == 1 else "config and the init VAE's latent mean/std" if cfg.freeze_encoder
            else "config and measured latent mean/std")
    print(f"stage {cfg.stage} done: {path} ({what} in {sidecar}); checkpoints and metrics.jsonl are in "
          f"{cfg.output_dir}")
    return 0
