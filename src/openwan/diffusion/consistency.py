"""Consistency distillation maths for flow matching (pure torch): σ grids, the guided teacher step, the target.

A teacher's guided sampler is distilled into a student of S steps, phased (multistep) consistency in the
LCM / VideoLCM family, adapted to rectified flow:

- The teacher's grid is ``sampling_sigmas(N, shift, "euler")``; the student's is every (N/S)-th point of it, the
  same as ``sampling_sigmas(S, shift, "euler")``. The student's points cut the teacher's grid into S phases.
- A pair starts at a teacher point σ_n; the teacher takes one guided Euler step (the DDIM step of flow matching)
  to σ_{n+1}: x̂_{n+1} = x_n + (σ_{n+1} − σ_n)·v_g, with v_g = v_u + g·(v_c − v_u).
- The consistency function jumps to the end σ_e of the phase with the model's velocity:
  f(x, σ) = x + (σ_e − σ)·v(x, σ); at σ = σ_e it is x itself, so the boundary condition holds by construction.
- The target is f_target(x̂_{n+1}, σ_{n+1}) (EMA or stop-gradient student), and the student is trained so that
  f_θ(x_n, σ_n) meets it. The loss is measured on velocities — the velocity that jumps x_n onto the target,
  (target − x_n)/(σ_e − σ_n), against the student's v — so every noise level weighs alike, as in flow matching.

With S = 1 the only phase ends at σ = 0 and f is the x0 prediction: LCM. With S steps and a perfect student, an
Euler run on the student's grid lands on the teacher's guided trajectory at every student point.

:func:`trajectory_target` is the same fixed point reached without bootstrapping (regression on the teacher's ODE, as
CausVid and Self-Forcing initialise their students): from a student point σ_n the teacher walks the whole phase,
N/S guided Euler steps, and the student is trained to jump there in one. It costs N/S teacher steps per pair
instead of one plus a target evaluation, needs no EMA target, and trains the student only where it is sampled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from openwan.diffusion.guidance import cfg_combine
from openwan.diffusion.schedule import sampling_sigmas, timesteps_from_sigmas

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x [B, C, F, h, w], t [B] = σ·1000, context [B, L, D])`` -> velocity v = ε − x0, like x."""


def teacher_sigmas(teacher_steps: int, shift: float) -> torch.Tensor:
    """The teacher's σ grid: ``teacher_steps`` + 1 float64 values from 1 to 0 (the Euler grid, shifted)."""
    return sampling_sigmas(teacher_steps, shift, kind="euler")


def student_sigmas(student_steps: int, shift: float) -> torch.Tensor:
    """The student's σ grid (``student_steps`` + 1 values): the points where its phases end, and the grid it
    samples on (``make_solver("euler" or "lcm", this)``, or ``openwan generate --sample-solver euler
    --sample-steps S --sample-shift shift``). It is a subset of :func:`teacher_sigmas` when S divides N."""
    return sampling_sigmas(student_steps, shift, kind="euler")


def phase_end(index: torch.Tensor, teacher_steps: int, student_steps: int) -> torch.Tensor:
    """For teacher grid indices n (0 = pure noise), the index of the end of n's phase: the next student point
    strictly below σ_n (an int64 tensor like ``index``)."""
    if teacher_steps % student_steps:
        raise ValueError(f"teacher_steps ({teacher_steps}) must be a multiple of student_steps ({student_steps}) so "
                         "that the student's grid is part of the teacher's.")
    k = teacher_steps // student_steps
    return (torch.div(index, k, rounding_mode="floor") + 1) * k


def grid_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The timesteps the sampler shows a model on ``sigmas`` (int σ·1000, as ``timesteps_from_sigmas``), float32."""
    return timesteps_from_sigmas(sigmas).to(torch.float32)


def guided_velocity(model: Model, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    context_negative: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guided velocity v_u + scale·(v_c − v_u) (one evaluation when scale is 1)."""
    v_cond = model(x, t, context)
    if scale == 1.0:
        return v_cond
    return cfg_combine(model(x, t, context_negative), v_cond, scale)


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` per sample [B] or per latent frame [B, F], shaped to broadcast over x [B, C, F, h, w] (x's dtype
    and device)."""
    values = values.to(x)
    if values.ndim == 2:
        return values[:, None, :, None, None]
    return values.view(-1, *([1] * (x.ndim - 1)))


def jump(x: torch.Tensor, v: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """x + (σ_to − σ_from)·v per sample (σ [B]) or per latent frame (σ [B, F]): an Euler step, or the consistency
    function's jump to a phase end."""
    return x + per_sample(sigma_to - sigma_from, x) * v


def consistency_target(teacher: Model, target_model: Model, x_n: torch.Tensor, context: torch.Tensor,
                       context_negative: torch.Tensor, sigmas: torch.Tensor, n: torch.Tensor, end: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """The velocity the student should predict at (x_n, σ_n): the one that jumps x_n to f_target(x̂_{n+1}).

    sigmas: the teacher grid (float64); n, end: grid indices of the start and of its phase end, per sample [B] or
    per latent frame [B, F] (the streaming staircase: the models then get timesteps [B, F], one per frame). The
    teacher takes one guided Euler step n -> n+1; where n+1 is the phase end, the target is that step itself.
    Frames at the grid's last index N (σ 0: a stream's anchor, given clean) stay where they are, and their target
    is 0 — context, not a target: leave them out of the loss (:func:`consistency_loss`'s ``mask``).
    Computed without gradients."""
    with torch.no_grad():
        last = sigmas.numel() - 1
        after = (n + 1).clamp(max=last)
        s_n, s_m, s_e = sigmas[n], sigmas[after], sigmas[end.clamp(max=last)]  # [B] or [B, F] float64
        t = grid_timesteps(sigmas)
        v_g = guided_velocity(teacher, x_n, t[n].to(x_n.device), context, context_negative, scale)
        x_m = jump(x_n, v_g.float(), s_n, s_m)
        inside = (n + 1 < end).to(x_n.device)  # samples (frames) whose teacher step stops short of the phase end
        # Evaluated for every batch, even one of boundary pairs only: under FSDP a forward is collective, and
        # another rank's batch may need it.
        v_t = target_model(x_m, t[after].to(x_n.device), context).float()
        f_target = torch.where(per_sample(inside, x_n).bool(), jump(x_m, v_t, s_m, s_e), x_m)
        span = per_sample(s_e - s_n, x_n)
        return (f_target - x_n) / span.masked_fill(span == 0, 1.0)


def trajectory_target(teacher: Model, x_n: torch.Tensor, context: torch.Tensor, context_negative: torch.Tensor,
                      sigmas: torch.Tensor, n: torch.Tensor, end: torch.Tensor, scale: float) -> torch.Tensor:
    """The velocity that jumps x_n to where the guided teacher's Euler steps n -> n+1 -> ... -> end take it.

    As :func:`consistency_target` (sigmas, n, end per sample [B] or per latent frame [B, F]; frames at the grid's
    last index N are context, their target 0), but the teacher walks all of n's phase: max(end − n) guided
    evaluations, each sample or frame stopping at its own end (from student points, N/S for every batch, so every
    process of a sharded teacher runs alike). Computed without gradients."""
    with torch.no_grad():
        last = sigmas.numel() - 1
        end = end.clamp(max=last)
        t = grid_timesteps(sigmas)
        x, index = x_n, n
        for _ in range(int((end - n).max())):
            after = (index + 1).clamp(max=end)
            v_g = guided_velocity(teacher, x, t[index].to(x_n.device), context, context_negative, scale)
            x = jump(x, v_g.float(), sigmas[index], sigmas[after])
            index = after
        span = per_sample(sigmas[end] - sigmas[n], x_n)
        return (x - x_n) / span.masked_fill(span == 0, 1.0)


def consistency_loss(v_pred: torch.Tensor, v_target: torch.Tensor, kind: str = "l2",
                     huber_c: float = 0.03, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The distance between the student's velocity and the target's (float32 scalar, the batch mean).

    ``l2``: the mean squared error. ``pseudo_huber``: per sample sqrt(mean (v − v̂)² + c²) − c (iCT's loss, with
    the squared norm taken as a mean so c does not depend on the latent size). ``mask`` [B, F] (bool): only those
    latent frames count (the means are taken over them); None: all."""
    if kind not in ("l2", "pseudo_huber"):
        raise ValueError(f"Unknown consistency loss {kind!r}; use l2 or pseudo_huber.")
    error = (v_pred.float() - v_target.float()).square()
    if mask is None:
        per_clip = error.flatten(1).mean(dim=1)
        return error.mean() if kind == "l2" else ((per_clip + huber_c**2).sqrt() - huber_c).mean()
    keep = per_sample(mask, error)  # [B, 1, F, 1, 1] in error's dtype
    count = keep.expand_as(error).flatten(1).sum(dim=1)  # [B] elements that count
    sums = (error * keep).flatten(1).sum(dim=1)
    if kind == "l2":
        return sums.sum() / count.sum().clamp(min=1)
    per_clip = sums / count.clamp(min=1)
    return ((per_clip + huber_c**2).sqrt() - huber_c)[count > 0].mean()


__all__ = ["Model", "consistency_loss", "consistency_target", "grid_timesteps", "guided_velocity", "jump",
           "per_sample", "phase_end", "student_sigmas", "teacher_sigmas", "trajectory_target"]
