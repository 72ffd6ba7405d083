"""Helpers shared by the CLI commands."""

from __future__ import annotations

import math
import os

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


def check_number(flag: str, value: float | None, low: float, high: float, *, low_open: bool = False,
                 example: str = "") -> None:
    """Refuse a non-finite ``value`` or one outside [low, high] (``(low, high]`` with ``low_open``) in one
    sentence that names ``flag``; ``None`` (not given) passes."""
    if value is None:
        return
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        hint = f" (e.g. {flag} {example})" if example else ""
        raise ValueError(f"{flag} {value:g} is out of range; give a finite number in {interval}{hint}.")


def check_device(name: str) -> torch.device:
    """``--device`` as a torch.device that exists on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu "
                             "(or leave --device out).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered "
                             "from 0; pick one of them.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: this machine has no Apple GPU; use --device cpu.")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: openwan runs on cpu, cuda or mps; use one of those.")
    return device


def device_memory_bytes(device: torch.device) -> int:
    """What ``device`` holds in all: a GPU's memory, or the machine's RAM for the CPU (and Apple's unified memory)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
