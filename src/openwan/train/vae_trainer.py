"""VAE training in the paper's three stages, ending in a Wan2.1 VAE file that ``WanVAE.from_pretrained`` loads.

1. A 2D image VAE (:class:`~openwan.models.image_vae.ImageVAE`, the target VAE's widths) learns on images —
   stills, or the frames of clips, each coded on its own.
2. :func:`~openwan.train.vae_models.inflate_image_vae` turns it into the 3D causal
   :class:`~openwan.models.vae.WanVAE`, which codes a single image exactly as the image VAE did
   (:mod:`openwan.train.vae_models`); then it trains on short low-resolution clips.
3. The same with a 3D PatchGAN discriminator and hinge losses, switched on after ``gan_start`` steps, with the
   GAN term weighted adaptively (its gradient at the decoder's last layer sized to the reconstruction's).

Losses (see :mod:`openwan.train.vae_losses`): L1 ×3, KL ×3e-6, perceptual ×3 when local VGG16/AlexNet weights
are given — otherwise one log line says it is off. The framework is the DiT trainer's: the config system
(:class:`~openwan.train.vae_config.VAETrainConfig`), AdamW and the warm-up + cosine schedule
(:mod:`openwan.train.optim`),
atomic ``step-N/`` checkpoint folders with keep-last-N (:mod:`openwan.train.checkpoint`), ``metrics.jsonl``
(:class:`~openwan.train.metrics.MetricsLogger`) and the run lock. A resume restores model, optimizers,
discriminator, the posterior-noise generator and the data position, so a resumed run continues with the same
losses as one never interrupted (exactly so on CPU for a data source that is a list or that saves its position,
like :class:`~openwan.data.sources.SamplerLoader`).

Data: any iterable of batches ``{"video": [B, 3, T, H, W] in [-1, 1]}`` (an image is T = 1); ``None`` batches
(all items unreadable) are skipped; an iterable that ends is iterated again.

The final WanVAE's state dict has the official ``Wan2.1_VAE.pth`` layout; the per-channel mean and std of the
posterior mean over a sample of the data are written to a JSON file next to it
(:func:`~openwan.train.vae_models.export_wan_vae`, read back by :func:`~openwan.train.vae_models.load_trained_vae`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openwan.configs import VAEConfig
from openwan.data.sources import clip_loader
from openwan.models.image_vae import ImageVAE
from openwan.models.vae import WanVAE
from openwan.train import checkpoint as ckpt
from openwan.train.builders import autocast_dtype, resolve_device
from openwan.train.lock import RunLock
from openwan.train.metrics import MetricsLogger
from openwan.train.optim import build_adamw, clip_gradients, lr_scale_at, set_lr
from openwan.train.vae_config import VAETrainConfig, vae_preset
from openwan.train.vae_losses import (
    PatchDiscriminator3d,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    l1_loss,
    load_perceptual,
    noisy_latents,
    sample_posterior,
)
from openwan.train.vae_models import (
    cell_colours,
    decode_raw,
    encode_moments,
    export_image_vae,
    export_wan_vae,
    initial_model,
    is_image_vae_file,
    latent_stats,
    video_of,
    with_config,
    with_latent_stats,
)

log = logging.getLogger("openwan.train")

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
COLOUR_PROBE_FILE = "colour_probe.safetensors"
DISC_FILE = "discriminator.safetensors"
DISC_OPTIMIZER_FILE = "discriminator_optimizer.pt"
RNG_FILE = "rng.safetensors"
_OPTIONAL_FILES = (("colour_probe", COLOUR_PROBE_FILE), ("disc", DISC_FILE), ("disc_optimizer", DISC_OPTIMIZER_FILE))
LOG_VAR_RANGE = (-30.0, 20.0)  # keeps exp(log_var) finite early in training


def _check_model(model: nn.Module, stage: int) -> None:
    if stage == 1 and not isinstance(model, ImageVAE):
        raise ValueError(f"stage 1 trains a 2D ImageVAE; got {type(model).__name__} — build one with "
                         "ImageVAE(vae_config).")
    if stage in (2, 3) and not isinstance(model, WanVAE):
        raise ValueError(f"stage {stage} trains the 3D WanVAE; got {type(model).__name__} — inflate the stage-1 "
                         "model with inflate_image_vae(image_vae).")


# --------------------------------------------------------------------------------------- the trainer


class VAETrainer:
    """Trains ``model`` (an ImageVAE in stage 1, a WanVAE in stages 2 and 3) for the stage in ``cfg``.

    ``out_dir`` (optional) receives checkpoints (``step-XXXXXXXX/`` folders, the layout of
    :mod:`openwan.train.checkpoint`) and ``metrics.jsonl``; :meth:`fit` holds its run lock.
    """

    def __init__(self, model: nn.Module, cfg: VAETrainConfig, out_dir: str | Path | None = None) -> None:
        _check_model(model, cfg.stage)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)
        if cfg.precision == "bf16" and self.device.type != "cuda":
            raise ValueError("precision bf16 needs a CUDA device; use precision fp32 on the CPU.")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model = model.to(self.device, torch.float32).train()  # float32 master weights
        if cfg.freeze_encoder:  # the optimizer below takes only what still requires a gradient
            for part in (self.model.encoder, self.model.conv1):
                part.requires_grad_(False)
        self.perceptual = self._perceptual()
        self.disc = PatchDiscriminator3d(cfg.disc_dim, cfg.disc_layers).to(self.device) if cfg.stage == 3 else None
        self.colour_probe = _colour_probe(model.cfg.z_dim, cfg.seed).to(self.device) if cfg.colour_weight else None
        trained = [self.model] + ([self.colour_probe] if self.colour_probe is not None else [])
        self.optimizer = build_adamw(nn.ModuleList(trained).named_parameters(), lr=cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay, keep_scale=("gamma",))
        self.disc_optimizer = (build_adamw(self.disc.named_parameters(), lr=cfg.disc_lr, betas=cfg.disc_betas,
                                           weight_decay=cfg.weight_decay, keep_scale=("gamma",))
                               if self.disc is not None else None)
        # An own generator for posterior noise: checkpointed, and nothing else draws from it.
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        self.batches_seen = 0  # batches taken from the data (None batches included): where a resume continues
        self.data_state: Any = None  # the data source's own state_dict(), when it has one
        self._last_saved: int | None = None
        self.metrics = MetricsLogger(self.out_dir or ".", tensorboard=False, enabled=self.out_dir is not None)

    def _perceptual(self) -> nn.Module | None:
        cfg = self.cfg
        if cfg.perceptual_weight == 0:
            log.info("perceptual loss OFF: perceptual_weight is 0")
            return None
        model = load_perceptual(cfg.perceptual_weights)
        return model.to(self.device) if model is not None else None

    # ------------------------------------------------------------------------------------ one step

    def train_step(self, batch: dict | torch.Tensor) -> dict[str, float]:
        """One optimizer step of the VAE (and, in stage 3 from ``gan_start``, one of the discriminator)."""
        cfg = self.cfg
        video = video_of(batch).to(self.device, torch.float32)
        lr_scale = lr_scale_at(cfg, self.step)
        set_lr(self.optimizer, cfg.lr * lr_scale)
        start = time.perf_counter()
        with self._autocast():
            with torch.set_grad_enabled(not cfg.freeze_encoder):
                mu, log_var = encode_moments(self.model, video)
            log_var = log_var.float().clamp(*LOG_VAR_RANGE)
            z = sample_posterior(mu.float(), log_var, self.generator)
            if cfg.decode_noise[1] > 0:
                z = self._noised(z)
            recon = decode_raw(self.model, z).float()
        terms = {"l1": l1_loss(recon, video), "kl": kl_loss(mu, log_var, video[0].numel())}
        rec = cfg.l1_weight * terms["l1"]
        if cfg.l2_weight:
            terms["l2"] = (recon - video).square().mean()
            rec = rec + cfg.l2_weight * terms["l2"]
        if self.colour_probe is not None:
            terms["colour"] = (self.colour_probe(mu.float()) - cell_colours(self.model, video)).square().mean()
            rec = rec + cfg.colour_weight * terms["colour"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, video)
            rec = rec + cfg.perceptual_weight * terms["perceptual"]
        loss = rec + cfg.kl_weight * terms["kl"]
        gan_on = self.disc is not None and self.step >= cfg.gan_start
        if gan_on:
            loss = loss + self._generator_gan_term(recon, rec, terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if gan_on:
            terms["disc"] = self._disc_step(video, recon.detach())
        self.step += 1
        metrics = {"step": self.step, "loss": loss.item(), "rec": rec.item()}
        metrics.update({k: float(v.detach()) for k, v in terms.items()})
        metrics.update(grad_norm=grad_norm, lr=cfg.lr * lr_scale, step_time=time.perf_counter() - start)
        return metrics

    def _noised(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``z`` noised to a level drawn per clip from ``decode_noise``, in the normalised space the
        VAE's latent statistics define (the space a DiT samples in)."""
        low, high = self.cfg.decode_noise
        sigma = low + (high - low) * torch.rand(z.shape[0], generator=self.generator, device=z.device)
        noise = torch.randn(z.shape, generator=self.generator, device=z.device)
        cfg = self.model.cfg
        return noisy_latents(z, sigma, noise, cfg.latents_mean, cfg.latents_std)

    def _generator_gan_term(self, recon: torch.Tensor, rec: torch.Tensor, terms: dict) -> torch.Tensor:
        cfg = self.cfg
        self.disc.requires_grad_(False)  # the VAE step needs gradients through D, not into it
        with self._autocast():
            g_loss = hinge_g_loss(self.disc(recon))
        self.disc.requires_grad_(True)
        weight = torch.tensor(cfg.gan_weight, device=recon.device)
        if cfg.gan_adaptive:
            weight = weight * adaptive_gan_weight(rec, g_loss, self.model.decoder.head[-1].weight)
        terms["gan_g"], terms["gan_weight"] = g_loss, weight
        return weight * g_loss

    def _disc_step(self, video: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            d_loss = hinge_d_loss(self.disc(video), self.disc(fake))
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        clip_gradients(self.disc.parameters(), self.cfg.grad_clip)
        self.disc_optimizer.step()
        return d_loss.detach()

    def _autocast(self):
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    # -------------------------------------------------------------------------------------- loop

    def fit(self, data: Iterable, steps: int | None = None) -> list[dict[str, float]]:
        """Train until ``self.step`` reaches ``steps`` (default ``cfg.steps``); returns each step's metrics.

        With ``out_dir``, holds its run lock, saves a checkpoint every ``save_every`` steps and at the end, and
        appends metrics.
        """
        if self.out_dir is None:
            return self._fit(data, steps)
        with RunLock(self.out_dir):
            for path in ckpt.remove_stale(self.out_dir):
                log.info("removed %s, left by an interrupted checkpoint write", path)
            try:
                return self._fit(data, steps)
            finally:
                self.metrics.close()

    def _fit(self, data: Iterable, steps: int | None) -> list[dict[str, float]]:
        end = self.cfg.steps if steps is None else steps
        history: list[dict[str, float]] = []
        batches = self._batches(data)
        while self.step < end:
            metrics = self.train_step(next(batches))
            history.append(metrics)
            self._report(metrics, end)
            if self.out_dir is not None and self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_checkpoint()
        if self.out_dir is not None and self._last_saved != self.step:
            self.save_checkpoint()
        return history

    def _batches(self, data: Iterable) -> Iterator[dict | torch.Tensor]:
        """Batches in order, forever; on resume, continue where the checkpointed run was."""
        stateful = callable(getattr(data, "state_dict", None)) and callable(getattr(data, "load_state_dict", None))
        if stateful and self.data_state is not None:
            data.load_state_dict(self.data_state)
        skip = 0 if stateful else self.batches_seen
        if skip:
            log.info("resume: skipping the %d batches the checkpointed run had taken", skip)
        while True:
            empty = True
            for batch in data:
                empty = False
                if skip:
                    skip -= 1
                    continue
                self.batches_seen += 1
                if stateful:
                    self.data_state = data.state_dict()
                if batch is not None:
                    yield batch
            if empty:
                raise ValueError("the training data gave no batches; give a non-empty list or a re-iterable loader "
                                 "(a one-shot iterator runs out after its first pass).")

    def _report(self, metrics: dict[str, float], end: int) -> None:
        if self.step % self.cfg.log_every == 0 or self.step == end:
            keys = ("loss", "l1", "l2", "kl", "colour", "perceptual", "gan_g", "disc")
            shown = " ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
            log.info("vae stage %d step %d/%d %s (%.2f s/step)", self.cfg.stage, self.step, end, shown,
                     metrics["step_time"])
        self.metrics.log(self.step, {"stage": self.cfg.stage, **{k: v for k, v in metrics.items() if k != "step"}})

    # -------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain values (``torch.load(weights_only=True)`` reads it)."""
        state = {
            "stage": self.cfg.stage,
            "step": self.step,
            "batches_seen": self.batches_seen,
            "data_state": self.data_state,
            "model_kind": type(self.model).__name__,
            "model_config": self.model.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "train_config": self.cfg.to_dict(),
        }
        if self.colour_probe is not None:
            state["colour_probe"] = self.colour_probe.state_dict()
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.cfg.stage:
            raise ValueError(f"the checkpoint is of stage {state['stage']}, this run is stage {self.cfg.stage}; "
                             "resume with the same stage, or start the next stage from that stage's output file.")
        if state["model_kind"] != type(self.model).__name__:
            raise ValueError(f"the checkpoint holds a {state['model_kind']}, not a {type(self.model).__name__}.")
        frozen = bool(state["train_config"].get("freeze_encoder", False))
        if frozen != self.cfg.freeze_encoder:
            raise ValueError(f"the checkpoint's run {'froze' if frozen else 'trained'} the encoder; resume with "
                             f"freeze_encoder {frozen} (--freeze-encoder {'on' if frozen else 'off'}).")
        if (self.colour_probe is not None) != ("colour_probe" in state):
            had = "colour_weight > 0" if "colour_probe" in state else "colour_weight 0"
            raise ValueError(f"the checkpoint's run trained with {had}; resume with the same --colour-weight "
                             "setting (its optimizer state covers the colour probe or not).")
        self.model.load_state_dict(state["model"])
        if self.colour_probe is not None:
            self.colour_probe.load_state_dict(state["colour_probe"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc is not None:
            if "disc" not in state:
                raise ValueError("the checkpoint has no discriminator; resume a stage-3 run from a stage-3 checkpoint.")
            self.disc.load_state_dict(state["disc"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.batches_seen = int(state["step"]), int(state["batches_seen"])
        self.data_state = state["data_state"]
        self._last_saved = self.step

    def save_checkpoint(self) -> Path:
        """Write the trainer state as the step folder of the current step in ``out_dir`` (atomically; see
        :mod:`openwan.train.checkpoint`), keeping the newest ``keep_last``; returns the folder."""
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs a trainer built with out_dir.")
        folder = ckpt.save_checkpoint(self.out_dir, self.step, checkpoint_files(self.state_dict()), self.cfg.keep_last)
        self._last_saved = self.step
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore a step folder written by :meth:`save_checkpoint`; the metrics of later steps are dropped (they
        are about to be trained again)."""
        self.load_state_dict(read_vae_checkpoint(folder))
        self.metrics.truncate_after(self.step)


def _colour_probe(z_dim: int, seed: int) -> nn.Module:
    """The latent colour probe (training only: saved in checkpoints, never exported), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Conv3d(z_dim, 3, 1)


# ------------------------------------------------------------------------------------------- files


def checkpoint_files(state: dict[str, Any]) -> dict[str, Any]:
    """A :meth:`VAETrainer.state_dict` as the files of a step folder: tensors as safetensors, optimizer states as
    .pt, the rest (step, data position, configs) in trainer_state.json."""
    files = {MODEL_FILE: state["model"], OPTIMIZER_FILE: state["optimizer"],
             RNG_FILE: {"posterior": state["generator"], "torch_cpu": state["torch_rng"]}}
    for key, name in _OPTIONAL_FILES:
        if key in state:
            files[name] = state[key]
    plain = {k: state[k] for k in ("stage", "step", "batches_seen", "data_state", "model_kind", "model_config",
                                   "train_config")}
    files[ckpt.STATE_FILE] = {"format": 1, "kind": "vae", **plain}
    return files


def read_vae_checkpoint(path: str | Path) -> dict[str, Any]:
    """The :meth:`VAETrainer.state_dict` saved in a step folder (or the newest one of a run folder)."""
    folder = ckpt.resolve_checkpoint(path)
    state = ckpt.read_state(folder)
    if state.get("kind") != "vae":
        raise ValueError(f"{folder} is not a VAE training checkpoint (written by VAETrainer.save_checkpoint).")
    rng = ckpt.read_file(folder / RNG_FILE)
    state.update(model=ckpt.read_file(folder / MODEL_FILE), optimizer=ckpt.read_file(folder / OPTIMIZER_FILE),
                 generator=rng["posterior"], torch_rng=rng["torch_cpu"])
    for key, name in _OPTIONAL_FILES:
        if (folder / name).is_file():
            state[key] = ckpt.read_file(folder / name)
    return state


def model_from_checkpoint(path_or_state: str | Path | dict[str, Any]) -> nn.Module:
    """A model of the checkpoint's kind and architecture (weights are restored by ``load_checkpoint``)."""
    state = path_or_state if isinstance(path_or_state, dict) else read_vae_checkpoint(path_or_state)
    cfg = VAEConfig.from_dict(state["model_config"])
    return ImageVAE(cfg) if state["model_kind"] == "ImageVAE" else WanVAE(cfg)


# ------------------------------------------------------------------------------------------- a stage


def run_stage(cfg: VAETrainConfig, data: Iterable, out_dir: str | Path | None = None, *,
              model: nn.Module | None = None, init: str | Path | None = None, vae_config: VAEConfig | None = None,
              resume: bool | None = None, decoder_dim: int | None = None) -> Path:
    """One stage end to end: start (or resume from ``out_dir``'s newest checkpoint), train ``cfg.steps`` steps,
    export. Returns the exported file: ``image_vae.pth`` (stage 1) or ``Wan2.1_VAE.pth`` (stages 2, 3).

    ``out_dir``, ``init``, ``resume``, ``decoder_dim`` and ``vae_config`` default to the config's ``output_dir``,
    ``model.init``, ``resume``, ``model.decoder_dim`` and ``model.preset``. ``model`` (optional) replaces
    :func:`initial_model`'s choice for a fresh start (a resumed run keeps its checkpoint's widths and must agree).
    """
    out_dir = out_dir if out_dir is not None else cfg.output_dir
    if out_dir is None:
        raise ValueError("a VAE stage needs an output folder: set output_dir (--out).")
    init = init if init is not None else cfg.model.init
    resume = cfg.resume if resume is None else resume
    decoder_dim = decoder_dim if decoder_dim is not None else cfg.model.decoder_dim
    if vae_config is None and model is None and init is None:
        vae_config = vae_preset(cfg.model.preset)
    out_dir = Path(out_dir)
    with RunLock(out_dir):  # held from the look for checkpoints to the export
        trainer = _stage_trainer(cfg, out_dir, model, init, vae_config, resume, decoder_dim)
        trainer.fit(data)
        if cfg.stage == 1:
            path = export_image_vae(trainer.model, out_dir)
        elif cfg.freeze_encoder:  # same encoder, same latents: the statistics it came with still hold
            # the decoder's record: the noise range this stage trained it on (None: its last training was clean)
            noise = tuple(cfg.decode_noise) if cfg.decode_noise[1] > 0 else None
            path = export_wan_vae(with_config(trainer.model, decode_noise=noise), out_dir)
        else:  # a new latent space: new statistics (and no trained noise range for it yet)
            mean, std = latent_stats(trainer.model, data, cfg.stats_batches)
            path = export_wan_vae(with_latent_stats(trainer.model, mean, std), out_dir)
    log.info("stage %d done: wrote %s (and %s)", cfg.stage, path, path.with_suffix(".json").name)
    return path


def _stage_trainer(cfg: VAETrainConfig, out_dir: Path, model: nn.Module | None, init: str | Path | None,
                   vae_config: VAEConfig | None, resume: bool, decoder_dim: int | None) -> VAETrainer:
    """The trainer of a stage: resumed from ``out_dir``'s newest checkpoint, or fresh (refusing a folder that holds
    checkpoints unless ``resume``)."""
    checkpoint = ckpt.resume_folder(out_dir, "auto" if resume else "never")
    if checkpoint is not None:
        state = read_vae_checkpoint(checkpoint)
        trainer = VAETrainer(model_from_checkpoint(state), cfg, out_dir)
        width = trainer.model.cfg.decoder_width
        if decoder_dim is not None and decoder_dim != width:
            raise ValueError(f"the run in {out_dir} trains a decoder {width} channels wide, not {decoder_dim}; "
                             "resume it without a different decoder width, or choose another output folder.")
        trainer.load_checkpoint(checkpoint)
        log.info("resumed from %s at step %d", checkpoint, trainer.step)
        return trainer
    if model is None:
        _refuse_image_init(cfg, init)
        model = initial_model(cfg.stage, init, vae_config, decoder_dim=decoder_dim, fresh_3d=cfg.model.fresh_3d,
                              per_frame=cfg.model.per_frame)
    return VAETrainer(model, cfg, out_dir)


def _refuse_image_init(cfg: VAETrainConfig, init: str | Path | None) -> None:
    """The stage options that need a trained 3D VAE as ``init``, refused for none or an image VAE."""
    if not (cfg.freeze_encoder or cfg.model.per_frame):
        return
    image = init is not None and is_image_vae_file(init)  # read only when one of them asks
    if cfg.freeze_encoder and (init is None or image):
        raise ValueError("freeze_encoder fine-tunes the decoder of a trained 3D VAE; give init= its "
                         "Wan2.1_VAE.pth (an image VAE has no latent space or statistics to keep yet).")
    if cfg.model.per_frame and image:
        raise ValueError(f"per_frame starts from a 3D VAE trained on single frames; {init} is an image VAE, which "
                         "inflation already starts frame by frame: drop per_frame (--per-frame-start).")


def train_vae(cfg: VAETrainConfig) -> Path:
    """``openwan train-vae``: the stage of ``cfg`` on clips of ``cfg.data.manifest`` (cropped to
    ``cfg.data.crop(stage)``), written to ``cfg.output_dir``. Returns the exported file."""
    if cfg.data.manifest is None:
        raise ValueError("VAE training needs a clip manifest: set data.manifest (--manifest).")
    if not cfg.resume:  # before the data is read and the output folder made (a resumed run keeps its checkpoint)
        _refuse_image_init(cfg, cfg.model.init)
    frames, size = cfg.data.crop(cfg.stage)
    torch.manual_seed(cfg.seed)
    data = clip_loader(cfg.data.manifest, frames, size, fps=cfg.data.fps, batch_size=cfg.data.batch_size,
                       num_workers=cfg.data.num_workers, seed=cfg.seed)
    return run_stage(cfg, data)


__all__ = [
    "VAETrainConfig",
    "VAETrainer",
    "checkpoint_files",
    "model_from_checkpoint",
    "read_vae_checkpoint",
    "run_stage",
    "train_vae",
]
