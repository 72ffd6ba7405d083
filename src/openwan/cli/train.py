"""``openwan train --config FILE [field.path=value ...]``: train a DiT from a YAML/TOML config."""

from __future__ import annotations

import argparse

HELP = "train (or fine-tune, or LoRA-tune) a Wan DiT by flow matching from a YAML/TOML config"
EPILOG = """examples:
  openwan train --config train.yaml
  openwan train --config train.yaml optim.lr=1e-4 stages.0.steps=10 lora.rank=16
  openwan train --config train.yaml --print-config

The run resumes from the newest checkpoint in output_dir (resume=auto); resume=never starts fresh and
resume=PATH continues from a given step folder."""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (.yaml, .yml or .toml)")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="config overrides, e.g. optim.lr=1e-4 stages.0.steps=10 (values are read as YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from openwan.train import load_config, train

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train(cfg)
    loss = metrics.get("loss")
    print(f"trained {cfg.total_steps} steps" + (f" (last loss {loss:.4f})" if loss is not None else "")
          + f"; checkpoints, metrics.jsonl and loss_curve.png are in {cfg.output_dir}")
    return 0
