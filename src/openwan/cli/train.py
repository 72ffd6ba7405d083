"""``openwan train --config FILE [field.path=value ...]``: train a DiT from a YAML/TOML config, on one process or
under ``torchrun``; ``openwan train --export CHECKPOINT OUT``: a checkpoint as a release folder that
``openwan generate`` runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from openwan.cli.common import parse_dtype

HELP = "train (or fine-tune, or LoRA-tune) a Wan DiT by flow matching from a YAML/TOML config"
EPILOG = """examples:
  openwan train --config train.yaml
  openwan train --config train.yaml optim.lr=1e-4 stages.0.steps=10 lora.rank=16
  openwan train --config train.yaml --print-config
  torchrun --nproc-per-node 8 -m openwan train --config train.yaml parallel.cp_ulysses=4   (dp = 8 / 4 = 2)
  openwan train --export runs/t2v/step-00010000 release/ --weights ema --dtype bf16
  openwan train --export runs/t2v release/ --vae Wan2.1_VAE.pth --text-encoder models_t5_umt5-xxl-enc-bf16.pth

The run resumes from the newest checkpoint in output_dir (resume=auto); resume=never starts fresh and
resume=PATH continues from a given step folder. Checkpoints written by any number of processes resume on any
other number. --export writes a release folder in the official layout: OUT/config.json and
OUT/diffusion_pytorch_model.safetensors (the DiT), and the VAE, umT5 encoder and tokenizer the run's config.yaml
names (or --vae / --text-encoder / --tokenizer, for a run trained from a cache); OUT ending in .safetensors
writes the DiT alone (config.json beside it). openwan generate --ckpt-dir OUT runs the folder."""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training config (.yaml, .yml or .toml)")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="config overrides, e.g. optim.lr=1e-4 stages.0.steps=10 (values are read as YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT"),
                   help="write a training checkpoint (a step folder, or a run folder: its newest; written by any "
                        "number of processes) as a release folder (DiT, VAE, text encoder, tokenizer), and exit")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="with --export: the EMA weights (default) or the trained weights")
    p.add_argument("--dtype", default=None, help="with --export: cast the DiT to fp32, bf16 or fp16 (default: float32)")
    p.add_argument("--vae", help="with --export: the VAE weights to ship (default: the run's model.vae)")
    p.add_argument("--text-encoder", help="with --export: the umT5 weights to ship (default: model.text_encoder)")
    p.add_argument("--tokenizer", help="with --export: the tokenizer folder, or byt5 (default: model.tokenizer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.export:
        return _export(args)
    if not args.config:
        raise ValueError("give a training config with --config FILE (or --export CHECKPOINT OUT).")
    import logging

    import torch.distributed as dist
    import yaml

    from openwan.parallel.mesh import close_distributed
    from openwan.train import load_config, train

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    joined = dist.is_initialized()  # a caller that set up the process group also takes it down
    rank = dist.get_rank() if joined else _env_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        metrics = train(cfg)  # joins the torchrun job, if there is one, and builds the mesh from cfg.parallel
    finally:
        if not joined:
            close_distributed(wait=False)  # a failed peer would leave a barrier waiting
    loss = metrics.get("loss")
    if rank == 0:
        print(f"trained {cfg.total_steps} steps" + (f" (last loss {loss:.4f})" if loss is not None else "")
              + f"; checkpoints, metrics.jsonl and loss_curve.png are in {cfg.output_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from openwan.train.checkpoint import export_dit
    from openwan.train.export import export_release

    if args.config or args.overrides or args.print_config:
        raise ValueError("--export takes only CHECKPOINT OUT (and --weights / --dtype / --vae / --text-encoder / "
                         "--tokenizer); drop --config and overrides.")
    checkpoint, out = args.export
    dtype = parse_dtype(args.dtype) if args.dtype else None
    if Path(out).suffix == ".safetensors":
        if args.vae or args.text_encoder or args.tokenizer:
            raise ValueError(f"{out} names one DiT file; give a folder as OUT to export a release with --vae, "
                             "--text-encoder or --tokenizer.")
        file = export_dit(checkpoint, out, weights=args.weights, dtype=dtype)
        print(f"wrote the {args.weights} weights of {checkpoint} to {file} (+ config.json)")
        return 0
    folder = export_release(checkpoint, out, weights=args.weights, dtype=dtype, vae=args.vae,
                            text_encoder=args.text_encoder, tokenizer=args.tokenizer)
    print(f"wrote the {args.weights} weights of {checkpoint} with its VAE, text encoder and tokenizer to {folder}; "
          f"run it with: openwan generate --ckpt-dir {folder}")
    return 0


def _env_rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))
