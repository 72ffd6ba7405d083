"""Exponential moving average of the trained parameters, kept in float32 whatever the parameters' dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn


class EMA:
    """shadow ← decay·shadow + (1 − decay)·param after every optimizer step, for the named parameters given.

    Only the parameters that train are tracked (for a LoRA run: the adapter weights), so the shadow costs one
    float32 copy of what is trained.
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
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"the EMA state does not match the trained parameters ({len(missing)} missing, {len(unexpected)} "
                "unexpected); resume with the same model and LoRA settings as the checkpoint."
            )
        for name, value in state.items():
            self.shadow[name].copy_(value)

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
