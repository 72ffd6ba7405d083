"""The VAE trainer's config: one training stage (``openwan train-vae --config``), a typed, frozen dataclass read
from YAML or TOML through :mod:`openwan.configio` like :class:`~openwan.train.config.TrainConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from openwan.configio import check, parse, to_plain
from openwan.configs import VAE_PRESETS, VAEConfig, default_latent_stats
from openwan.train.config import load_config

# Demo-scale VAEs of the compression study (docs/vae_compression.md), beside configs.VAE_PRESETS' "demo" (the
# Wan2.1 design at base width 16, 4x8x8, z16). Each keeps the latent budget of "demo" on a 4n+1-frame clip:
# z · (1/s)² is 16/64 for s = 8, 64/256 for s = 16 and 256/1024 for s = 32.
STUDY_VAE_PRESETS: dict[str, VAEConfig] = {
    # Wan2.2's design: 2x2 patchify, residual down/up levels with parameter-free shortcuts, a wider decoder
    # (Wan2.2: 256 over 160), 4x16x16; z64 instead of Wan2.2's z48 so that the latent holds as many numbers as z16
    # at 4x8x8.
    "demo-22": VAEConfig(dim=16, decoder_dim=24, z_dim=64, patch_size=2, residual=True, **default_latent_stats(64)),
    # DC-AE's residual autoencoding taken one level further: the same patchify and shortcuts plus a fifth level,
    # 4x32x32, z256. The extra level is spatial only (time is already 4x).
    "demo-dcae": VAEConfig(dim=16, decoder_dim=24, z_dim=256, dim_mult=(1, 2, 4, 4, 4),
                           temporal_downsample=(False, False, True, True), patch_size=2, residual=True,
                           **default_latent_stats(256)),
}


def vae_preset(name: str) -> VAEConfig:
    """The VAEConfig of a preset name: one of configs.VAE_PRESETS or of :data:`STUDY_VAE_PRESETS`."""
    if name in STUDY_VAE_PRESETS:
        return STUDY_VAE_PRESETS[name]
    if name in VAE_PRESETS:
        return VAE_PRESETS[name]
    known = ", ".join([*VAE_PRESETS, *STUDY_VAE_PRESETS])
    raise ValueError(f"model.preset {name!r} is not a VAE preset; use one of: {known}.")


@dataclass(frozen=True)
class VAEModelConfig:
    """The VAE a stage starts from: ``init`` (stage 1: an image_vae.pth to continue; stage 2: the stage-1
    image_vae.pth, inflated; stage 3: the stage-2 Wan2.1_VAE.pth), else a fresh one of ``preset`` (stage 1 only).
    ``decoder_dim``: the decoder's base width (a narrower ``init`` decoder is widened to it). ``fresh_3d`` (stage 2,
    no ``init``): start from a fresh 3D VAE of ``preset`` instead of an inflated stage-1 model — the way to train a
    patchified residual (Wan2.2-style) preset, which has no 2D image stage. ``per_frame`` (stage 2, with a 3D
    ``init``): start from the init's newest-frame taps alone — every older temporal tap zeroed and the temporal
    down/up-sampling set to pass frames through, as inflating an image VAE leaves them — for a 3D VAE trained on
    single frames (``data.frames: 1``), whose other taps never trained."""

    preset: str = "wan2.1"
    init: str | None = None
    decoder_dim: int | None = None
    fresh_3d: bool = False
    per_frame: bool = False


@dataclass(frozen=True)
class VAEDataConfig:
    """Square crops of ``size`` pixels and ``frames`` frames (4n+1) from a clip manifest; None takes the stage's
    default (stage 1: 256 px images; stages 2-3: 5 frames at 128 px)."""

    manifest: str | None = None
    size: int | None = None
    frames: int | None = None
    fps: float = 16.0
    batch_size: int = 4
    num_workers: int = 2

    def crop(self, stage: int) -> tuple[int, int]:
        """(frames, size) of the clips stage ``stage`` trains on."""
        video = stage > 1
        return self.frames or (5 if video else 1), self.size or (128 if video else 256)


@dataclass(frozen=True)
class VAETrainConfig:
    """One VAE training stage (``openwan train-vae``). Loss weights follow the Wan paper; ``perceptual_weights``
    are local file paths. The schedule: linear warm-up, then cosine from ``lr`` to ``lr × min_lr_ratio`` at the last
    step (1: constant)."""

    stage: int = 1
    steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    grad_clip: float = 1.0  # 0: no clipping
    l1_weight: float = 3.0
    # Mean squared error: its gradient grows with the error, so a missing small object (a few large errors among
    # many small ones) pulls harder than under L1 alone; it is also what PSNR measures.
    l2_weight: float = 0.0
    kl_weight: float = 3e-6
    # The latent colour probe: a 1x1 linear map, trained along, must read each latent cell's mean colour from the
    # posterior mean. The VAE's RMS norms otherwise let training drop the chroma of flat areas.
    colour_weight: float = 0.0
    perceptual_weight: float = 3.0
    perceptual_weights: tuple[str, ...] = ()
    gan_weight: float = 0.5  # stage 3: times the adaptive weight (or alone when gan_adaptive is off)
    gan_start: int = 0  # stage 3: the step from which the discriminator trains and the GAN term applies
    gan_adaptive: bool = True
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_dim: int = 64
    disc_layers: int = 3
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # bf16 autocast needs CUDA; auto: bf16 on GPU
    log_every: int = 10
    save_every: int = 500  # 0: only at the end of fit
    keep_last: int = 2
    stats_batches: int = 16  # batches whose posterior means give the latent statistics
    # Stages 2-3: train the decoder side only; the latent space (and a DiT trained on it) stays valid, and the
    # exported file keeps the starting VAE's latent statistics.
    freeze_encoder: bool = False
    # LTX-Video's denoising decoder: with freeze_encoder, the decoder sees z_s = (1 - s) z + s e in the init VAE's
    # normalised latent space, s uniform in [low, high] per clip, and learns to decode the clean clip, so that a
    # sampler can stop one step early and leave the last denoising to it. (0, 0): clean latents.
    decode_noise: tuple[float, float] = (0.0, 0.0)
    model: VAEModelConfig = VAEModelConfig()
    data: VAEDataConfig = VAEDataConfig()
    output_dir: str | None = None
    resume: bool = False  # continue the run in output_dir from its newest checkpoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "disc_betas", tuple(self.disc_betas))
        object.__setattr__(self, "decode_noise", tuple(self.decode_noise))
        object.__setattr__(self, "perceptual_weights", tuple(str(p) for p in self.perceptual_weights))
        _validate_vae(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAETrainConfig:
        return parse(cls, data)


def _validate_vae(cfg: VAETrainConfig) -> None:
    check(cfg.stage in (1, 2, 3), "stage", "1, 2 or 3", cfg.stage)
    check(cfg.steps >= 0, "steps", "an integer >= 0", cfg.steps)
    for name in ("lr", "disc_lr"):
        check(getattr(cfg, name) > 0, name, "a number > 0", getattr(cfg, name))
    for name in ("l1_weight", "l2_weight", "kl_weight", "colour_weight", "perceptual_weight", "gan_weight",
                 "grad_clip", "weight_decay"):
        check(getattr(cfg, name) >= 0, name, "a number >= 0", getattr(cfg, name))
    if cfg.freeze_encoder and cfg.stage == 1:
        raise ValueError("freeze_encoder keeps a trained 3D VAE's latent space; use it in stage 2 or 3 with "
                         "init= that VAE.")
    if cfg.freeze_encoder and cfg.colour_weight:
        raise ValueError("colour_weight trains the encoder to carry colour, but freeze_encoder keeps it fixed; "
                         "set colour_weight 0 (--colour-weight 0) for a decoder-only run.")
    check(0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]", cfg.min_lr_ratio)
    for name in ("warmup_steps", "gan_start", "save_every"):
        check(getattr(cfg, name) >= 0, name, "an integer >= 0", getattr(cfg, name))
    for name in ("log_every", "keep_last", "stats_batches", "disc_dim", "disc_layers"):
        check(getattr(cfg, name) >= 1, name, "an integer >= 1", getattr(cfg, name))
    check(cfg.device in ("auto", "cpu") or cfg.device.startswith("cuda"), "device", "auto, cpu, cuda or cuda:N",
          cfg.device)
    frames, size = cfg.data.crop(cfg.stage)
    check(frames >= 1 and (frames - 1) % 4 == 0, "data.frames", "a frame count 4n+1 (1 = image)", frames)
    check(size >= 8 and size % 8 == 0, "data.size", "a pixel size that is a multiple of 8", size)
    check(cfg.data.fps > 0, "data.fps", "a positive number", cfg.data.fps)
    check(cfg.data.batch_size >= 1, "data.batch_size", "an integer >= 1", cfg.data.batch_size)
    check(cfg.data.num_workers >= 0, "data.num_workers", "an integer >= 0", cfg.data.num_workers)
    if cfg.model.decoder_dim is not None:
        check(cfg.model.decoder_dim >= 1, "model.decoder_dim", "an integer >= 1 (or null)", cfg.model.decoder_dim)
    _validate_study(cfg)


def _validate_study(cfg: VAETrainConfig) -> None:
    """The preset, fresh-3D and noisy-decoder fields."""
    preset = vae_preset(cfg.model.preset)
    if cfg.model.fresh_3d:
        check(cfg.stage == 2, "model.fresh_3d", "used in stage 2 (a fresh 3D VAE trained on clips)", cfg.stage)
        if cfg.model.init is not None:
            raise ValueError("model.fresh_3d builds a new VAE of model.preset, but model.init gives one to start "
                             "from; drop one of them (--fresh-3d or --init).")
    if cfg.stage == 1 and cfg.model.init is None and (preset.patch_size > 1 or preset.residual):
        raise ValueError(f"model.preset {cfg.model.preset!r} is a patchified residual VAE, which has no 2D image "
                         "stage; train it directly in 3D: stage 2 with model.fresh_3d (--stage 2 --fresh-3d).")
    if cfg.model.per_frame and (cfg.stage != 2 or cfg.model.init is None):
        raise ValueError("model.per_frame starts a clip stage from a 3D VAE trained on single frames; use it in stage "
                         "2 with model.init that VAE's Wan2.1_VAE.pth (--stage 2 --init FILE --per-frame-start).")
    noise = cfg.decode_noise
    check(len(noise) == 2 and 0 <= noise[0] <= noise[1] <= 0.5, "decode_noise",
          "two noise levels [low, high] with 0 <= low <= high <= 0.5", list(noise))
    if noise[1] > 0 and not cfg.freeze_encoder:
        raise ValueError("decode_noise adds noise in a trained VAE's normalised latent space (its statistics); "
                         "fine-tune that VAE's decoder: freeze_encoder (--freeze-encoder) with model.init (--init).")


def load_vae_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> VAETrainConfig:
    """:func:`load_config` of a VAE training stage."""
    return load_config(path, overrides, VAETrainConfig)


__all__ = ["STUDY_VAE_PRESETS", "VAEDataConfig", "VAEModelConfig", "VAETrainConfig", "load_vae_config", "vae_preset"]
