"""Helpers shared by the CLI commands."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, bf16 or fp16.") from None


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTH*HEIGHT`` (or ``WxH``) -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().replace("x", "*").split("*"))
    except ValueError:
        raise ValueError(f"--size must look like WIDTH*HEIGHT (e.g. 832*480); got {text!r}.") from None
    return width, height
