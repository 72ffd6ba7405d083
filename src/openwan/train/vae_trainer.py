"""VAE training in the paper's three stages, ending in a Wan2.1 VAE file that ``WanVAE.from_pretrained`` loads.

1. A 2D image VAE (:class:`~openwan.models.image_vae.ImageVAE`, the target VAE's widths) learns on images —
   stills, or the frames of clips, each coded on its own.
2. :func:`inflate_image_vae` turns it into the 3D causal :class:`~openwan.models.vae.WanVAE`: each 2D kernel goes
   in the last temporal tap (the one that sees the current frame), the other taps are zero, and the temporal
   resampling convs start as "take the newest frame" (down) and "repeat the frame" (up). WanVAE codes a first
   frame with the last taps only and skips the temporal resampling there, so a single image encodes and decodes
   exactly as before; a clip starts as latent k = image latent of frame 4k, each decoded into 4 equal frames.
   Then it trains on short low-resolution clips.
3. The same with a 3D PatchGAN discriminator and hinge losses, switched on after ``gan_start`` steps, with the
   GAN term weighted adaptively (its gradient at the decoder's last layer sized to the reconstruction's).

Losses (see :mod:`openwan.train.vae_losses`): L1 ×3, KL ×3e-6, perceptual ×3 when local VGG16/AlexNet weights
are given — otherwise one log line says it is off. The framework is the DiT trainer's: the config system
(:class:`~openwan.train.config.VAETrainConfig`), AdamW and the warm-up + cosine schedule (:mod:`openwan.train.optim`),
atomic ``step-N/`` checkpoint folders with keep-last-N (:mod:`openwan.train.checkpoint`), ``metrics.jsonl``
(:class:`~openwan.train.metrics.MetricsLogger`) and the run lock. A resume restores model, optimizers,
discriminator, the posterior-noise generator and the data position, so a resumed run continues with the same
losses as one never interrupted (exactly so on CPU for a data source that is a list or that saves its position,
like :class:`~openwan.data.sources.SamplerLoader`).

Data: any iterable of batches ``{"video": [B, 3, T, H, W] in [-1, 1]}`` (an image is T = 1); ``None`` batches
(all items unreadable) are skipped; an iterable that ends is iterated again.

The final WanVAE's state dict has the official ``Wan2.1_VAE.pth`` layout; the per-channel mean and std of the
posterior mean over a sample of the data are written to a JSON file next to it (:func:`export_wan_vae`,
read back by :func:`load_trained_vae`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openwan.checkpoints.io import read_state_dict
from openwan.configs import VAEConfig, get_preset
from openwan.data.sources import clip_loader
from openwan.fileio import atomic_torch_save, atomic_write
from openwan.models.image_vae import ImageVAE
from openwan.models.loading import load_strict
from openwan.models.vae import FeatureCache, WanVAE
from openwan.train import checkpoint as ckpt
from openwan.train.builders import autocast_dtype, resolve_device
from openwan.train.config import VAETrainConfig
from openwan.train.lock import RunLock
from openwan.train.metrics import MetricsLogger
from openwan.train.optim import build_adamw, clip_gradients, lr_scale_at, set_lr
from openwan.train.vae_losses import (
    PatchDiscriminator3d,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    l1_loss,
    load_perceptual,
    sample_posterior,
)

log = logging.getLogger("openwan.train")

IMAGE_VAE_NAME = "image_vae"  # stage 1 output: image_vae.pth + image_vae.json (its VAEConfig)
WAN_VAE_NAME = "Wan2.1_VAE"  # stage 2/3 output: Wan2.1_VAE.pth + Wan2.1_VAE.json (config with latent stats)
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
COLOUR_PROBE_FILE = "colour_probe.safetensors"
DISC_FILE = "discriminator.safetensors"
DISC_OPTIMIZER_FILE = "discriminator_optimizer.pt"
RNG_FILE = "rng.safetensors"
_OPTIONAL_FILES = (("colour_probe", COLOUR_PROBE_FILE), ("disc", DISC_FILE), ("disc_optimizer", DISC_OPTIMIZER_FILE))
LOG_VAR_RANGE = (-30.0, 20.0)  # keeps exp(log_var) finite early in training


# --------------------------------------------------------------------------------------- the models


def inflate_image_vae(image_vae: ImageVAE) -> WanVAE:
    """The 3D causal WanVAE that codes a single image exactly as ``image_vae`` does (see the module doc)."""
    vae = WanVAE(image_vae.cfg).to(image_vae.dtype)
    flat = image_vae.state_dict()
    state = vae.state_dict()
    assert set(flat) == {k for k in state if ".time_conv." not in k}, "ImageVAE and WanVAE layouts differ"
    with torch.no_grad():
        for key, target in state.items():
            if ".time_conv." in key:
                continue  # set per module below
            src = flat[key]
            if src.shape == target.shape:
                target.copy_(src)
            else:  # [o, i, 1, k, k] -> [o, i, kt, k, k]: the kernel in the newest-frame tap, zeros before it
                assert src.shape[2] == 1 and src.shape[:2] + src.shape[3:] == target.shape[:2] + target.shape[3:], key
                target.zero_()
                target[:, :, -1:] = src
        vae.load_state_dict(state)
        for module in vae.modules():
            mode = getattr(module, "mode", None)
            if mode in ("downsample3d", "upsample3d"):
                _init_time_conv(module.time_conv, repeats=2 if mode == "upsample3d" else 1)
    return vae.to(next(image_vae.parameters()).device)


def widen_decoder(model: WanVAE | ImageVAE, decoder_dim: int, *, init_scale: float = 0.1,
                  seed: int = 0) -> WanVAE | ImageVAE:
    """``model`` with its decoder widened to base width ``decoder_dim``, coding almost exactly as before.

    Every decoder channel keeps its weights; the added channels read the old ones through a fresh init times
    ``init_scale`` (so they carry small activations and get gradients from the start) and are read by the old
    channels through zero weights. The RMSNorm gains are scaled by sqrt(old / new width), since the norm
    multiplies by sqrt(channels), and the mid-block attention's queries by sqrt(new / old), since its logits
    divide by sqrt(channels); the only change left is the added channels' share in each norm, about
    ``init_scale``² (``init_scale=0`` is exact, but then the added channels never train). The encoder, and
    with it the latent space, is untouched: a DiT trained on the latents keeps working.
    """
    old_width = model.cfg.decoder_width
    if decoder_dim < old_width:
        raise ValueError(f"decoder_dim {decoder_dim} is narrower than the model's decoder ({old_width}); a decoder "
                         "can only be widened — train a new VAE for a narrower one.")
    if decoder_dim == old_width:
        return model
    cfg = model.cfg.replace(decoder_dim=None if decoder_dim == model.cfg.dim else decoder_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = type(model)(cfg)
    old_state = model.state_dict()
    new_state = wide.state_dict()
    with torch.no_grad():
        for key, target in new_state.items():
            src = old_state[key].to(target.dtype)
            if src.shape == target.shape:
                target.copy_(src)
                continue
            # Output blocks laid side by side: the attention's [q; k; v], the temporal upsample's two frames.
            blocks = 3 if ".to_qkv." in key else 2 if ".time_conv." in key else 1
            rows = _widened_index(src.shape[0], target.shape[0], blocks)
            if key.endswith("gamma"):
                factor = math.sqrt(src.shape[0] / target.shape[0])
                target.fill_(factor)
                target[rows] = src * factor
            elif src.ndim == 1:  # bias
                target.zero_()
                target[rows] = src
            else:
                cols = _widened_index(src.shape[1], target.shape[1], 1)
                target.mul_(init_scale)
                target[rows] = 0.0
                target[rows[:, None], cols] = src
            if ".to_qkv." in key:  # queries: the softmax scale is 1/sqrt(new width) now
                q_rows = rows[: src.shape[0] // 3]
                target[q_rows] *= math.sqrt(target.shape[0] / src.shape[0])
    wide.load_state_dict(new_state)
    param = next(model.parameters())
    return wide.to(device=param.device, dtype=param.dtype).train(model.training)


def _widened_index(old: int, new: int, blocks: int) -> torch.Tensor:
    """Where each of ``old`` channels (``blocks`` equal blocks) sits among ``new``: block b's channel j at
    b · new/blocks + j."""
    old_block, new_block = old // blocks, new // blocks
    return torch.tensor([b * new_block + j for b in range(blocks) for j in range(old_block)])


def _init_time_conv(conv: nn.Module, repeats: int) -> None:
    """Identity on the newest-frame tap, ``repeats`` times over the output channels (up: both output frames)."""
    out_ch, in_ch = conv.weight.shape[:2]
    assert out_ch == repeats * in_ch
    conv.weight.zero_()
    eye = torch.eye(in_ch, dtype=conv.weight.dtype, device=conv.weight.device)
    for r in range(repeats):
        conv.weight[r * in_ch:(r + 1) * in_ch, :, -1, 0, 0] = eye
    conv.bias.zero_()


def encode_moments(model: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw posterior (mu, log_var) of an ImageVAE (per frame) or a WanVAE (causal, 4n+1 frames)."""
    return model.encode_moments(video)


def decode_raw(model: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> frames, NOT clamped (training needs gradients past [-1, 1]).

    For a WanVAE this is ``decode`` without the latent scaling and the clamp: one causal pass, one latent frame
    at a time, through the same modules.
    """
    if isinstance(model, ImageVAE):
        return model.decode_raw(latents)
    x = model.conv2(latents.to(model.dtype))  # [B, z, T', h, w]
    cache = FeatureCache()
    chunks = []
    for k in range(x.shape[2]):
        cache.next_chunk()
        chunks.append(model.decoder(x[:, :, k:k + 1], cache))
    return torch.cat(chunks, dim=2)  # [B, 3, 1 + 4(T'-1), H, W]


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
        video = _video_of(batch).to(self.device, torch.float32)
        lr_scale = lr_scale_at(cfg, self.step)
        set_lr(self.optimizer, cfg.lr * lr_scale)
        start = time.perf_counter()
        with self._autocast():
            with torch.set_grad_enabled(not cfg.freeze_encoder):
                mu, log_var = encode_moments(self.model, video)
            log_var = log_var.float().clamp(*LOG_VAR_RANGE)
            recon = decode_raw(self.model, sample_posterior(mu.float(), log_var, self.generator)).float()
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


def _video_of(batch: dict | torch.Tensor) -> torch.Tensor:
    video = batch.get("video") if isinstance(batch, dict) else batch
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"VAE training batches are dicts with 'video' [B, 3, T, H, W] in [-1, 1]; got {got}.")
    return video


def _colour_probe(z_dim: int, seed: int) -> nn.Module:
    """The latent colour probe (training only: saved in checkpoints, never exported), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Conv3d(z_dim, 3, 1)


def cell_colours(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """The mean colour of the pixels each latent cell encodes: [B, 3, T', H/8, W/8] for ``video`` [B, 3, T, H, W].

    An ImageVAE encodes each frame alone; a WanVAE's first latent frame encodes the first frame, each later one
    the next ``temporal_compression`` frames.
    """
    s = model.cfg.spatial_compression
    t = model.cfg.temporal_compression if isinstance(model, WanVAE) else 1
    if t == 1 or video.shape[2] == 1:
        return F.avg_pool3d(video, (1, s, s))
    first = F.avg_pool3d(video[:, :, :1], (1, s, s))
    return torch.cat([first, F.avg_pool3d(video[:, :, 1:], (t, s, s))], dim=2)


# ------------------------------------------------------------------------------------------- files


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


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
    state = ckpt.read_file(folder / ckpt.STATE_FILE)
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


# ----------------------------------------------------------------------------- latent statistics, export


@torch.no_grad()
def latent_stats(model: nn.Module, data: Iterable, max_batches: int = 16) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean mu over the first ``max_batches`` batches of ``data``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = total_sq = None
    count = 0
    for batch in _first_batches(data, max_batches):
        mu = encode_moments(model, _video_of(batch).to(device, model.dtype))[0].double()
        per_channel = mu.transpose(0, 1).flatten(1)  # [z, B·T'·h·w]
        s, s2 = per_channel.sum(1), per_channel.square().sum(1)
        total, total_sq = (s, s2) if total is None else (total + s, total_sq + s2)
        count += per_channel.shape[1]
    model.train(was_training)
    if count == 0:
        raise ValueError("the data gave no batches to measure the latent statistics on.")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def _first_batches(data: Iterable, n: int) -> Iterator[dict | torch.Tensor]:
    """Up to ``n`` non-None batches, iterating ``data`` again when a pass ends (a resumable source may have been
    left at the end of an epoch); stops after two passes in a row that give nothing."""
    taken, empty_passes = 0, 0
    for _ in range(n + 2):
        got = False
        for batch in data:
            got = True
            if batch is None:
                continue
            yield batch
            taken += 1
            if taken == n:
                return
        empty_passes = 0 if got else empty_passes + 1
        if empty_passes == 2:
            return


def with_latent_stats(vae: WanVAE, mean: Iterable[float], std: Iterable[float]) -> WanVAE:
    """A copy of ``vae`` whose config (and so ``encode``/``decode`` scaling) carries these latent statistics."""
    cfg = vae.cfg.replace(latents_mean=tuple(float(m) for m in mean), latents_std=tuple(float(s) for s in std))
    with torch.device("meta"):
        out = WanVAE(cfg)
    out.load_state_dict({k: v.detach().clone() for k, v in vae.state_dict().items()}, assign=True)
    return out.to(next(vae.parameters()).device).train(vae.training)


def export_wan_vae(vae: WanVAE, out_dir: str | Path, name: str = WAN_VAE_NAME) -> Path:
    """Write ``<name>.pth`` (official Wan2.1 layout, loads with ``WanVAE.from_pretrained``) and ``<name>.json``
    (its VAEConfig, latent statistics included); returns the .pth path."""
    return _export(vae, out_dir, name)


def load_trained_vae(path: str | Path) -> WanVAE:
    """``WanVAE.from_pretrained(path)`` in float32 (training keeps float32 weights; a release may store half
    precision), with the latent statistics of ``<stem>.json`` beside it, when present (the loader reads them)."""
    return WanVAE.from_pretrained(path, dtype=torch.float32)


def export_image_vae(model: ImageVAE, out_dir: str | Path, name: str = IMAGE_VAE_NAME) -> Path:
    """Write the stage-1 model as ``<name>.pth`` (state dict) and ``<name>.json`` (its VAEConfig)."""
    return _export(model, out_dir, name)


def _export(model: nn.Module, out_dir: str | Path, name: str) -> Path:
    """``<name>.pth`` (float32 state dict) and ``<name>.json`` (the model's VAEConfig), each written atomically."""
    path = Path(out_dir) / f"{name}.pth"
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)
    _write_json(path.with_suffix(".json"), model.cfg.to_dict())
    return path


def load_image_vae(path: str | Path) -> ImageVAE:
    """The stage-1 model written by :func:`export_image_vae` (needs the .json beside the .pth)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(f"{sidecar} is missing; a stage-1 image VAE is {path.name} with its config {sidecar.name} "
                         "beside it, as export_image_vae writes them.")
    model = ImageVAE(_read_config_json(sidecar))
    return load_strict(model, read_state_dict(path), source=path, assign=False)


def _read_config_json(path: Path) -> VAEConfig:
    try:
        return VAEConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a readable VAE config JSON ({err}); write it again with the export.") from None


def is_image_vae_file(path: str | Path) -> bool:
    """True for a stage-1 image VAE file (kernels one frame deep), False for a 3D WanVAE file."""
    weight = read_state_dict(path).get("encoder.conv1.weight")
    if weight is None or weight.ndim != 5:
        raise ValueError(f"{path} is not a Wan VAE weights file (no 5D encoder.conv1.weight).")
    return weight.shape[2] == 1


# ------------------------------------------------------------------------------------------- a stage


def initial_model(stage: int, init: str | Path | None = None, vae_config: VAEConfig | None = None,
                  decoder_dim: int | None = None) -> nn.Module:
    """The model a stage starts from.

    Stage 1: ``init`` (an image VAE file, to continue) or a fresh ImageVAE of ``vae_config`` (default: the
    released Wan2.1 widths). Stages 2 and 3: ``init`` is required — an image VAE file is inflated, a 3D VAE file
    (``Wan2.1_VAE.pth`` of the previous stage) is loaded. ``decoder_dim``: the decoder's base width — a fresh
    model is built with it, a loaded one narrower than it is widened (:func:`widen_decoder`).
    """
    if stage == 1 and init is None:
        cfg = vae_config or VAEConfig()
        return ImageVAE(cfg if decoder_dim is None else cfg.replace(decoder_dim=decoder_dim))
    if init is None:
        previous = "the stage-1 image_vae.pth" if stage == 2 else "the stage-2 Wan2.1_VAE.pth"
        raise ValueError(f"stage {stage} starts from a trained model; give init= {previous}.")
    if stage == 1:
        model = load_image_vae(init)
    elif is_image_vae_file(init):
        log.info("inflating the image VAE %s to the 3D causal VAE", init)
        model = inflate_image_vae(load_image_vae(init))
    else:
        model = load_trained_vae(init).train()
    if decoder_dim is not None and decoder_dim != model.cfg.decoder_width:
        log.info("widening the decoder of %s from %d to %d base channels", init, model.cfg.decoder_width, decoder_dim)
        model = widen_decoder(model, decoder_dim)
    return model


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
        vae_config = get_preset("vae", cfg.model.preset)
    out_dir = Path(out_dir)
    with RunLock(out_dir):  # held from the look for checkpoints to the export
        trainer = _stage_trainer(cfg, out_dir, model, init, vae_config, resume, decoder_dim)
        trainer.fit(data)
        if cfg.stage == 1:
            path = export_image_vae(trainer.model, out_dir)
        elif cfg.freeze_encoder:  # same encoder, same latents: the statistics it came with still hold
            path = export_wan_vae(trainer.model, out_dir)
        else:
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
    if cfg.freeze_encoder and model is None and (init is None or is_image_vae_file(init)):
        raise ValueError("freeze_encoder fine-tunes the decoder of a trained 3D VAE; give init= its "
                         "Wan2.1_VAE.pth (an image VAE has no latent space or statistics to keep yet).")
    if model is None:
        model = initial_model(cfg.stage, init, vae_config, decoder_dim=decoder_dim)
    return VAETrainer(model, cfg, out_dir)


def train_vae(cfg: VAETrainConfig) -> Path:
    """``openwan train-vae``: the stage of ``cfg`` on clips of ``cfg.data.manifest`` (cropped to
    ``cfg.data.crop(stage)``), written to ``cfg.output_dir``. Returns the exported file."""
    if cfg.data.manifest is None:
        raise ValueError("VAE training needs a clip manifest: set data.manifest (--manifest).")
    frames, size = cfg.data.crop(cfg.stage)
    torch.manual_seed(cfg.seed)
    data = clip_loader(cfg.data.manifest, frames, size, fps=cfg.data.fps, batch_size=cfg.data.batch_size,
                       num_workers=cfg.data.num_workers, seed=cfg.seed)
    return run_stage(cfg, data)


__all__ = [
    "VAETrainConfig",
    "VAETrainer",
    "decode_raw",
    "encode_moments",
    "export_image_vae",
    "export_wan_vae",
    "inflate_image_vae",
    "initial_model",
    "latent_stats",
    "checkpoint_files",
    "load_image_vae",
    "load_trained_vae",
    "model_from_checkpoint",
    "read_vae_checkpoint",
    "widen_decoder",
    "run_stage",
    "train_vae",
    "with_latent_stats",
]
