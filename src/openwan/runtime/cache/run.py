"""One sampling run's cache state: the hooks a :class:`Cache` sets on the DiTs, and what they keep.

The pipeline makes a :class:`CacheRun` per call, tells it the step and expert (:meth:`CacheRun.begin`) and the CFG
branches each forward carries (:attr:`CacheRun.branches`), and asks it about the unconditional branch
(:meth:`CacheRun.reuse_uncond`, :meth:`CacheRun.uncond`, :meth:`CacheRun.store_guidance`). The models see two
seams only: ``WanDiT.cache`` around the block stack and ``SelfAttention.out_cache`` around each self-attention;
both are None outside a cached run, where the forward is the plain one.

What is kept lives only as long as its expert samples (the state of the previous expert is dropped at the switch):
per CFG branch, the attention cache holds one [1, L, D] output per block, the step cache one [1, L, D] residual and
block 0's last modulated input, the CFG cache one velocity difference [1, C, F, H, W].
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

from openwan.models.dit import WanDiT
from openwan.runtime.cache.policies import Cache


@dataclass
class _StepState:
    """A branch's step-cache state: block 0's last modulated input, the change accumulated since the last full
    evaluation, the skips in a row, and that evaluation's residual (stack output minus input)."""

    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    skips: int = 0
    residual: torch.Tensor | None = None


class CacheRun:
    """The state of ``cache`` over one run of ``steps`` denoising steps of ``models`` (the DiT experts).

    Refuses (ValueError, before anything runs) a policy that does not apply: too few steps, a model that is not an
    openwan WanDiT, the CFG cache without guidance or under CFG-parallel.
    """

    def __init__(self, cache: Cache, steps: int, models, *, guided: bool, cfg_parallel: bool = False):
        cache.check(steps)
        self.models = [m for m in models if m is not None]
        for model in self.models:
            if not isinstance(model, WanDiT):
                raise ValueError(f"diffusion caches know openwan's WanDiT only; this pipeline's DiT is a "
                                 f"{type(model).__name__}: sample it without cache=.")
        if cache.cfg is not None and not guided:
            raise ValueError("the CFG cache reuses the unconditional branch, but this run has no guidance (guide "
                             "scale 1): drop the CFG cache or set a guide scale other than 1.")
        if cache.cfg is not None and cfg_parallel:
            raise ValueError("the CFG cache skips the unconditional branch, which CFG-parallel computes on its own "
                             "rank: drop --cfg-parallel, or use a cache without a CFG part (e.g. the safe preset).")
        self.cache, self.steps = cache, steps
        self.step = 0
        self.branches: tuple[str, ...] = ("cond", "uncond")
        self.stats: Counter = Counter()
        self._model: WanDiT | None = None
        self._attention: dict[tuple[int, str], torch.Tensor] = {}
        self._step_states: dict[str, _StepState] = {}
        self._delta: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------ the loop's calls
    def attach(self) -> CacheRun:
        """Set the hooks on every model (returns self)."""
        for model in self.models:
            model.cache = self._blocks
            if self.cache.attention is not None:
                for block in model.blocks:
                    block.self_attn.out_cache = self._attend
        return self

    def detach(self) -> None:
        """Take the hooks off and drop what was kept."""
        for model in self.models:
            model.cache = None
            for block in model.blocks:
                block.self_attn.out_cache = None
        self._attention.clear()
        self._step_states.clear()
        self._delta = None

    def begin(self, i: int, model: WanDiT) -> None:
        """Step i starts with ``model``; an expert switch drops the other expert's state."""
        if model is not self._model:
            self._attention.clear()
            self._step_states.clear()
            self._delta = None
            self._model = model
        self.step = i

    def reuse_uncond(self) -> bool:
        """Whether this step runs only the conditional branch and rebuilds v_uncond with :meth:`uncond`."""
        cfg = self.cache.cfg
        return cfg is not None and self._delta is not None and cfg.reuse(self.step, self.steps)

    def uncond(self, v_cond: torch.Tensor) -> torch.Tensor:
        """v_uncond rebuilt from this step's v_cond and the last full step's weighted difference."""
        self.stats["uncond_reused"] += v_cond.shape[0]
        return v_cond - self._delta

    def store_guidance(self, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> None:
        """Keep Δ = v_cond - v_uncond, its bands weighted, where a later step of the late phase may reuse it."""
        cfg = self.cache.cfg
        if cfg is None or not any(cfg.reuse(j, self.steps) for j in range(self.step + 1, self.steps)):
            return
        delta = v_cond - v_uncond  # [1, C, F, H, W]
        if cfg.lf_weight == cfg.hf_weight:
            self._delta = delta if cfg.lf_weight == 1 else cfg.lf_weight * delta
        else:
            low = low_band(delta, cfg.cutoff)
            self._delta = cfg.lf_weight * low + cfg.hf_weight * (delta - low)

    def summary(self) -> dict[str, int]:
        """Counts of the run: block-stack evaluations (one per CFG branch) run and of an uncached run, and
        self-attention outputs (one per block and branch) computed and reused."""
        full = self.stats["forwards"] + self.stats["uncond_reused"]
        return {"dit_evaluations": self.stats["evaluations"], "uncached_dit_evaluations": full,
                "attention_computed": self.stats["attention_computed"],
                "attention_reused": self.stats["attention_reused"]}

    # ------------------------------------------------------------------------------------ the model hooks
    def _attend(self, module, compute) -> torch.Tensor:
        """SelfAttention.out_cache: recompute at the policy's steps, else the branches' last outputs."""
        names = self.branches
        keys = [(id(module), name) for name in names]
        if not self.cache.attention.recompute(self.step, self.steps) and all(k in self._attention for k in keys):
            self.stats["attention_reused"] += len(keys)
            return torch.cat([self._attention[k] for k in keys])
        out = compute()  # [B, L, D], one row per branch
        for j, key in enumerate(keys):
            self._attention[key] = out[j : j + 1]
        self.stats["attention_computed"] += len(keys)
        return out

    def _blocks(self, model: WanDiT, x: torch.Tensor, e0: torch.Tensor, run) -> torch.Tensor:
        """WanDiT.cache: the block stack's output [B, L, D] for x [B, L, D], rows skipped where the step cache
        allows (their input plus their branch's last residual)."""
        names = self.branches
        assert x.shape[0] == len(names), "one batch row per CFG branch"
        self.stats["forwards"] += len(names)
        if self.cache.step is None:
            self.stats["evaluations"] += len(names)
            return run(None, x)
        changes = _relative_change(model, x, e0, [self._step_states.get(n) for n in names])
        rows = [j for j, name in enumerate(names) if self._must_compute(name, changes[j])]
        self.stats["evaluations"] += len(rows)
        if len(rows) == len(names):
            out = run(None, x)
        else:
            out = x + torch.cat([self._step_states[n].residual for n in names])
            if rows:
                index = torch.tensor(rows, device=x.device)
                self.branches = tuple(names[j] for j in rows)  # the attention cache sees the rows it computes
                try:
                    out = out.index_copy(0, index, run(index, x[index]))
                finally:
                    self.branches = names
        for j in rows:
            self._step_states[names[j]].residual = out[j : j + 1] - x[j : j + 1]
        return out

    def _must_compute(self, name: str, change: tuple[torch.Tensor, float | None]) -> bool:
        """The step cache's decision for one branch; updates its accumulator."""
        policy, state = self.cache.step, self._step_states.setdefault(name, _StepState())
        modulated, distance = change
        state.previous = modulated
        forced = (self.step < policy.first(self.steps) or self.step == self.steps - 1 or state.residual is None
                  or state.skips >= policy.max_skip or distance is None)
        if not forced:
            state.accumulated += distance
            if state.accumulated < policy.threshold:
                state.skips += 1
                return False
        state.accumulated, state.skips = 0.0, 0
        return True


def _relative_change(model: WanDiT, x: torch.Tensor, e0: torch.Tensor, states: list[_StepState | None]
                     ) -> list[tuple[torch.Tensor, float | None]]:
    """Per row: block 0's modulated input [1, L, D] and its relative L1 change sum|m - m_prev| / sum|m_prev| from
    the branch's previous one (None without one). Under context parallel the sums run over every rank's tokens,
    so all ranks decide alike."""
    block = model.blocks[0]
    mod = block.modulation.float() + e0  # [B, 1|L, 6, D]
    modulated = torch.addcmul(mod[:, :, 0], block.norm1(x), 1 + mod[:, :, 1])  # [B, L, D]
    rows = [modulated[j : j + 1] for j in range(x.shape[0])]
    have = [j for j, s in enumerate(states) if s is not None and s.previous is not None]
    distances: list[float | None] = [None] * len(rows)
    if have:
        sums = torch.stack([torch.stack([(rows[j] - states[j].previous).abs().sum(),
                                         states[j].previous.abs().sum()]) for j in have])  # [n, 2]
        if model.token_split is not None:
            dist.all_reduce(sums, group=model.token_split.group)
        for j, (num, den) in zip(have, sums.tolist()):
            distances[j] = num / max(den, 1e-12)
    return list(zip(rows, distances))


def low_band(delta: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The part of ``delta`` [..., H, W] whose spatial frequencies lie within ``cutoff`` of the Nyquist radius
    (per frame, by a 2D FFT over the last two axes)."""
    h, w = delta.shape[-2:]
    fy = torch.fft.fftfreq(h, device=delta.device)[:, None]  # cycles per latent pixel, up to 0.5
    fx = torch.fft.rfftfreq(w, device=delta.device)[None, :]
    mask = (fy**2 + fx**2).sqrt() <= cutoff * 0.5  # [H, W//2 + 1]
    spectrum = torch.fft.rfft2(delta.float()) * mask
    return torch.fft.irfft2(spectrum, s=(h, w)).to(delta.dtype)
