"""The reference sampling defaults per model family and task (see the release's generate.py and configs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

SIZES_480P = ((832, 480), (480, 832))
SIZES_720P = ((1280, 720), (720, 1280))
SIZES_TI2V = ((1280, 704), (704, 1280))  # 720p rounded to the TI2V-5B's multiples of 32


@dataclass(frozen=True)
class SamplingDefaults:
    """Defaults of one model family; ``guide_scale`` is a (low, high) pair for two-expert models."""

    sample_steps: int = 50
    sample_shift: float = 5.0
    guide_scale: float | tuple[float, float] = 5.0
    frame_num: int = 81
    fps: int = 16
    size: tuple[int, int] = (832, 480)
    sizes: tuple[tuple[int, int], ...] = SIZES_480P + SIZES_720P
    boundary: float | None = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

    def for_task(self, task: str) -> SamplingDefaults:
        if task == "t2i":
            return dataclasses.replace(self, frame_num=1)
        return self


FAMILY_DEFAULTS: dict[str, SamplingDefaults] = {
    "t2v-1.3B": SamplingDefaults(sizes=SIZES_480P),
    "t2v-14B": SamplingDefaults(size=(1280, 720)),
    "i2v-14B-480p": SamplingDefaults(sample_steps=40, sample_shift=3.0),
    "i2v-14B-720p": SamplingDefaults(sample_steps=40, size=(1280, 720)),
    "flf2v-14B": SamplingDefaults(sample_shift=16.0, size=(1280, 720)),
    "t2v-A14B": SamplingDefaults(sample_steps=40, sample_shift=12.0, guide_scale=(3.0, 4.0), boundary=0.875,
                                 size=(1280, 720)),
    "i2v-A14B": SamplingDefaults(sample_steps=40, sample_shift=5.0, guide_scale=(3.5, 3.5), boundary=0.900,
                                 size=(1280, 720)),
    # VACE: its base's defaults with shift 16, as the reference's generate.py samples it.
    "vace-1.3B": SamplingDefaults(sample_shift=16.0, sizes=SIZES_480P),
    "vace-14B": SamplingDefaults(sample_shift=16.0, size=(1280, 720)),
    "ti2v-5B": SamplingDefaults(sample_steps=50, sample_shift=5.0, guide_scale=5.0, frame_num=121, fps=24,
                                size=(1280, 704), sizes=SIZES_TI2V),
    # Small models (tests, the bundled demo): trained with "" as the unconditional prompt. Guidance 1.5, chosen on
    # the bundled model's training combinations (docs/demo_model.md): at 5 its squares overshoot into cups, wider at
    # the top, as the guided step pushes away from the unconditional mix of shapes and its upward triangles.
    "tiny": SamplingDefaults(sample_steps=20, sample_shift=3.0, guide_scale=1.5, frame_num=17, size=(64, 64),
                             sizes=((64, 64),), negative_prompt=""),
}


def defaults_for(cfg, two_experts: bool = False) -> SamplingDefaults:
    """The family defaults for a loaded DiT config (by size and kind)."""
    if cfg.dim < 1536:
        return FAMILY_DEFAULTS["tiny"]
    if cfg.model_type == "ti2v":
        return FAMILY_DEFAULTS["ti2v-5B"]
    if cfg.model_type == "vace":
        return FAMILY_DEFAULTS["vace-1.3B" if cfg.dim == 1536 else "vace-14B"]
    if two_experts:
        return FAMILY_DEFAULTS["i2v-A14B" if cfg.in_dim > cfg.out_dim else "t2v-A14B"]
    if cfg.dim == 1536:
        return FAMILY_DEFAULTS["t2v-1.3B"]
    if cfg.model_type == "flf2v":
        return FAMILY_DEFAULTS["flf2v-14B"]
    if cfg.model_type == "i2v":
        return FAMILY_DEFAULTS["i2v-14B-480p"]
    return FAMILY_DEFAULTS["t2v-14B"]
