"""The optimizer and learning-rate schedule both trainers use: AdamW with weight decay on matrices and kernels only,
linear warm-up then cosine decay, and gradient clipping by the global norm."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openwan.train.config import StageConfig, TrainConfig
from openwan.train.vae_config import VAETrainConfig


def build_adamw(named_params: Iterable[tuple[str, nn.Parameter]], *, lr: float, betas: Sequence[float],
                weight_decay: float, eps: float = 1e-8, keep_scale: tuple[str, ...] = (),
                foreach: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the parameters that require a gradient. Weight decay applies to matrices and convolution kernels;
    biases, norm gains and parameters whose names end in ``keep_scale`` (modulation tables, position tables, the
    VAE's norm gammas) keep their scale. ``foreach``: one kernel per op over all tensors (torch picks it on GPUs but
    loops tensor by tensor on the CPU unless asked)."""
    params = [(n, p) for n, p in named_params if p.requires_grad]

    def decays(name: str, p: nn.Parameter) -> bool:
        return p.ndim >= 2 and not name.endswith(keep_scale)

    groups = [{"params": [p for n, p in params if decays(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps, foreach=foreach)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients to a global norm of at most ``max_norm`` (0: no clipping); returns the norm before.
    Under FSDP the gradients are DTensor shards: their norm is reduced over all ranks (the whole gradient's)."""
    params = list(params)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm if max_norm > 0 else math.inf, norm)
    return float(norm)


def warmup_cosine(k: int, warmup: int, span: int, min_ratio: float) -> float:
    """LR scale of step ``k``: linear warm-up over ``warmup`` steps, then cosine from 1 down to ``min_ratio``,
    reached ``span`` steps after the warm-up (and held beyond)."""
    if k < warmup:
        return (k + 1) / warmup
    progress = min(1.0, (k - warmup) / max(1, span))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def stage_at(cfg: TrainConfig, step: int) -> tuple[StageConfig, int]:
    """The stage that optimizer step ``step`` (0-based) belongs to, and the step's index inside it."""
    for stage in cfg.stages:
        if step < stage.steps:
            return stage, step
        step -= stage.steps
    last = cfg.stages[-1]
    return last, last.steps - 1  # past the end: hold the last step's rate


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The DiT's learning rate at optimizer step ``step`` (0-based, over the whole run): per stage, linear warm-up
    then cosine decay to ``min_lr_ratio``·lr, or constant. A pure function of the step: resuming restores it."""
    stage, k = stage_at(cfg, step)
    base, warmup = cfg.stage_lr(stage), cfg.stage_warmup(stage)
    if k >= warmup and cfg.schedule.kind == "constant":
        return base
    return base * warmup_cosine(k, warmup, stage.steps - warmup, cfg.schedule.min_lr_ratio)


def lr_scale_at(cfg: VAETrainConfig, step: int) -> float:
    """The VAE's LR scale at step ``step``: linear warm-up over ``warmup_steps``, then cosine from 1 to
    ``min_lr_ratio`` at the stage's last step."""
    return warmup_cosine(step, cfg.warmup_steps, cfg.steps - 1 - cfg.warmup_steps, cfg.min_lr_ratio)


__all__ = ["build_adamw", "clip_gradients", "lr_at", "lr_scale_at", "set_lr", "stage_at", "warmup_cosine"]
