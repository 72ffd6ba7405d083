"""Regional ``torch.compile``: each repeated block of a model compiled in place, not the whole model.

Every WanBlock runs the same code on same-shaped tensors, and torch.compile treats a module's parameters as
inputs, so the first block's graph serves all of them: compile time is one block's, whatever the depth, and
parameter names (the official keys) do not change. The VAE's decoder blocks carry the causal-conv cache between
chunks, whose slot index would make every call a new graph; there the stateless parts are compiled (the
per-frame attention blocks and the RMS norms).
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import torch
from torch import nn

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def cpu_compiler_problem() -> str | None:
    """Why torch.compile cannot build CPU kernels here (one sentence), or None: inductor's CPU code is C++
    compiled against Python's headers, so it needs a C++ compiler and Python.h."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "torch.compile on a CPU needs a C++ compiler (c++ or g++ on PATH); install one, or run without compile."
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return ("torch.compile on a CPU needs Python's headers (Python.h; the python3-dev package); install them, "
                "or run without compile.")
    return None


def check_compile(device: torch.device | str, mode: str | None = None) -> None:
    """A ValueError (one sentence) when blocks cannot be compiled for ``device`` in ``mode``."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(str(m) for m in COMPILE_MODES)}.")
    if torch.device(device).type == "cpu":
        problem = cpu_compiler_problem()
        if problem:
            raise ValueError(problem)


def compiled_regions(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`compile_blocks` compiles in ``model``: a WanDiT's blocks, or a WanVAE decoder's
    attention blocks and RMS norms; a ValueError for anything else."""
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return list(model.blocks)
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "upsamples"):
        from openwan.models.vae import AttentionBlock, RMSNorm

        return [m for m in decoder.modules() if isinstance(m, (AttentionBlock, RMSNorm))]
    raise ValueError(f"compile_blocks takes a WanDiT or a WanVAE; got {type(model).__name__}.")


def compile_blocks(model: nn.Module, mode: str | None = None, dynamic: bool = False) -> nn.Module:
    """Compile each block of ``model`` in place (``Module.compile``) and return ``model``.

    ``mode`` is torch.compile's (None: its default); ``dynamic`` False specialises on shapes (one graph per video
    size, which is what a generation run sees). Compilation happens at the first forward.
    """
    regions = compiled_regions(model)
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(str(m) for m in COMPILE_MODES)}.")
    for module in regions:
        module.compile(mode=mode, dynamic=dynamic)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_blocks` has compiled ``model``'s regions."""
    try:
        regions = compiled_regions(model)
    except ValueError:
        return False
    return bool(regions) and all(getattr(m, "_compiled_call_impl", None) is not None for m in regions)


__all__ = ["COMPILE_MODES", "check_compile", "compile_blocks", "compiled_regions", "cpu_compiler_problem",
           "is_compiled"]
