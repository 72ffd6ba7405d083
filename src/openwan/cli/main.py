"""``openwan <command>``. User errors (ValueError) are printed as one line and exit with status 2."""

from __future__ import annotations

import argparse
import logging
import sys

from openwan.cli import calibrate_cache as calibrate_cache_cmd
from openwan.cli import convert as convert_cmd
from openwan.cli import curate as curate_cmd
from openwan.cli import data as data_cmd
from openwan.cli import eval as eval_cmd
from openwan.cli import generate as generate_cmd
from openwan.cli import stream as stream_cmd
from openwan.cli import train as train_cmd
from openwan.cli import train_vae as train_vae_cmd

COMMANDS = {"generate": generate_cmd, "train": train_cmd, "train-vae": train_vae_cmd, "data": data_cmd,
            "curate": curate_cmd, "eval": eval_cmd, "convert": convert_cmd, "calibrate-cache": calibrate_cache_cmd,
            "stream": stream_cmd}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openwan", description="Wan video generation models: an open implementation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


# Loggers that speak when torchao is imported (transformers imports it wherever it is installed): its CUDA-only
# extensions missing from CPU wheels, and torch's note on the enums torchao registers. Neither concerns a user.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: list[str] | None = None) -> int:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # positionals after an option (`curate run IN --out D k=v`) go to a command that takes them anywhere
        if not hasattr(args, "extra_items") or any(item.startswith("-") for item in extra):
            parser.parse_args(argv)  # argparse's own usage error, exit 2
        args.extra_items = extra
    try:
        return int(args.run(args) or 0)
    except ValueError as err:  # user errors: one sentence, no traceback
        print(f"openwan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openwan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
