"""The flow-matching training objective: noising, the noise levels a sample draws, and the loss.

    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   loss = MSE(model(x_σ, σ·1000, context), v)

σ is one level per sample ([B]) or one per latent frame ([B, F]: diffusion forcing, or a first frame given clean
at σ 0, which is context and not a target). Pure torch: the model is any callable ``model(x, t, context)`` with a
``cfg.patch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openwan.diffusion.schedule import NUM_TRAIN_TIMESTEPS, sample_training_sigmas
from openwan.diffusion.staircase import draw_staircase

NoiseDistribution = tuple[float, float, float, float]
"""(fraction, shift, logit_mean, logit_std) of one entry of a noise-level mixture."""


def flow_matching_loss(dit: nn.Module, x0: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
                       noise: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                       count: torch.Tensor | float | None = None) -> torch.Tensor:
    """MSE between the model's velocity at x_σ = (1 − σ)·x0 + σ·ε and the target ε − x0 (float32 scalar).

    x0, noise [B, C, F, h, w]; context [B, L, text_dim]; sigmas in [0, 1], [B] (one level per sample: the model sees
    t = σ·1000) or [B, F] (one per latent frame: the model sees each token's frame's t). Frames at σ 0 (given clean)
    are left out. ``count``: the number of target elements to divide the squared error by (default: this batch's,
    :func:`target_count`) — a data-parallel rank passes the mean over all ranks, so that the ranks' mean loss is
    the loss of the whole global batch even when their samples hold different numbers of noisy frames.
    """
    x_t, t = noised(x0, sigmas, noise, dit.cfg.patch_size)
    target = noise - x0
    with _autocast(x0.device, autocast_dtype):
        pred = dit(x_t, t, context)
    if count is None and (sigmas.ndim == 1 or bool((sigmas > 0).all())):
        return F.mse_loss(pred.float(), target.float())
    # Frames given clean (σ 0) are context, not targets: their velocity is the unseen noise.
    error = (pred.float() - target.float()).square()
    if sigmas.ndim == 2:
        error = error * (sigmas > 0).to(pred.device, torch.float32)[:, None, :, None, None]
    if count is None:
        count = target_count(sigmas, pred.shape)
    return error.sum() / torch.as_tensor(count, dtype=torch.float32, device=pred.device).clamp(min=1)


def target_count(sigmas: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """How many elements of latents ``shape`` [B, C, F, h, w] are loss targets: those of frames at σ > 0
    (float32 scalar, on ``sigmas``' device)."""
    b, c, f, h, w = shape
    if sigmas.ndim == 1:
        return torch.tensor(float(b * c * f * h * w), device=sigmas.device)
    return (sigmas > 0).sum().to(torch.float32) * (c * h * w)


def noised(x0: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor,
           patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_σ = (1 − σ)·x0 + σ·ε, the model's timesteps t = σ·1000): [B] for σ [B], per token [B, L] for σ [B, F]."""
    sigmas = sigmas.to(x0)
    if sigmas.ndim == 1:
        s, t = sigmas.view(-1, 1, 1, 1, 1), sigmas * NUM_TRAIN_TIMESTEPS
    else:
        s, t = sigmas[:, None, :, None, None], token_timesteps(sigmas * NUM_TRAIN_TIMESTEPS, x0.shape, patch_size)
    return (1 - s) * x0 + s * noise, t


def token_timesteps(t: torch.Tensor, shape: torch.Size, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Per-frame timesteps [B, F] -> per-token [B, L] in the DiT's (f, h, w) token order (the first frame of each
    temporal patch speaks for it; :func:`draw_sample_sigmas` draws one level per temporal patch)."""
    pt, ph, pw = patch_size
    per_token_frame = t[:, ::pt]  # [B, F / pt]
    return per_token_frame.repeat_interleave((shape[3] // ph) * (shape[4] // pw), dim=1)


def pick_distribution(mix: Sequence[NoiseDistribution], main: tuple[float, float, float],
                      gen: torch.Generator) -> tuple[float, float, float]:
    """(shift, logit_mean, logit_std) a sample draws its σ from: an entry of ``mix`` with the probability of its
    fraction, else ``main``. Without a mix nothing is drawn from ``gen``, so such runs draw the same σ and ε as
    a run whose config has no mix field at all."""
    u = float(torch.rand((), generator=gen)) if mix else 1.0
    for fraction, shift, mean, std in mix:
        if u < fraction:
            return shift, mean, std
        u -= fraction
    return main


def draw_sample_sigmas(gen: torch.Generator, *, frames: int, patch_frames: int, mode: str, shift: float,
                       logit_mean: float = 0.0, logit_std: float = 1.0, mix: Sequence[NoiseDistribution] = (),
                       per_frame: float = 0.0, first_frame: float = 0.0,
                       sigma_range: tuple[float, float] = (0.0, 1.0),
                       staircase: tuple[float, int, float] | None = None, anchor: bool = False) -> torch.Tensor:
    """One sample's noise levels, from its own generator: [1], or [F] per latent frame when ``per_frame`` or
    ``first_frame`` is on (``frames`` latent frames in temporal patches of ``patch_frames``).

    With probability ``first_frame`` the first frame is given clean (σ 0) and the rest share one level; with
    probability ``per_frame`` each temporal patch draws its own level; otherwise all frames share one. ``mix``
    entries replace the main (shift, logit_mean, logit_std) with the probability of their fractions. Every level
    lies in ``sigma_range`` (a clean first frame stays at 0). ``staircase`` (fraction, steps per shift, shift):
    with that probability the frames take the streaming sampler's levels instead (:func:`draw_staircase`: the
    window's staircase at a random sub-step, oldest frame cleanest), ``sigma_range`` not applied.

    ``anchor``: the first temporal patch is an anchor, given clean (σ 0), and the rest's levels are drawn as above
    for a clip one temporal patch shorter; the result is then always [F]."""
    if anchor:
        if frames // patch_frames < 2:
            raise ValueError(f"an anchored sample needs at least 2 latent frames (the anchor and one after it); got "
                             f"{frames // patch_frames}.")
        rest = draw_sample_sigmas(gen, frames=frames - patch_frames, patch_frames=patch_frames, mode=mode,
                                  shift=shift, logit_mean=logit_mean, logit_std=logit_std, mix=mix,
                                  per_frame=per_frame, first_frame=first_frame, sigma_range=sigma_range,
                                  staircase=staircase)
        return torch.cat([rest.new_zeros(patch_frames), rest.expand(frames - patch_frames)])
    token_frames = frames // patch_frames
    stair = staircase[0] if staircase is not None else 0.0
    frame_sigmas = per_frame > 0 or first_frame > 0 or stair > 0
    draws, clean_first = 1, False
    if frame_sigmas:
        u = float(torch.rand((), generator=gen))
        if first_frame + per_frame <= u < first_frame + per_frame + stair:
            return draw_staircase(gen, frames, patch_frames, staircase[1], staircase[2])
        clean_first = u < first_frame and token_frames > 1
        draws = token_frames if first_frame <= u < first_frame + per_frame else 1
    shift_of, mean, std = pick_distribution(mix, (shift, logit_mean, logit_std), gen)
    sigma = sample_training_sigmas(draws, mode, shift_of, generator=gen, logit_mean=mean, logit_std=std,
                                   sigma_range=sigma_range)
    if not frame_sigmas:
        return sigma
    sigma = sigma.expand(token_frames).clone()  # [F / pt]: the level of each temporal patch
    if clean_first:
        sigma[0] = 0.0
    return sigma.repeat_interleave(patch_frames)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


__all__ = ["NoiseDistribution", "draw_sample_sigmas", "flow_matching_loss", "noised", "pick_distribution",
           "target_count", "token_timesteps"]
