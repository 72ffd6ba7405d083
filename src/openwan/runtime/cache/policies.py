"""Diffusion cache policies: what to recompute and what to reuse while sampling, as frozen settings.

Three policies, each a small object that the denoising loop consults (:class:`openwan.runtime.cache.CacheRun`
applies them); a :class:`Cache` combines them, and the presets of :data:`PRESETS` are Caches.

* :class:`AttentionCache` (Pyramid Attention Broadcast, arXiv 2408.12588; FasterCache's attention reuse,
  arXiv 2410.19355): inside a window of the run, each block's self-attention output is recomputed every
  ``interval`` steps and reused in between. Outside the window (the first steps, where the layout forms, and
  the last ones, where the detail is drawn) it is always recomputed.
* :class:`CFGCache` (FasterCache's CFG-Cache): from ``start`` on, the unconditional branch runs only every
  ``interval`` steps. At a full step r the difference Δ_r = v_cond - v_uncond is kept, split by a spatial FFT of
  each latent frame into its low band LF(Δ_r) (frequencies within ``cutoff`` of the Nyquist radius) and its high
  band HF(Δ_r) = Δ_r - LF(Δ_r). Between full steps only the conditional branch runs and

      v_uncond(i) = v_cond(i) - (lf_weight·LF(Δ_r) + hf_weight·HF(Δ_r)),

  so the guided velocity is v_cond(i) + (scale - 1)·Δ̂. Weights above 1 make up for the band of the difference
  that grows as sampling proceeds (the high band in the late phase, after FasterCache); 1 and 1 reuse Δ_r as it is.
* :class:`StepCache` (TeaCache, arXiv 2411.19108; MagCache and EasyCache decide alike): the whole block stack is
  skipped while the accumulated relative L1 change of block 0's modulated input since the last full evaluation
  stays under ``threshold``; a skipped evaluation returns its input plus the residual (stack output minus stack
  input) of the last full evaluation. Each CFG branch and each expert keeps its own residual and its own
  accumulator; the steps before ``start`` (a fraction of the run: the high-noise steps that lay out the scene, where
  block 0's input changes little while the output changes most) and the last step are always computed, and at most
  ``max_skip`` steps in a row are skipped.

Every policy with caching disabled by its own settings (interval 1, threshold 0) gives the plain loop's numbers
bit for bit (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

BRANCHES = ("cond", "uncond")


def _window(start: float, end: float, steps: int) -> range:
    """The steps i with start·steps <= i < end·steps (fractions of the run, 0 = the first step)."""
    return range(math.ceil(start * steps - 1e-9), math.ceil(end * steps - 1e-9))


def _fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction of the run's steps in [0, 1]; got {value!r}.")


def _interval(name: str, value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1 (1 recomputes every step); got {value!r}.")


@dataclass(frozen=True)
class AttentionCache:
    """Self-attention outputs recomputed every ``interval`` steps inside [start, end) (fractions of the steps),
    reused in between."""

    interval: int = 2
    start: float = 0.2
    end: float = 0.9

    def __post_init__(self) -> None:
        _interval("AttentionCache.interval", self.interval)
        _fraction("AttentionCache.start", self.start)
        _fraction("AttentionCache.end", self.end)
        if self.start >= self.end:
            raise ValueError(f"AttentionCache.start ({self.start}) must be below AttentionCache.end ({self.end}).")

    def check(self, steps: int) -> None:
        """Refuse a run too short for one reuse inside the window."""
        window = _window(self.start, self.end, steps)
        if self.interval > 1 and len(window) < self.interval:
            raise ValueError(f"the attention cache (interval {self.interval}, window {self.start:g}-{self.end:g} of "
                             f"the steps) needs a window of at least {self.interval} steps; {steps} steps give "
                             f"{len(window)}: sample more steps or use a shorter interval.")

    def recompute(self, i: int, steps: int) -> bool:
        """Whether step i computes the self-attention (else it reuses the last output)."""
        window = _window(self.start, self.end, steps)
        return i not in window or (i - window.start) % self.interval == 0


@dataclass(frozen=True)
class CFGCache:
    """From ``start`` (a fraction of the steps) on, the unconditional branch every ``interval`` steps; between,
    v_uncond = v_cond - (lf_weight·LF(Δ) + hf_weight·HF(Δ)) from the last full step's Δ = v_cond - v_uncond."""

    interval: int = 2
    start: float = 0.5
    lf_weight: float = 1.0
    hf_weight: float = 1.0
    cutoff: float = 0.25  # the low band: spatial frequencies within this fraction of the Nyquist radius

    def __post_init__(self) -> None:
        _interval("CFGCache.interval", self.interval)
        _fraction("CFGCache.start", self.start)
        _fraction("CFGCache.cutoff", self.cutoff)
        for name in ("lf_weight", "hf_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 4.0):
                raise ValueError(f"CFGCache.{name} must be a number in [0, 4] (1 reuses the band as it is); "
                                 f"got {value!r}.")

    def check(self, steps: int) -> None:
        """Refuse a run whose late phase cannot hold one full step and one reuse before the last step."""
        late = _window(self.start, 1.0, steps)
        if self.interval > 1 and len(late) < self.interval + 1:
            raise ValueError(f"the CFG cache (interval {self.interval}, from {self.start:g} of the steps) needs a "
                             f"late phase of at least {self.interval + 1} steps; {steps} steps give {len(late)}: "
                             "sample more steps or use a shorter interval.")

    def reuse(self, i: int, steps: int) -> bool:
        """Whether step i skips the unconditional branch (the last step never does)."""
        late = _window(self.start, 1.0, steps)
        return i in late and i < steps - 1 and (i - late.start) % self.interval != 0


@dataclass(frozen=True)
class StepCache:
    """The block stack skipped while the accumulated relative L1 change of block 0's modulated input since the
    last full evaluation stays under ``threshold``; the steps before ``start`` (a fraction of the steps; the first
    step in any case) and the last step always run."""

    threshold: float = 0.2
    start: float = 0.3
    max_skip: int = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"StepCache.threshold must be a finite number >= 0 (0 computes every step); "
                             f"got {self.threshold!r}.")
        _fraction("StepCache.start", self.start)
        if not (isinstance(self.max_skip, int) and self.max_skip >= 1):
            raise ValueError(f"StepCache.max_skip must be an integer >= 1; got {self.max_skip!r}.")

    def first(self, steps: int) -> int:
        """The first step of a run of ``steps`` steps that may be skipped."""
        return max(1, _window(self.start, 1.0, steps).start)

    def check(self, steps: int) -> None:
        """Refuse a run with no step between the warm-up and the last step."""
        if self.threshold > 0 and self.first(steps) >= steps - 1:
            need = next(n for n in range(steps + 1, 10 * steps + 10) if self.first(n) < n - 1)
            raise ValueError(f"the step cache computes the steps before {self.start:g} of the run and the last "
                             f"step, so it needs at least {need} steps to skip any; got {steps}: sample more steps "
                             "or drop it.")


@dataclass(frozen=True)
class Cache:
    """A combination of policies (each None when not used); what ``WanPipeline(..., cache=)`` runs."""

    attention: AttentionCache | None = None
    cfg: CFGCache | None = None
    step: StepCache | None = None

    def __post_init__(self) -> None:
        for f, kind in zip(fields(self), (AttentionCache, CFGCache, StepCache)):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"Cache.{f.name} must be a {kind.__name__} or None; got {type(value).__name__}.")

    @property
    def active(self) -> bool:
        """Whether any policy is set."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def check(self, steps: int) -> None:
        """Each set policy's refusal of a run of ``steps`` steps."""
        for f in fields(self):
            policy = getattr(self, f.name)
            if policy is not None:
                policy.check(steps)


# Chosen from the calibration curve of the bundled model (docs/acceleration.md; `openwan calibrate-cache`).
PRESETS: dict[str, Cache] = {
    "off": Cache(),
    "safe": Cache(step=StepCache(threshold=0.2, max_skip=3, start=0.5)),
    "fast": Cache(step=StepCache(threshold=0.25, max_skip=3, start=0.3), cfg=CFGCache(interval=2, start=0.5)),
    "fastest": Cache(step=StepCache(threshold=1.0, max_skip=8, start=0.35), cfg=CFGCache(interval=3, start=0.3)),
}


def resolve(cache) -> Cache | None:
    """``cache=`` as a :class:`Cache` (None, "off" and an empty Cache: None). Takes a preset name, a Cache or one
    policy object."""
    if cache is None:
        return None
    if isinstance(cache, str):
        if cache not in PRESETS:
            raise ValueError(f"unknown cache preset {cache!r}; use one of: {', '.join(PRESETS)}.")
        cache = PRESETS[cache]
    elif isinstance(cache, AttentionCache):
        cache = Cache(attention=cache)
    elif isinstance(cache, CFGCache):
        cache = Cache(cfg=cache)
    elif isinstance(cache, StepCache):
        cache = Cache(step=cache)
    elif not isinstance(cache, Cache):
        raise ValueError(f"cache must be a preset name ({', '.join(PRESETS)}), a Cache or a cache policy "
                         f"(AttentionCache, CFGCache, StepCache); got {type(cache).__name__}.")
    return cache if cache.active else None
