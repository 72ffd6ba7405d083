"""Consistency distillation as an objective of the DiT trainer: a frozen guided teacher, the student is the run's DiT.

:class:`~openwan.train.trainer.Trainer` calls :meth:`Distillation.loss` instead of the flow-matching loss when
``cfg.distill`` is set; the maths is :mod:`openwan.diffusion.consistency`. One training pair per sample:

    n ~ U{0..N−1} on the teacher's grid,  x_n = (1 − σ_n)·x0 + σ_n·ε,
    v* = consistency_target(teacher (guided), target (EMA or online student), x_n, n, end of n's phase),
    loss = |student(x_n, σ_n) − v*|²  (or pseudo-Huber)

With ``objective: trajectory`` n is a student point and v* = trajectory_target(teacher (guided), x_n, n, end): the
teacher walks the whole phase (N/S guided steps), no target model.

The draws (n, ε) come from the trainer's per-sample generators (``noise`` stream), so a distillation run resumes
bit for bit and draws the same at any number of data-parallel processes. Under torchrun the teacher is parallelized
as the student is (:meth:`Teacher.shard`: context parallel, and FSDP2 shards with ``parallel.fsdp``, so each process
holds 1/world of it); it is frozen and never written to a checkpoint; the EMA target is the run's EMA, which is.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from openwan.diffusion.consistency import (
    consistency_loss,
    consistency_target,
    grid_timesteps,
    per_sample,
    phase_end,
    teacher_sigmas,
    trajectory_target,
)
from openwan.diffusion.objective import token_timesteps
from openwan.diffusion.staircase import draw_staircase_indices
from openwan.models import WanDiT
from openwan.parallel.parallelize import DiTParallelConfig, parallelize_dit
from openwan.train.distill_config import DistillConfig, check_window

if TYPE_CHECKING:
    from openwan.train.trainer import Trainer

EXPERT_DIRS = ("high_noise_model", "low_noise_model")
DEFAULT_BOUNDARY = 0.875  # Wan2.2 t2v-A14B's, for a two-expert release whose configuration.json names none


class Teacher(nn.Module):
    """A frozen DiT, or Wan2.2-style experts: ``high`` where t >= boundary·1000, ``low`` below (per sample)."""

    def __init__(self, high: WanDiT, low: WanDiT | None = None, boundary: float | None = None):
        super().__init__()
        self.high, self.low, self.boundary = high, low, boundary
        # Under FSDP a forward is collective: every rank must run the same experts in the same order, whatever its
        # own batch needs, so sharded experts each run on the whole batch (see shard()).
        self.sharded = False
        self.requires_grad_(False).eval()

    def experts(self) -> list[WanDiT]:
        return [self.high] + ([self.low] if self.low is not None else [])

    def shard(self, mesh, fsdp: bool = True, param_dtype: torch.dtype | None = None) -> None:
        """Parallelize the frozen teacher as the student is (:func:`~openwan.parallel.parallelize_dit`): context
        parallel over the mesh's ring × ulysses ranks and, with ``fsdp``, its parameters sharded over all ranks, so
        each process holds 1/world of it (the all-gathers run block by block in each forward). ``mesh`` None or of
        one rank: nothing changes."""
        if mesh is None or mesh.size() == 1:
            return
        for expert in self.experts():
            parallelize_dit(expert, mesh, DiTParallelConfig(fsdp=fsdp, param_dtype=param_dtype))
        self.sharded = fsdp

    def held_parameters(self) -> tuple[int, int]:
        """(parameter elements this process holds, elements of the whole teacher)."""
        held = whole = 0
        for p in self.parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            held, whole = held + local.numel(), whole + p.numel()
        return held, whole

    @property
    def base(self) -> WanDiT:
        """The expert that serves every noise level (the only one, or the low-noise one)."""
        return self.low if self.low is not None else self.high

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Velocity [B, C, F, h, w] at timesteps t [B] (σ·1000), or per token [B, L]: each token takes the expert
        of its own level (both run on the whole batch when the tokens' levels straddle the boundary)."""
        if self.low is None:
            return self.high(x, t, context)
        if t.ndim == 2:
            return self._per_token(x, t, context)
        high = t >= self.boundary * 1000  # [B]
        if self.sharded:
            where = high.view(-1, *([1] * (x.ndim - 1)))
            return torch.where(where, self.high(x, t, context), self.low(x, t, context).to(x.dtype))
        if bool(high.all()) or not bool(high.any()):
            return (self.high if bool(high.all()) else self.low)(x, t, context)
        out = torch.empty_like(x)
        for mask, model in ((high, self.high), (~high, self.low)):
            out[mask] = model(x[mask], t[mask], context[mask]).to(out.dtype)
        return out

    def _per_token(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        high = t >= self.boundary * 1000  # [B, L]
        if not self.sharded and (bool(high.all()) or not bool(high.any())):
            return (self.high if bool(high.all()) else self.low)(x, t, context)
        pt, ph, pw = self.base.cfg.patch_size
        b, _, f, h, w = x.shape
        where = high.view(b, 1, f // pt, h // ph, w // pw)
        where = where.repeat_interleave(pt, 2).repeat_interleave(ph, 3).repeat_interleave(pw, 4)
        return torch.where(where, self.high(x, t, context), self.low(x, t, context).to(x.dtype))


class FrameTimesteps(nn.Module):
    """``model`` called with timesteps per latent frame [B, F] (or per sample [B]), handed on per token."""

    def __init__(self, model: nn.Module, patch_size: tuple[int, int, int]):
        super().__init__()
        self.model, self.patch_size = model, patch_size

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.model(x, token_timesteps(t, x.shape, self.patch_size) if t.ndim == 2 else t, context)


def load_teacher(path: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> Teacher:
    """The teacher at ``path`` (a release folder, two-expert or not; a DiT folder; a weights file), in ``dtype``
    (None: float32) on ``device``, frozen. ValueError when the path does not exist."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"distill.teacher={path} does not exist; give the teacher's release folder, DiT folder or "
                         "weights file.")
    dtype = dtype or torch.float32
    if all((root / d).is_dir() for d in EXPERT_DIRS):
        high, low = (WanDiT.from_pretrained(root / d, dtype=dtype, device=device) for d in EXPERT_DIRS)
        return Teacher(high, low, _release_boundary(root))
    return Teacher(WanDiT.from_pretrained(root, dtype=dtype, device=device))


def _release_boundary(root: Path) -> float:
    config = root / "configuration.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("boundary")
        if value is not None:
            return float(value)
    return DEFAULT_BOUNDARY


class Distillation:
    """The distillation objective of a run: its teacher, grids and negative prompt; see the module docstring."""

    def __init__(self, cfg: DistillConfig, device: torch.device, dtype: torch.dtype | None = None):
        """Loads the teacher on ``device`` in ``dtype``: the run's autocast dtype (bf16 on GPU), None for float32."""
        self.cfg = cfg
        self.teacher = load_teacher(cfg.teacher, device, dtype)
        self.sigmas = teacher_sigmas(cfg.teacher_steps, cfg.shift)  # [N + 1] float64, on the CPU
        self.starts = self._expert_starts()  # the teacher grid indices pairs start from (None: all)
        self._negative: torch.Tensor | None = None

    def _expert_starts(self) -> torch.Tensor | None:
        """With ``expert``: the indices n whose student step (the phase n lies in) starts on that expert's side of
        the teacher's boundary, by the pipeline's rule (t >= boundary·1000: high)."""
        cfg = self.cfg
        if cfg.expert is None:
            return None
        if self.teacher.low is None:
            raise ValueError(f"distill.expert={cfg.expert} needs a two-expert teacher (high_noise_model/ and "
                             "low_noise_model/ in a release folder); leave distill.expert out for one student.")
        n = torch.arange(cfg.teacher_steps)
        k = cfg.teacher_steps // cfg.student_steps
        high = grid_timesteps(self.sigmas)[torch.div(n, k, rounding_mode="floor") * k] >= self.teacher.boundary * 1000
        starts = n[high if cfg.expert == "high" else ~high]
        if starts.numel() == 0:
            raise ValueError(f"distill.expert={cfg.expert}: no student step starts on that side of the teacher's "
                             f"boundary {self.teacher.boundary}; change distill.student_steps or distill.shift.")
        return starts

    def student(self, given: nn.Module | None = None) -> nn.Module:
        """The model to train: ``given``, else ``student_init``'s weights, else the teacher's (of two experts, the
        one of ``expert``'s side, the low-noise one without). ValueError when it cannot take the teacher's inputs
        and outputs."""
        if given is not None:
            dit = given
        else:  # read again in float32 (the teacher may be held in bf16)
            init = Path(self.cfg.student_init or self.cfg.teacher)
            if not init.exists():
                raise ValueError(f"distill.student_init={init} does not exist; give a DiT folder or weights file, "
                                 "or leave it out to start from the teacher.")
            if all((init / d).is_dir() for d in EXPERT_DIRS):
                init = init / EXPERT_DIRS[0 if self.cfg.expert == "high" else 1]
            dit = WanDiT.from_pretrained(init, dtype=torch.float32)
        mine, theirs = getattr(dit, "cfg", None), self.teacher.base.cfg
        if mine is None or (mine.in_dim, mine.out_dim, mine.patch_size, mine.text_dim) != (
                theirs.in_dim, theirs.out_dim, theirs.patch_size, theirs.text_dim):
            raise ValueError("the student must take the teacher's latents and text states (same in_dim, out_dim, "
                             "patch_size and text_dim); give a distill.student_init of the teacher's family.")
        return dit

    def negative_context(self, trainer: Trainer, batch: Any) -> torch.Tensor:
        """The unconditional text states [L, D]: ``negative_prompt`` encoded once, else the empty prompt's."""
        if self.cfg.negative_prompt is not None:
            if self._negative is None:
                self._negative = trainer.encode_text([self.cfg.negative_prompt])[0]
            return self._negative
        if "context_empty" in batch:
            return batch["context_empty"].to(trainer.device, torch.float32)
        if "caption" in batch:
            return trainer.empty_context()
        raise ValueError("guided distillation needs the unconditional prompt's encoding: batches with 'context' must "
                         "carry 'context_empty' (the text cache stores it), or set distill.negative_prompt with "
                         "model.text_encoder, or distill.guide_scale=1.")

    def loss(self, trainer: Trainer, x0: torch.Tensor, context: torch.Tensor, batch: Any
             ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(the consistency loss of this batch, the start levels σ_n [B], the grids' shift)."""
        cfg, dit, device = self.cfg, trainer.dit, x0.device
        n, noise = self._draw(trainer, x0)
        end = phase_end(n, cfg.teacher_steps, cfg.student_steps).clamp(max=cfg.teacher_steps)
        s_n = per_sample(self.sigmas[n].to(torch.float32), x0)  # [B] or, on the staircase, [B, F] levels
        x_n = (1 - s_n) * x0 + s_n * noise.to(device)
        patch = self.teacher.base.cfg.patch_size
        teacher, student = (FrameTimesteps(self.teacher, patch), FrameTimesteps(dit, patch)) if n.ndim == 2 else (
            self.teacher, dit)
        negative = context
        if cfg.guide_scale != 1.0:
            empty = self.negative_context(trainer, batch).to(context)  # [L', D]
            negative = empty[None].expand(x0.shape[0], -1, -1)
        if cfg.objective == "trajectory":
            with _autocast(device, trainer.autocast_dtype):
                v_target = trajectory_target(teacher, x_n, context, negative, self.sigmas, n, end, cfg.guide_scale)
        else:
            swap = trainer.ema.swapped_in() if cfg.target == "ema" else contextlib.nullcontext()
            with swap, _autocast(device, trainer.autocast_dtype):
                v_target = consistency_target(teacher, student, x_n, context, negative, self.sigmas, n, end,
                                              cfg.guide_scale)
        t_n = grid_timesteps(self.sigmas)[n].to(device)
        with _autocast(device, trainer.autocast_dtype):
            v_pred = student(x_n, t_n, context)
        mask = n < cfg.teacher_steps if n.ndim == 2 else None  # an anchor (σ 0) is context, not a target
        if mask is not None and bool(mask.all()):
            mask = None
        return (consistency_loss(v_pred, v_target, cfg.loss, cfg.huber_c, mask=mask), self.sigmas[n].float(),
                cfg.shift)

    def _draw(self, trainer: Trainer, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's teacher grid index n [B] (int64; [B, F] on the staircase or with anchors) and noise ε like
        x0, on the CPU, from its own generator. An anchored sample (``timesteps.anchor``, :meth:`anchored
        <openwan.train.step_inputs.StepInputs.anchored>`) has its first latent frame at the grid's end N (σ 0) and
        the rest drawn as for a window one frame shorter. With ``objective: trajectory`` each draw is moved back to
        the start of its phase (a student point), so the generators draw the same as for consistency."""
        cfg, pt = self.cfg, self.teacher.base.cfg.patch_size[0]
        frames = x0.shape[2]
        anchored = trainer.anchored(x0.shape[0])
        per_frame = cfg.staircase or bool(anchored.any())  # n [B, F]
        if cfg.staircase:  # the staircase walks the frames after an anchor
            for groups in {(frames - pt if a else frames) // pt for a in anchored.tolist()}:
                check_window(cfg, groups)
        index, noise = [], []
        for gen, anchor in zip(trainer.generators("noise", x0.shape[0]), anchored.tolist()):
            rest = frames - pt if anchor else frames
            if cfg.staircase:  # the window's staircase at a random teacher sub-step, oldest frame cleanest
                n = draw_staircase_indices(gen, rest, pt, cfg.teacher_steps // (rest // pt))
            elif self.starts is None:
                n = torch.randint(cfg.teacher_steps, (1,), generator=gen)
            else:
                n = self.starts[torch.randint(self.starts.numel(), (1,), generator=gen)]
            if cfg.objective == "trajectory":
                n = n - n % (cfg.teacher_steps // cfg.student_steps)
            if anchor:
                n = torch.cat([torch.full((pt,), cfg.teacher_steps, dtype=torch.int64), n.expand(rest)])
            index.append(n.expand(frames)[None] if per_frame else n)
            noise.append(torch.randn(x0.shape[1:], generator=gen, dtype=torch.float32))
        return torch.cat(index), torch.stack(noise)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


__all__ = ["DEFAULT_BOUNDARY", "Distillation", "FrameTimesteps", "Teacher", "load_teacher"]
