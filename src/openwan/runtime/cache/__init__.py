"""Diffusion caches: sampling options that reuse work between denoising steps (docs/acceleration.md).

``WanPipeline(..., cache="fast")`` (or a :class:`Cache`, or one policy object) runs the denoising loop with a
:class:`CacheRun`, which sets the DiT's two cache seams for the run and takes them off after.
"""

from openwan.runtime.cache.policies import BRANCHES, PRESETS, AttentionCache, Cache, CFGCache, StepCache, resolve
from openwan.runtime.cache.run import CacheRun, low_band

__all__ = ["BRANCHES", "PRESETS", "AttentionCache", "CFGCache", "Cache", "CacheRun", "StepCache", "low_band",
           "resolve"]
