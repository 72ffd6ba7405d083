"""Exponential moving average of the trained parameters, kept in float32 whatever the parameters' dtype.

Under FSDP2 the parameters are sharded DTensors and so is the shadow: each rank averages its own shard, and
:meth:`EMA.full_state_dict` gathers whole tensors for a release file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


class EMA:
    """shadow ← decay·shadow + (1 − decay)·param after every optimizer step, for the named parameters given.

    Only the parameters that train are tracked (for a LoRA run: the adapter weights), so the shadow costs one
    float32 copy of what is trained (of this rank's shard, under FSDP).
    """

    def __init__(self, params: Mapping[str, nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay!r}.")
        self.decay = decay
        self.params = dict(params)
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}  # fp32 copies

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        current = [self.params[n].detach().float() for n in names]
        torch._foreach_lerp_(shadow, current, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow as it is held (sharded DTensors under FSDP: what a distributed checkpoint saves)."""
        return dict(self.shadow)

    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Whole float32 tensors on the CPU. Sharded shadows are all-gathered one tensor at a time, so every rank
        must call this; ranks with ``keep`` False drop each gathered tensor at once and get {}."""
        out = {}
        for name, value in self.shadow.items():
            full = value.full_tensor() if isinstance(value, DTensor) else value
            if keep:
                out[name] = full.cpu()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the shadow from whole tensors, or from tensors sharded like it."""
        missing, unexpected = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"the EMA state does not match the trained parameters ({len(missing)} missing, {len(unexpected)} "
                "unexpected); resume with the same model and LoRA settings as the checkpoint."
            )
        for name, value in state.items():
            shadow = self.shadow[name]
            if isinstance(shadow, DTensor) and not isinstance(value, DTensor):
                # Every rank holds the whole tensor (read from one file): each keeps its shard, nothing is sent.
                value = distribute_tensor(value.to(shadow.device, shadow.dtype), shadow.device_mesh,
                                          shadow.placements, src_data_rank=None)
            shadow.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the model with the EMA weights inside the block; the live weights come back exactly after it."""
        with torch.no_grad():
            backup = {n: p.detach().clone() for n, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(backup[name])
