"""Training configs: typed, frozen dataclasses read from YAML or TOML, with ``a.b.0.c=value`` overrides.

A run is a :class:`TrainConfig`; its ``stages`` list is the curriculum (e.g. 256 px images, then joint
images + 5 s videos at 192 px, then 480 px, then 720 px), each stage with its own data mix, buckets, steps,
batch size and learning rate. Every field is checked when the config is built: an unknown field, a value of
the wrong type or out of range raises ``ValueError`` naming the field (dotted path) and what is allowed.
A VAE training stage is a :class:`~openwan.train.vae_config.VAETrainConfig` (``openwan train-vae --config``),
read the same way: both go through the one parser, :mod:`openwan.configio`.

The paper's curriculum for t2v-1.3B, as a config (``openwan train --config this.yaml``; numbers illustrative)::

    model: {preset: t2v-1.3B, vae: Wan2.1-T2V-1.3B/Wan2.1_VAE.pth,
            text_encoder: Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth, tokenizer: Wan2.1-T2V-1.3B/google/umt5-xxl}
    data: {manifest: data/clips.parquet, num_workers: 8}
    stages:
      - {name: image-256, steps: 100000, batch_size: 64, buckets: [[1, 256, 256]]}
      - {name: joint-192, steps: 100000, batch_size: 16, image_video_ratio: 0.25,
         buckets: [[1, 192, 336], [81, 192, 336]]}
      - {name: joint-480, steps: 50000, batch_size: 4, lr: 5.0e-5, cache_dir: cache/480p,
         buckets: [[1, 480, 832], [81, 480, 832]]}
    optim: {lr: 1.0e-4, betas: [0.9, 0.999], weight_decay: 0.01, grad_clip: 1.0}
    schedule: {kind: cosine, warmup_steps: 1000}
    timesteps: {mode: logit_normal, shift: resolution}
    ema: {decay: 0.9999}
    activation_checkpointing: true
    parallel: {cp_ulysses: 4}  # under torchrun: 8 processes = dp 2 (auto) x Ulysses 4
    checkpoint: {every: 1000, keep_last: 3}
    sample: {every: 5000, prompts: [a red fox runs through snow], size: [832, 480], frame_num: 81}
    output_dir: out/t2v-1.3B
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from openwan.configio import apply_overrides, check, parse, read_config_file, to_plain, write_yaml
from openwan.configs import DIT_PRESETS
from openwan.fileio import atomic_write
from openwan.train.distill_config import DistillConfig, check_window, validate_distill

DEFAULT_LORA_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)
LORA_TARGETS = DEFAULT_LORA_TARGETS + ("cross_attn.k_img", "cross_attn.v_img")
"""Linears of a DiT block LoRA can adapt (official module names, relative to ``blocks.{i}``)."""


@dataclass(frozen=True)
class ModelConfig:
    """What is trained, and the frozen encoders that turn raw data into latents and text states.

    ``path`` None starts the DiT from a random init of ``preset``. ``vae`` / ``text_encoder``: a weights path,
    or a preset name (``tiny``), which builds a *random* model — only useful for tests and debugging.
    ``tokenizer``: a tokenizer folder, or ``byt5`` (byte-level, no download; fits the ``tiny`` umT5 preset).
    """

    preset: str = "t2v-1.3B"
    path: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where batches come from: a clip manifest (raw videos) or a latent/text cache folder (one of the two)."""

    manifest: str | None = None
    cache_dir: str | None = None
    fps: float = 16.0
    num_workers: int = 0


@dataclass(frozen=True)
class StageConfig:
    """One curriculum stage. ``buckets`` are (frames, height, width) in pixels, frames 4n+1 (1 = image).

    ``image_video_ratio`` is handed to the bucket sampler (the data mix); ``lr`` / ``warmup_steps`` None take
    ``optim.lr`` / ``schedule.warmup_steps``; ``manifest`` / ``cache_dir`` replace ``data``'s for this stage;
    ``timesteps``, when set, replaces the run's whole ``timesteps`` section for this stage (noise levels in
    sequence, e.g. a stage weighted to high noise and then one to middle noise, on the same data).
    From a latent cache, a clip cached at a longer bucket of the same size trains at a shorter one of the stage
    as its first latent frames (exact for the causal VAE; ``CachedDataset.fit_buckets``): one cache of long clips
    serves a curriculum that starts on short clips or images. ``window: random`` instead cuts each sample's window
    of the stage's latent frames at a random latent offset of the longer cached clip (a fresh draw per sample and
    step, from the run's seeded draws): the middle of long clips, as a stream's sliding window sees them.
    """

    name: str = "stage"
    steps: int = 1000
    batch_size: int = 1
    lr: float | None = None
    warmup_steps: int | None = None
    buckets: tuple[tuple[int, int, int], ...] = ((1, 256, 256),)
    image_video_ratio: float | None = None
    manifest: str | None = None
    cache_dir: str | None = None
    timesteps: TimestepConfig | None = None
    window: Literal["start", "random"] = "start"  # where in a longer cached clip a stage's shorter bucket is cut


@dataclass(frozen=True)
class OptimConfig:
    """AdamW. Weight decay applies to matrices and convolution kernels, not to biases, norms or modulation."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning rate per stage: linear warm-up, then cosine decay to ``min_lr_ratio``·lr, or constant."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass(frozen=True)
class NoiseMix:
    """A second noise-level distribution, drawn by ``fraction`` of the samples instead of the main one: the same
    ``timesteps.mode``, with its own shift and logit-normal parameters."""

    fraction: float = 0.0
    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0


@dataclass(frozen=True)
class TimestepConfig:
    """Training noise levels σ: uniform or logit-normal, then shifted.

    ``shift`` is a number (1 = no shift), or ``resolution``: the Flux rule ``resolution_shift(tokens, ...)``
    with the four parameters below, so larger images/videos train at higher noise.
    ``per_frame``: the fraction of samples whose latent frames each draw their own σ (diffusion forcing, with
    per-token timesteps) instead of sharing one; frames then have to be predicted from cleaner neighbours, past or
    future, which rewards knowing which way time runs. Sampling is unchanged (one σ for all frames).
    ``first_frame``: the fraction of samples whose first latent frame is given clean (σ 0, no loss on it) while the
    rest share one drawn σ — Wan2.2 TI2V's joint text-and-image-to-video training: the model learns to continue
    a given first frame, where the prompt alone says where the scene goes. Drawn before ``per_frame``.
    ``mix``: other distributions (:class:`NoiseMix`), each drawn by its fraction of the samples (the rest draw from
    the main one), e.g. ``[{fraction: 0.5, shift: 1}]`` beside ``shift: 3``.
    ``min_sigma`` / ``max_sigma``: every draw (mixes and per-frame levels too) restricted to that range of noise
    levels, after the shift: a Wan2.2 A14B-style expert, e.g. the high-noise one on σ ≥ 0.875 and the low-noise one
    on σ ≤ 0.875, each trained as a run of its own. Clean first frames (``first_frame``) stay at σ 0.
    ``staircase``: the fraction of samples whose frames take the streaming sampler's per-frame levels
    (:mod:`openwan.diffusion.staircase`: the clip is the stream's window, one level per latent frame, oldest
    cleanest, on a grid of frames × ``staircase_steps`` Euler steps at ``staircase_shift``, at a random sub-step) —
    diffusion forcing on the stream's own schedule, for a model that streams with ``openwan stream --window F
    --steps-per-shift staircase_steps --sample-shift staircase_shift``. Drawn after ``first_frame`` and
    ``per_frame``; ``min_sigma`` / ``max_sigma`` do not apply to it.
    ``anchor``: the fraction of samples whose first latent frame is an anchor, as a stream with
    ``StreamConfig.anchor`` keeps one (:mod:`openwan.pipelines.stream`): the clip's first latent frame given clean
    (σ 0, no loss on it), followed by the rest of the window — with a stage's ``window: random``, the window's other
    frames cut at a random offset past the clip's first frame, so the anchor is often seconds before them — whose
    levels are drawn as above for a window one frame shorter (the staircase over its frames, a shared level, ...).
    Drawn apart from the rest, from the sample's own ``anchor`` generator.
    """

    mode: Literal["uniform", "logit_normal"] = "uniform"
    shift: float | Literal["resolution"] = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    base_tokens: int = 256
    base_shift: float = 0.5
    max_tokens: int = 4096
    max_shift: float = 1.15
    per_frame: float = 0.0
    first_frame: float = 0.0
    mix: tuple[NoiseMix, ...] = ()
    min_sigma: float = 0.0
    max_sigma: float = 1.0
    staircase: float = 0.0
    staircase_steps: int = 1
    staircase_shift: float = 3.0
    anchor: float = 0.0


@dataclass(frozen=True)
class EMAConfig:
    decay: float = 0.999  # 0 disables the EMA


@dataclass(frozen=True)
class CheckpointConfig:
    """``consolidated``: a multi-process run also writes the full weights and EMA as safetensors files (rank 0
    gathers them, one tensor at a time) next to its sharded checkpoint, so a step folder loads like a one-process
    one; set false for models too large for rank 0's CPU memory and export with ``openwan train --export``."""

    every: int = 1000  # steps between checkpoints (0: only at the end)
    keep_last: int = 3
    consolidated: bool = True


@dataclass(frozen=True)
class SampleConfig:
    """Sample videos from fixed prompts every ``every`` steps (0: never); needs a VAE, text encoder and tokenizer."""

    every: int = 0
    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    size: tuple[int, int] = (832, 480)  # width, height
    frame_num: int = 81
    steps: int = 30
    shift: float = 5.0
    guide_scale: float = 5.0
    seed: int = 0
    fps: int = 16


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS


@dataclass(frozen=True)
class ParallelConfig:
    """The device mesh of a ``torchrun`` job: ``dp × cp_ring × cp_ulysses`` must equal the number of processes.

    ``dp`` ranks hold different samples: a stage's ``batch_size`` is the global batch, split evenly over them.
    The ranks of one context-parallel group (``cp_ring × cp_ulysses``) share their samples and split each
    sample's tokens. ``dp: auto`` takes what the context-parallel sizes leave of the world size. ``fsdp`` shards
    parameters, gradients and optimizer state over all ranks (FSDP2); without it every rank holds the whole
    model and the gradients are all-reduced. One process (``python -m openwan train``) is a world of one.
    """

    dp: int | Literal["auto"] = "auto"
    cp_ulysses: int = 1
    cp_ring: int = 1
    fsdp: bool = True

    def sizes(self, world_size: int) -> dict[str, int]:
        """{"dp", "ring", "ulysses"} for ``world_size`` processes; ValueError if they do not multiply to it."""
        ring, ulysses = self.cp_ring, self.cp_ulysses
        cp = ring * ulysses
        dp = world_size // cp if self.dp == "auto" else self.dp
        if dp >= 1 and dp * cp == world_size:
            return {"dp": dp, "ring": ring, "ulysses": ulysses}
        started = f"{world_size} process{'es were' if world_size != 1 else ' was'} started (WORLD_SIZE)"
        sizes = f"parallel.dp={self.dp} × cp_ring={ring} × cp_ulysses={ulysses}"
        if self.dp == "auto" or world_size % cp:
            raise ValueError(f"{sizes} needs a number of processes divisible by {cp}, but {started}; choose "
                             f"cp_ring × cp_ulysses that divides {world_size}, or start a multiple of {cp} processes "
                             "(torchrun --nproc-per-node).")
        raise ValueError(f"{sizes} = {dp * cp} rank{'s' * (dp * cp != 1)}, but {started}; set parallel.dp="
                         f"{world_size // cp} (or auto), or start {dp * cp} process{'es' * (dp * cp != 1)} "
                         "(torchrun --nproc-per-node).")


@dataclass(frozen=True)
class LogConfig:
    every: int = 1  # steps between metric lines
    progress: bool = True
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    timesteps: TimestepConfig = TimestepConfig()
    ema: EMAConfig = EMAConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sample: SampleConfig = SampleConfig()
    lora: LoRAConfig | None = None  # None: full fine-tune
    distill: DistillConfig | None = None  # None: flow matching; set: consistency distillation of a teacher
    parallel: ParallelConfig = ParallelConfig()
    log: LogConfig = LogConfig()
    text_dropout: float = 0.1
    activation_checkpointing: bool = False  # recompute each DiT block in the backward
    compile: bool = False  # torch.compile each DiT block (in place: parameter names are unchanged)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    device: str = "auto"
    seed: int = 0
    output_dir: str = "runs/train"
    resume: str = "auto"  # auto (latest checkpoint in output_dir, if any) | never | a checkpoint folder

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_lr(self, stage: StageConfig) -> float:
        return self.optim.lr if stage.lr is None else stage.lr

    def stage_warmup(self, stage: StageConfig) -> int:
        return self.schedule.warmup_steps if stage.warmup_steps is None else stage.warmup_steps

    def stage_timesteps(self, stage: StageConfig) -> TimestepConfig:
        return self.timesteps if stage.timesteps is None else stage.timesteps

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        cfg = parse(cls, data)
        _validate(cfg)
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **{k: to_plain(v) for k, v in changes.items()}})


# ------------------------------------------------------------------------------------------ reading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), kind: type = TrainConfig) -> Any:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file (None: the defaults) as a ``kind`` config (:class:`TrainConfig`
    or :class:`~openwan.train.vae_config.VAETrainConfig`) and apply ``a.b.0.c=value`` overrides."""
    data = read_config_file(path) if path is not None else {}
    cfg = kind.from_dict(data)
    if overrides:
        cfg = kind.from_dict(apply_overrides(cfg.to_dict(), overrides))
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a resolved config (any config dataclass with ``to_dict``) as YAML, atomically."""
    text = write_yaml(cfg.to_dict())
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------------------ checks


def _validate(cfg: TrainConfig) -> None:
    check(cfg.model.preset in DIT_PRESETS or cfg.model.path is not None, "model.preset",
           "one of: " + ", ".join(DIT_PRESETS) + " (or set model.path)", cfg.model.preset)
    check(cfg.data.fps > 0, "data.fps", "a positive number", cfg.data.fps)
    check(cfg.data.num_workers >= 0, "data.num_workers", "an integer >= 0", cfg.data.num_workers)
    check(len(cfg.stages) >= 1, "stages", "a list of at least one stage", list(cfg.stages))
    for i, stage in enumerate(cfg.stages):
        _validate_stage(stage, f"stages.{i}")
    _validate_optim(cfg)
    _validate_timesteps(cfg.timesteps, "timesteps")
    check(0.0 <= cfg.ema.decay < 1.0, "ema.decay", "in [0, 1) (0 disables the EMA)", cfg.ema.decay)
    check(0.0 <= cfg.text_dropout <= 1.0, "text_dropout", "a probability in [0, 1]", cfg.text_dropout)
    check(cfg.checkpoint.every >= 0, "checkpoint.every", "an integer >= 0 (0: only at the end)", cfg.checkpoint.every)
    check(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "an integer >= 1", cfg.checkpoint.keep_last)
    check(cfg.log.every >= 1, "log.every", "an integer >= 1", cfg.log.every)
    _validate_sample(cfg.sample)
    if cfg.lora is not None:
        check(cfg.lora.rank >= 1, "lora.rank", "an integer >= 1", cfg.lora.rank)
        check(cfg.lora.alpha > 0, "lora.alpha", "a positive number", cfg.lora.alpha)
        bad = [t for t in cfg.lora.targets if t not in LORA_TARGETS]
        check(bool(cfg.lora.targets) and not bad, "lora.targets", "a non-empty list of: " + ", ".join(LORA_TARGETS),
               list(cfg.lora.targets))
    check(cfg.parallel.dp == "auto" or cfg.parallel.dp >= 1, "parallel.dp", "auto or an integer >= 1",
           cfg.parallel.dp)
    for axis in ("cp_ulysses", "cp_ring"):
        check(getattr(cfg.parallel, axis) >= 1, f"parallel.{axis}", "an integer >= 1", getattr(cfg.parallel, axis))
    check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device",
           "auto, cpu, cuda or cuda:N", cfg.device)
    check(cfg.resume in ("auto", "never") or bool(cfg.resume), "resume", "auto, never or a checkpoint folder",
           cfg.resume)
    for i, stage in enumerate(cfg.stages):  # an anchor needs a frame after it
        if cfg.stage_timesteps(stage).anchor > 0:
            short = [list(b) for b in stage.buckets if b[0] < 5]
            check(not short, f"stages.{i}.buckets", "clips of at least 5 frames (2 latent frames) when "
                  "timesteps.anchor > 0: the anchor is one latent frame and the window follows it", short)
    if cfg.distill is not None:
        validate_distill(cfg.distill, cfg.ema.decay)
        for stage in cfg.stages:  # a 4n+1-frame bucket is n+1 latent frames: the stream's window
            anchor = cfg.stage_timesteps(stage).anchor
            for frames in sorted({b[0] for b in stage.buckets}):
                check_window(cfg.distill, (frames - 1) // 4 + 1, anchor=anchor)


def _validate_stage(stage: StageConfig, name: str) -> None:
    check(stage.steps >= 1, f"{name}.steps", "an integer >= 1", stage.steps)
    check(stage.batch_size >= 1, f"{name}.batch_size", "an integer >= 1", stage.batch_size)
    if stage.lr is not None:
        check(stage.lr > 0, f"{name}.lr", "a positive number (or null for optim.lr)", stage.lr)
    if stage.warmup_steps is not None:
        check(stage.warmup_steps >= 0, f"{name}.warmup_steps", "an integer >= 0", stage.warmup_steps)
    check(len(stage.buckets) >= 1, f"{name}.buckets", "a list of at least one [frames, height, width]",
           list(stage.buckets))
    for j, (frames, height, width) in enumerate(stage.buckets):
        check(frames >= 1 and (frames - 1) % 4 == 0, f"{name}.buckets.{j}.0", "a frame count 4n+1 (1 = image)",
               frames)
        for k, size in ((1, height), (2, width)):
            check(size >= 16 and size % 16 == 0, f"{name}.buckets.{j}.{k}", "a pixel size that is a multiple of 16",
                   size)
    if stage.image_video_ratio is not None:
        check(stage.image_video_ratio >= 0, f"{name}.image_video_ratio", "a number >= 0 (or null)",
               stage.image_video_ratio)
    if stage.timesteps is not None:
        _validate_timesteps(stage.timesteps, f"{name}.timesteps")
    check(stage.window in ("start", "random"), f"{name}.window", "start or random", stage.window)
    if stage.window == "random":
        check(len({b[0] for b in stage.buckets}) == 1, f"{name}.buckets",
              "buckets of one frame count with window: random (the windows' length)", list(stage.buckets))


def _validate_timesteps(t: TimestepConfig, name: str) -> None:
    if t.shift != "resolution":
        check(math.isfinite(t.shift) and t.shift > 0, f"{name}.shift", "a positive number or resolution", t.shift)
    check(t.logit_std > 0, f"{name}.logit_std", "a positive number", t.logit_std)
    check(0 <= t.per_frame <= 1, f"{name}.per_frame", "a fraction from 0 to 1", t.per_frame)
    check(0 <= t.first_frame <= 1, f"{name}.first_frame", "a fraction from 0 to 1", t.first_frame)
    check(0 <= t.staircase <= 1, f"{name}.staircase", "a fraction from 0 to 1", t.staircase)
    check(t.first_frame + t.per_frame + t.staircase <= 1, f"{name}.first_frame + {name}.per_frame + {name}.staircase",
           "at most 1 (they are fractions of the same samples)", t.first_frame + t.per_frame + t.staircase)
    check(isinstance(t.staircase_steps, int) and t.staircase_steps >= 1, f"{name}.staircase_steps", "an integer >= 1",
           t.staircase_steps)
    check(math.isfinite(t.staircase_shift) and t.staircase_shift > 0, f"{name}.staircase_shift", "a positive number",
           t.staircase_shift)
    check(0 <= t.anchor <= 1, f"{name}.anchor", "a fraction from 0 to 1", t.anchor)
    for i, m in enumerate(t.mix):
        check(0 <= m.fraction <= 1, f"{name}.mix.{i}.fraction", "a fraction from 0 to 1", m.fraction)
        check(math.isfinite(m.shift) and m.shift > 0, f"{name}.mix.{i}.shift", "a positive number", m.shift)
        check(m.logit_std > 0, f"{name}.mix.{i}.logit_std", "a positive number", m.logit_std)
    check(0 <= t.min_sigma < t.max_sigma <= 1, f"{name}.min_sigma and {name}.max_sigma",
           "two noise levels with 0 <= min_sigma < max_sigma <= 1", (t.min_sigma, t.max_sigma))
    mixed = sum(m.fraction for m in t.mix)
    check(mixed <= 1, f"{name}.mix", "fractions that add up to at most 1 (they share the samples)", mixed)
    check(t.max_tokens != t.base_tokens and t.base_tokens > 0, f"{name}.max_tokens",
           f"a token count different from {name}.base_tokens (both > 0)", t.max_tokens)


def _validate_optim(cfg: TrainConfig) -> None:
    o, s = cfg.optim, cfg.schedule
    check(o.lr > 0, "optim.lr", "a positive number", o.lr)
    for i, beta in enumerate(o.betas):
        check(0.0 <= beta < 1.0, f"optim.betas.{i}", "in [0, 1)", beta)
    check(o.eps > 0, "optim.eps", "a positive number", o.eps)
    check(o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", o.weight_decay)
    check(o.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0 disables clipping)", o.grad_clip)
    check(s.warmup_steps >= 0, "schedule.warmup_steps", "an integer >= 0", s.warmup_steps)
    check(0.0 <= s.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "in [0, 1]", s.min_lr_ratio)


def _validate_sample(s: SampleConfig) -> None:
    check(s.every >= 0, "sample.every", "an integer >= 0 (0: never)", s.every)
    check(not (s.every and not s.prompts), "sample.prompts", "a non-empty list of prompts when sample.every > 0",
           list(s.prompts))
    check(s.frame_num >= 1 and (s.frame_num - 1) % 4 == 0, "sample.frame_num", "a frame count 4n+1", s.frame_num)
    for k, size in enumerate(s.size):
        check(size >= 16 and size % 16 == 0, f"sample.size.{k}", "a pixel size that is a multiple of 16", size)
    check(s.steps >= 1, "sample.steps", "an integer >= 1", s.steps)
    check(s.shift > 0, "sample.shift", "a positive number", s.shift)


__all__ = [
    "TrainConfig",
    "ModelConfig",
    "DataConfig",
    "StageConfig",
    "OptimConfig",
    "ScheduleConfig",
    "NoiseMix",
    "TimestepConfig",
    "EMAConfig",
    "CheckpointConfig",
    "SampleConfig",
    "LoRAConfig",
    "DistillConfig",
    "ParallelConfig",
    "LogConfig",
    "DEFAULT_LORA_TARGETS",
    "LORA_TARGETS",
    "load_config",
    "read_config_file",
    "save_config",
    "apply_overrides",
]
