"""Classifier-free guidance and Wan2.2's two-expert (high noise / low noise) switching."""

from __future__ import annotations

import torch

from openwan.diffusion.schedule import NUM_TRAIN_TIMESTEPS


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v = v_u + g·(v_c - v_u). g = 1 gives v_c; Wan uses g = 5 by default."""
    return v_uncond + scale * (v_cond - v_uncond)


def _scalar_timestep(t: torch.Tensor | float) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(
                f"expert selection needs the step's single timestep, got a tensor of shape {tuple(t.shape)}."
            )
        return float(t.item())
    return float(t)


def _check_boundary(boundary: float) -> None:
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(
            f"boundary must be a fraction in [0, 1] (Wan2.2 uses 0.875 or 0.9), got {boundary!r}."
        )


def select_expert(t: torch.Tensor | float, boundary: float) -> str:
    """Which Wan2.2 A14B expert denoises at timestep t: "high" while t >= boundary·1000, else "low".

    t is the timestep the model sees (σ·1000, an integer in the reference).
    boundary: 0.875 for t2v, 0.9 for i2v.
    """
    _check_boundary(boundary)
    return "high" if _scalar_timestep(t) >= boundary * NUM_TRAIN_TIMESTEPS else "low"


def guide_scale_for(t: torch.Tensor | float, boundary: float, scales: tuple[float, float] | float) -> float:
    """The guidance scale of the expert active at t; `scales` = (low, high), or one number for both.

    Wan2.2 t2v-A14B uses (3.0, 4.0), i2v-A14B (3.5, 3.5).
    """
    if isinstance(scales, (int, float)):
        return float(scales)
    if len(scales) != 2:
        raise ValueError(f"scales must be one number or a (low, high) pair, got {scales!r}.")
    low, high = scales
    return float(high if select_expert(t, boundary) == "high" else low)
