"""The streaming sampler's per-frame noise levels (a staircase over a σ grid), for training and distilling models
that serve it (pure torch).

A window of G groups of latent frames (oldest first) walks a σ grid of G·K steps, K sub-steps per queue shift:
at sub-step k (0 <= k < K) the group of age a (0 = the newest) sits at grid index a·K + k. Every window the stream
evaluates is of this form (:mod:`openwan.pipelines.stream`), so a model trained on these levels, each token at its
own frame's σ, sees in training what it sees while streaming (diffusion forcing on the stream's own schedule).
"""

from __future__ import annotations

import torch

from openwan.diffusion.schedule import sampling_sigmas


def staircase_grid(groups: int, steps_per_shift: int, shift: float) -> torch.Tensor:
    """The float64 σ grid [G·K + 1] from 1 to 0 the staircase walks (the stream's default grid)."""
    if groups < 1 or steps_per_shift < 1:
        raise ValueError(f"a staircase needs groups >= 1 and steps_per_shift >= 1; got {groups} and "
                         f"{steps_per_shift}.")
    return sampling_sigmas(groups * steps_per_shift, shift, kind="euler")


def staircase_indices(groups: int, steps_per_shift: int, substep: int | torch.Tensor) -> torch.Tensor:
    """Grid indices [G] (int64, oldest group first) of the window's groups at sub-step ``substep`` (0 .. K−1),
    or [B, G] for a tensor of sub-steps [B]."""
    ages = torch.arange(groups - 1, -1, -1, dtype=torch.int64)  # oldest first
    k = torch.as_tensor(substep, dtype=torch.int64)
    if bool(((k < 0) | (k >= steps_per_shift)).any()):
        raise ValueError(f"substep must lie in 0 .. {steps_per_shift - 1}; got {substep}.")
    return ages * steps_per_shift + k.unsqueeze(-1) if k.ndim else ages * steps_per_shift + k


def draw_staircase_indices(gen: torch.Generator, frames: int, patch_frames: int, steps_per_shift: int
                           ) -> torch.Tensor:
    """One sample's grid indices [frames] (int64) on the staircase of its window: each temporal patch a group of
    its own (the stream's block 1), a sub-step drawn uniformly from ``gen``."""
    k = int(torch.randint(steps_per_shift, (), generator=gen))
    return staircase_indices(frames // patch_frames, steps_per_shift, k).repeat_interleave(patch_frames)


def draw_staircase(gen: torch.Generator, frames: int, patch_frames: int, steps_per_shift: int,
                   shift: float) -> torch.Tensor:
    """One sample's levels [frames] (float32) at the indices :func:`draw_staircase_indices` draws."""
    grid = staircase_grid(frames // patch_frames, steps_per_shift, shift).to(torch.float32)
    return grid[draw_staircase_indices(gen, frames, patch_frames, steps_per_shift)]


__all__ = ["draw_staircase", "draw_staircase_indices", "staircase_grid", "staircase_indices"]
