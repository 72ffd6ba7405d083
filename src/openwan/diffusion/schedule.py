"""Noise levels for flow matching: shifted σ grids for sampling, timesteps, and training σ sampling.

Flow matching (rectified flow) as trained by Wan:

    x_σ = (1 - σ)·x0 + σ·ε,      the model predicts  v = ε - x0,      so  x0 = x_σ - σ·v.

σ runs from 1 (pure noise) to 0 (data). The model is told the noise level as a timestep t = σ·1000.
A *shift* s > 1 moves a uniform grid of σ towards the noisy end: σ' = s·σ / (1 + (s - 1)·σ). Wan uses
s = 5 (t2v), 3 (i2v 480p), 8-12 (1.3B), 12 (Wan2.2 t2v).

How the official Wan grids are built (what `sampling_sigmas` reproduces, bit for bit in float64):

- "unipc":  shift(linspace(0.999, 0, N+1)[:-1]) followed by a final 0. The 0.999 is 1 - 1/1000, the largest
  σ of the reference scheduler's 1000-entry training table, read back from a float32 tensor
  (so it is float32(0.999) = 0.99900001287...).
- "dpm++":  shift(linspace(1, 0, N+1)[:N]) followed by a final 0 (the grid starts at pure noise, σ = 1).
- "euler":  not in the reference; we use the "dpm++" grid (a plain Euler step has no trouble with σ = 1).

The reference computes `timesteps = σ·1000` from the float64 grid, then casts them to int64 (truncation) for
the model; the solvers then see the grid cast to float32. `timesteps_from_sigmas` does the same.

diffusers builds its flow grids differently (useful to know when comparing with a diffusers Wan pipeline):

- `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=s)` without `sigmas=`: shift(linspace(1, 1/1000,
  N+1)[:-1]), and σ_0 is lowered by 1e-6 when it is 1 (to keep log(1-σ) finite). Same spacing 0.999/N as
  the reference, but starting at ≈1 instead of 0.999, so every σ is a little larger; e.g. for N=4, s=5 the
  last timestep is 625 instead of the reference's 624. Given `sigmas=`, it shifts them by `flow_shift` itself.
- `DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=s)`: shift(linspace(0.999, 0, N+1)[:-1]),
  i.e. the reference *UniPC* grid, not the reference DPM++ grid (which starts at σ = 1).
- `FlowMatchEulerDiscreteScheduler(shift=s)`: shift(linspace(1, σ_min, N)) + 0, σ_min its smallest (already
  shifted) training σ; given `sigmas=`, it shifts them in float32. Its timesteps stay float (σ·1000).
"""

from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000
"""Timesteps shown to the model are σ·NUM_TRAIN_TIMESTEPS."""

# The reference UniPC grid starts at the float32 value of 1 - 1/1000 (see the module docstring).
_WAN_UNIPC_SIGMA_MAX = torch.tensor(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32).item()

SAMPLING_KINDS = ("unipc", "dpm++", "euler", "lcm")  # lcm: a distilled student's grid (diffusion/consistency.py)
TRAINING_MODES = ("uniform", "logit_normal")


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive number (Wan uses 1 to 16), got {shift!r}.")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the flow-matching shift σ' = s·σ / (1 + (s - 1)·σ) elementwise; keeps dtype and device.

    s = 1 is the identity; s > 1 spends more steps at high noise. 0 and 1 are fixed points.
    """
    _check_shift(shift)
    # Same operation order as the reference (s·σ first), so float64 results match it bit for bit.
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """float64 linspace evaluated as start + k·step, like numpy.linspace (which the reference uses).

    torch.linspace rounds differently in its second half; the difference can flip σ·1000 across an integer.
    """
    step = (stop - start) / (num - 1)
    values = torch.arange(num, dtype=torch.float64) * step + start
    values[-1] = stop
    return values


def sampling_sigmas(num_steps: int, shift: float, kind: str = "unipc") -> torch.Tensor:
    """The σ grid for `num_steps` sampling steps: a float64 tensor of num_steps + 1 values, the last one 0.

    Step i goes from sigmas[i] to sigmas[i + 1]; the model is evaluated at sigmas[0..num_steps-1] only.
    `kind` picks the official Wan grid for that solver ("unipc", "dpm++"; "euler" uses the "dpm++" grid).
    float64 so that `timesteps_from_sigmas` truncates to the same integers as the reference.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1 (Wan uses 40 or 50), got {num_steps!r}.")
    _check_shift(shift)
    if kind == "unipc":
        base = _linspace(_WAN_UNIPC_SIGMA_MAX, 0.0, num_steps + 1)[:-1]
    elif kind in ("dpm++", "euler", "lcm"):
        base = _linspace(1.0, 0.0, num_steps + 1)[:-1]
    else:
        raise ValueError(f"Unknown sampling kind {kind!r}; use one of {', '.join(SAMPLING_KINDS)}.")
    final = torch.zeros(1, dtype=torch.float64)
    return torch.cat([shift_sigmas(base, shift), final])  # [N + 1]


def timesteps_from_sigmas(sigmas: torch.Tensor, integer: bool = True) -> torch.Tensor:
    """The timesteps the model sees, t = σ·1000, elementwise (same shape as `sigmas`).

    integer=True truncates to int64 like the reference sampler does; give it the float64 grid from
    `sampling_sigmas` to get the reference's integers exactly. integer=False keeps the float value
    (in `sigmas`' dtype), e.g. for training on continuous σ.
    """
    t = sigmas * NUM_TRAIN_TIMESTEPS
    return t.to(torch.int64) if integer else t


def sample_training_sigmas(
    batch: int,
    mode: str = "uniform",
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
    sigma_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Draw `batch` training noise levels σ in [0, 1] as a float32 tensor [batch], then shift them.

    mode="uniform": σ ~ U[0, 1).  mode="logit_normal": σ = sigmoid(u), u ~ N(logit_mean, logit_std²), the
    SD3 recipe that puts more weight on middle noise levels. `shift` is applied afterwards, as when a trainer
    samples from a shifted timestep table. The trainer then builds x_σ = (1 - σ)·x0 + σ·ε, target ε - x0.

    `sigma_range` (lo, hi): the same distribution restricted to lo ≤ σ ≤ hi after the shift (drawn by inverting
    its CDF between the two bounds, so no sample is rejected): a Wan2.2 A14B expert trains on its side of the
    boundary only. The full range draws exactly what it drew before ranges existed.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}.")
    _check_shift(shift)
    if mode not in TRAINING_MODES:
        raise ValueError(f"Unknown training sigma mode {mode!r}; use one of {', '.join(TRAINING_MODES)}.")
    if mode == "logit_normal" and not logit_std > 0:
        raise ValueError(f"logit_std must be positive (1.0 is the usual choice), got {logit_std!r}.")
    lo, hi = (float(v) for v in sigma_range)
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"sigma_range must be two noise levels 0 <= lo < hi <= 1, got {sigma_range!r}.")
    if (lo, hi) != (0.0, 1.0):
        return shift_sigmas(_truncated_draw(batch, mode, shift, generator, logit_mean, logit_std, device, lo, hi),
                            shift).clamp(lo, hi)
    if mode == "uniform":
        sigmas = torch.rand(batch, generator=generator, device=device)
    else:
        u = torch.randn(batch, generator=generator, device=device)
        sigmas = torch.sigmoid(u * logit_std + logit_mean)
    return shift_sigmas(sigmas, shift)


def _truncated_draw(batch: int, mode: str, shift: float, generator, logit_mean: float, logit_std: float, device,
                    lo: float, hi: float) -> torch.Tensor:
    """Unshifted σ whose shifted values lie in [lo, hi]: a uniform draw between the two bounds' CDF values, mapped
    back through the inverse CDF (float64 inside, float32 out)."""
    def unshift(s: float) -> float:  # the inverse of shift_sigmas
        return s / (shift - (shift - 1) * s)

    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    a, b = unshift(lo), unshift(hi)
    if mode == "uniform":
        return (a + (b - a) * u).float()

    def cdf(s: float) -> float:  # of sigmoid(N(mean, std²)) at s
        if s <= 0 or s >= 1:
            return float(s >= 1)
        return float(torch.special.ndtr(torch.tensor((math.log(s / (1 - s)) - logit_mean) / logit_std,
                                                     dtype=torch.float64)))

    p = cdf(a) + (cdf(b) - cdf(a)) * u
    return torch.sigmoid(torch.special.ndtri(p) * logit_std + logit_mean).float()


def resolution_shift(
    num_tokens: int,
    base_tokens: int = 256,
    base_shift: float = 0.5,
    max_tokens: int = 4096,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift: larger images/videos (more tokens) get a larger shift.

    The rule (Flux; diffusers' `calculate_shift` +
    `FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)`):
    μ is linear in the token count through (base_tokens, base_shift) and (max_tokens, max_shift), extrapolated
    beyond them, and the sigmas are time-shifted by exp(μ). Note that base_shift and max_shift are therefore
    *log*-shifts μ (the defaults are Flux's). The exponential time shift e^μ / (e^μ + 1/σ - 1) equals our
    `shift_sigmas` with s = e^μ, so this returns the multiplicative shift s = exp(μ) for `shift_sigmas`.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens!r}.")
    if max_tokens == base_tokens:
        raise ValueError("max_tokens must differ from base_tokens to define the linear shift rule.")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (num_tokens - base_tokens)
    return math.exp(mu)
