"""The ``distill`` section of a training config: consistency distillation of a guided teacher into a few-step student.

A run with ``distill`` set trains its DiT (the student) with :mod:`openwan.train.distill` instead of the
flow-matching loss; everything else (data, optimizer, EMA, checkpoints, resume, LoRA, processes) is the trainer's.
The run's ``timesteps`` section is not used: the noise levels are the teacher's grid points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from openwan.configio import check


@dataclass(frozen=True)
class DistillConfig:
    """What is distilled into what.

    ``teacher``: a release folder (one DiT, or Wan2.2-style ``high_noise_model/`` + ``low_noise_model/`` switched at
    the release's boundary), a DiT folder or a weights file — frozen, never saved in checkpoints.
    ``student_init``: the student's starting weights (None: the teacher's; of a two-expert teacher, the low-noise
    expert). ``guide_scale``: the teacher's classifier-free guidance scale, folded into the student (which is then
    sampled at guidance 1). ``negative_prompt``: the teacher's unconditional prompt (None: the empty prompt, as the
    text cache stores it). ``teacher_steps`` N: the teacher's Euler grid, one guided step per training pair;
    ``student_steps`` S (dividing N): the student's grid, every (N/S)-th teacher point; both grids use ``shift``.
    ``objective``: ``consistency`` (a pair starts at any teacher point; one guided teacher step, then the target
    model to the phase's end) or ``trajectory`` (a pair starts at a student point and the guided teacher walks the
    whole phase, N/S steps: regression on the teacher's ODE, no bootstrapping; ``target`` is then unused).
    ``target``: ``ema`` (the run's EMA, ``ema.decay``, gives the consistency target) or ``online`` (the student
    itself without gradients). ``loss``: ``l2`` or ``pseudo_huber`` with ``huber_c``. ``expert``: with a
    two-expert teacher, train the student expert of one side of its boundary (``high``: the student steps that start
    at t >= boundary·1000, where a two-expert pipeline takes the high-noise expert; ``low``: the others), starting
    from the teacher's expert of that side; None: one student for every step.
    ``staircase``: distil for the streaming sampler (:mod:`openwan.diffusion.staircase`): each clip is a stream
    window of G latent frames, each frame at its own level on the staircase — the teacher's grid of N steps walked
    N/G sub-steps per queue shift, the student's S/G (G must divide both) — so the student streams with
    ``openwan stream --window G --steps-per-shift S/G --sample-shift shift --guide-scale 1``.
    """

    teacher: str = ""
    student_init: str | None = None
    guide_scale: float = 5.0
    negative_prompt: str | None = None
    teacher_steps: int = 16
    student_steps: int = 4
    shift: float = 3.0
    objective: Literal["consistency", "trajectory"] = "consistency"
    target: Literal["ema", "online"] = "ema"
    loss: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: float = 0.03
    expert: Literal["high", "low"] | None = None
    staircase: bool = False


def validate_distill(d: DistillConfig, ema_decay: float, name: str = "distill") -> None:
    """Range checks of a :class:`DistillConfig` (ValueError naming the field); ``ema_decay`` is the run's."""
    check(bool(d.teacher), f"{name}.teacher", "the teacher's release folder, DiT folder or weights file", d.teacher)
    check(math.isfinite(d.guide_scale) and d.guide_scale >= 0, f"{name}.guide_scale",
          "a finite number >= 0 (1: no guidance)", d.guide_scale)
    check(d.teacher_steps >= 1, f"{name}.teacher_steps", "an integer >= 1", d.teacher_steps)
    check(1 <= d.student_steps <= d.teacher_steps and d.teacher_steps % d.student_steps == 0, f"{name}.student_steps",
          f"an integer >= 1 that divides {name}.teacher_steps ({d.teacher_steps})", d.student_steps)
    check(math.isfinite(d.shift) and d.shift > 0, f"{name}.shift", "a positive number", d.shift)
    check(d.objective in ("consistency", "trajectory"), f"{name}.objective", "consistency or trajectory",
          d.objective)
    check(d.objective == "trajectory" or d.target == "online" or ema_decay > 0, f"{name}.target",
          "online when ema.decay is 0 (the ema target is the run's EMA; set ema.decay > 0 to use it)", d.target)
    check(math.isfinite(d.huber_c) and d.huber_c > 0, f"{name}.huber_c", "a positive number", d.huber_c)
    check(not (d.staircase and d.expert is not None), f"{name}.expert",
          f"null with {name}.staircase (a streaming window holds frames on both sides of an expert boundary)", d.expert)


def check_window(d: DistillConfig, frames: int, name: str = "distill", anchor: float = 0.0) -> None:
    """With ``staircase``: the staircase's groups must divide both grids — the clips' ``frames`` latent frames,
    and with an ``anchor`` fraction above 0 (``timesteps.anchor``) the frames after the anchor, ``frames`` − 1."""
    if not d.staircase:
        return
    counts = ([frames] if anchor < 1 else []) + ([frames - 1] if anchor > 0 else [])
    for groups in counts:
        check(groups >= 1 and d.teacher_steps % groups == 0 and d.student_steps % groups == 0,
              f"{name}.student_steps", f"a multiple of the {groups} latent frames the staircase walks (the clips' "
              f"{frames}{' less the anchor' if groups < frames else ''}), as {name}.teacher_steps must be "
              f"({name}.staircase walks both grids a sub-step per frame of the window)", d.student_steps)


__all__ = ["DistillConfig", "check_window", "validate_distill"]
