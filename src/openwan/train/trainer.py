"""The DiT trainer: flow matching over any iterable of batch dicts, a curriculum of stages, exact resume.

One optimizer step (see :func:`flow_matching_loss`):

    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   loss = MSE(dit(x_σ, σ·1000, context), v)

Batches are dicts (the data contract): ``latents`` [B, C, F, h, w] or ``video`` [B, 3, T, H, W] in [-1, 1]
(encoded here with the VAE), and ``context`` [B, L, D] (+ ``context_empty`` [L', D]) or ``caption`` (encoded here
with umT5). Text dropout swaps a sample's context for the empty prompt's so classifier-free guidance works.

Many processes (``torchrun``) run the same code: the model is parallelized from outside with
``openwan.parallel.parallelize_dit`` (context parallel over ``cp_ring × cp_ulysses``, FSDP2 over all ranks),
the data is sharded over the ``dp`` ranks only, and every random draw of a step (σ, ε, text dropout) is a
function of (seed, draw, the sample's index in the global batch) — so a run, its loss curve and its checkpoints do
not depend on how many processes trained it. Multi-process checkpoints are sharded
(``torch.distributed.checkpoint``) and load at any world size, one process included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openwan.diffusion import resolution_shift
from openwan.diffusion.objective import draw_sample_sigmas, flow_matching_loss, noised, target_count
from openwan.train import checkpoint as ckpt
from openwan.train.config import StageConfig, TrainConfig, save_config
from openwan.train.ema import EMA
from openwan.train.metrics import MetricsLogger

log = logging.getLogger("openwan.train")

MODEL_FILE = ckpt.MODEL_FILE  # full fine-tune: the folder loads with WanDiT.from_pretrained
ADAPTER_FILE = "adapter.safetensors"  # LoRA: the trained adapter parameters, for resume
LORA_FILE = "lora.safetensors"  # LoRA: the export in diffusers' key names (WanPipeline.load_lora_weights)
LORA_OFFICIAL_FILE = "lora_official.safetensors"  # the same in official module names + alpha (ComfyUI)
LORA_EMA_FILE = "lora_ema.safetensors"
EMA_FILE = ckpt.EMA_FILE
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"


# ------------------------------------------------------------------------------------------ data sources


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer reads batches from: an iterable of batch dicts whose position can be saved and restored.

    ``state_dict()`` is taken after a batch has been consumed and must be JSON-serialisable; after
    ``load_state_dict(state)`` a new iteration continues with exactly the batches that followed it. Iteration
    may end (an epoch); the trainer then iterates again. ``None`` or empty batches are skipped.
    """

    def __iter__(self) -> Iterator[dict | None]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


DataFactory = Callable[[int, StageConfig], BatchSource]
"""Builds the batch source of stage ``index``; the trainer calls it when the stage starts."""


class ListBatches:
    """A fixed list of batch dicts served in order, round and round: the smallest resumable :class:`BatchSource`."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("ListBatches needs at least one batch.")
        self.position = 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


# ------------------------------------------------------------------------------------------ maths


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based, over the whole run): per stage, linear warm-up then
    cosine decay to ``min_lr_ratio``·lr, or constant. A pure function of the step: resuming restores it exactly."""
    stage, k = stage_at(cfg, step)
    base, warmup = cfg.stage_lr(stage), cfg.stage_warmup(stage)
    if k >= warmup and cfg.schedule.kind == "constant":
        return base
    return base * warmup_cosine(k, warmup, stage.steps - warmup, cfg.schedule.min_lr_ratio)


def warmup_cosine(k: int, warmup: int, span: int, min_ratio: float) -> float:
    """LR scale of step ``k``: linear warm-up over ``warmup`` steps, then cosine from 1 down to ``min_ratio``,
    reached ``span`` steps after the warm-up (and held beyond)."""
    if k < warmup:
        return (k + 1) / warmup
    progress = min(1.0, (k - warmup) / max(1, span))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def stage_at(cfg: TrainConfig, step: int) -> tuple[StageConfig, int]:
    """The stage that optimizer step ``step`` (0-based) belongs to, and the step's index inside it."""
    for stage in cfg.stages:
        if step < stage.steps:
            return stage, step
        step -= stage.steps
    last = cfg.stages[-1]
    return last, last.steps - 1  # past the end: hold the last step's rate


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def tokens_of(latents: torch.Tensor, patch_size: tuple[int, int, int]) -> int:
    """DiT tokens per sample for latents [B, C, F, h, w]."""
    f, h, w = latents.shape[2:]
    return (f // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])


# ------------------------------------------------------------------------------------------ trainer


class Trainer:
    """Trains a Wan DiT by flow matching; see the module docstring and :meth:`fit`.

    dit: the model to train (None: built from ``cfg.model``); data: a :data:`DataFactory` or one
    :class:`BatchSource` for every stage (None: built from ``cfg.data``); vae / text_encoder / tokenizer: used
    for raw-video or caption batches and for sample videos (None: built from ``cfg.model`` when named there);
    mesh: a ``DeviceMesh`` with dims ("dp", "cfg", "ring", "ulysses") as :func:`training_mesh` builds it from
    ``cfg.parallel`` (None: built that way — None again for one process); on_step_end(trainer, metrics) runs after
    every step. With a mesh, a ``data`` given here must yield this rank's share of each batch: the samples of
    data-parallel rank ``trainer.dp_rank`` of ``trainer.dp_size``, the same on the ranks of a context-parallel group.
    """

    def __init__(self, cfg: TrainConfig, *, dit: nn.Module | None = None, data: DataFactory | BatchSource | None = None,
                 vae: nn.Module | None = None, text_encoder: nn.Module | None = None, tokenizer: Any = None,
                 mesh: Any = None, on_step_end: Callable[[Trainer, dict], None] | None = None):
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.autocast_dtype = _autocast_dtype(cfg.precision, self.device)
        self.mesh = _checked_mesh(cfg, mesh if mesh is not None else training_mesh(cfg))
        if cfg.lora is not None and self.mesh is not None:
            raise ValueError("LoRA training runs in one process so far; start it without torchrun (or train the "
                             "full model on many processes).")
        self._init_ranks()
        self.out = Path(cfg.output_dir)
        self.on_step_end = on_step_end
        seed_everything(cfg.seed)
        self.dit = dit if dit is not None else build_dit(cfg)
        _check_trainable_model(self.dit)
        self.dit.to(self.device, torch.float32)  # float32 master weights; bf16 comes from autocast
        if cfg.lora is not None:
            from openwan.train.lora import add_lora

            add_lora(self.dit, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
        self.dit.gradient_checkpointing = cfg.activation_checkpointing
        self._parallelize()
        self.dit.train()
        self.params = {n: p for n, p in self.dit.named_parameters() if p.requires_grad}  # DTensors under FSDP
        self.optimizer = _adamw(self.params, cfg)
        self.ema = EMA(self.params, cfg.ema.decay) if cfg.ema.decay > 0 else None
        # How many times σ/ε and text dropout were drawn: with the seed and each sample's index in the global
        # batch this fixes every draw (see sample_generator), so a checkpoint holds the counts, not generator states.
        self.draws = {"noise": 0, "dropout": 0}
        given = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
        built = build_encoders(cfg, self.device, only=[k for k, v in given.items() if v is None])
        parts = {k: v if v is not None else built.get(k) for k, v in given.items()}
        self.vae, self.text_encoder, self.tokenizer = parts["vae"], parts["text_encoder"], parts["tokenizer"]
        self.data = data
        self.step = 0
        self.data_state: dict | None = None  # {"stage": index, "state": source state after the last batch}
        self._resume_data: dict | None = None  # the data_state of a loaded checkpoint, applied once
        self.last_checkpoint_step: int | None = None
        self.metrics = MetricsLogger(self.out, tensorboard=cfg.log.tensorboard, enabled=self.is_main)
        self._empty_context: torch.Tensor | None = None
        self._warned: set[str] = set()

    def _init_ranks(self) -> None:
        """This process's place: rank (0 = the one that writes files) and data-parallel rank / size / group."""
        from openwan.parallel import dim_group, dim_size

        mesh = self.mesh
        self.world_size = mesh.size() if mesh is not None else 1
        self.rank = torch.distributed.get_rank() if mesh is not None else 0
        self.is_main = self.rank == 0
        self.dp_rank = mesh.get_local_rank("dp") if mesh is not None else 0
        self.dp_size = dim_size(mesh, "dp")
        self.dp_group = dim_group(mesh, "dp")

    def _parallelize(self) -> None:
        """Context parallel, activation checkpointing, compile and FSDP2, applied from outside (also at world
        size 1, where only checkpointing and compile apply)."""
        from openwan.parallel import DiTParallelConfig, parallelize_dit

        cfg = self.cfg
        parallelize_dit(self.dit, self.mesh, DiTParallelConfig(
            fsdp=cfg.parallel.fsdp, activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
            param_dtype=self.autocast_dtype or torch.float32))
        # Without FSDP every rank holds the whole model and its gradients are all-reduced after the backward.
        self._all_reduce_grads = self.mesh is not None and not cfg.parallel.fsdp

    def _barrier(self) -> None:
        if self.mesh is not None:
            torch.distributed.barrier()

    # ------------------------------------------------------------------------------------ running

    def fit(self) -> dict:
        """Run every stage to its end (resuming first if ``cfg.resume`` says so); returns the last step's metrics."""
        from tqdm.auto import tqdm

        self._start()
        cfg, last = self.cfg, {}
        bar = tqdm(total=cfg.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.log.progress and self.is_main))
        try:
            end = 0
            for index, stage in enumerate(cfg.stages):
                end += stage.steps
                if self.step >= end:
                    continue
                batches = self._batches(index, stage)
                while self.step < end:
                    source, batch = next(batches)
                    last = self.train_step(batch)
                    self.step += 1
                    self.data_state = {"stage": index, "state": _json_copy(source.state_dict())}
                    self._after_step(last, stage, bar)
            if self.last_checkpoint_step != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
            self.metrics.plot()
            self.metrics.close()
        return last

    def _start(self) -> None:
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for path in ckpt.remove_stale(self.out):
                log.info("removed %s, left by an interrupted checkpoint write", path)
        self._barrier()  # the other ranks look for checkpoints once stale folders are gone
        folder = self._resume_folder()
        if folder is not None:
            self.load_checkpoint(folder)
            log.info("resumed from %s at step %d", folder, self.step)
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")

    def _resume_folder(self) -> Path | None:
        resume, found = self.cfg.resume, ckpt.latest_checkpoint(self.out)
        if resume == "auto":
            return found
        if resume == "never":
            if found is not None:
                raise ValueError(f"{self.out} already holds checkpoints (latest {found.name}); set resume=auto to "
                                 "continue that run, or choose another output_dir.")
            return None
        folder = Path(resume)
        if not (folder / ckpt.STATE_FILE).is_file():
            raise ValueError(f"resume={resume} is not a complete checkpoint folder (no {ckpt.STATE_FILE}); give a "
                             f"step-XXXXXXXX folder, or resume=auto.")
        return folder

    def _batches(self, index: int, stage: StageConfig) -> Iterator[tuple[BatchSource, dict]]:
        """Non-empty batches of a stage, forever (a source that ends is iterated again: the next epoch)."""
        source = self._source(index, stage)
        saved, self._resume_data = self._resume_data, None
        # A stage's own source continues only in the stage it was saved in; one shared source always continues.
        if saved is not None and (saved["stage"] == index or isinstance(self.data, BatchSource)):
            source.load_state_dict(_json_copy(saved["state"]))
        while True:
            produced = False
            for batch in source:
                produced = True
                if _batch_size(batch) > 0:
                    yield source, batch
                else:
                    self._warn_once("empty", "skipped an empty batch (every file in it failed to load)")
            if not produced:
                raise ValueError(f"the data of stage {index} ({stage.name}) yields no batches; check the manifest / "
                                 "cache and the stage's buckets and batch_size.")

    def _source(self, index: int, stage: StageConfig) -> BatchSource:
        data = self.data
        if data is None:
            data = data_from_config(self.cfg, self.dp_rank, self.dp_size)
            self.data = data
        source = data if isinstance(data, BatchSource) else data(index, stage)
        if not isinstance(source, BatchSource):
            raise ValueError("the data for training must be a BatchSource (an iterable of batch dicts with "
                             "state_dict/load_state_dict) or a function (stage index, stage) -> BatchSource.")
        return source

    def _after_step(self, metrics: dict, stage: StageConfig, bar) -> None:
        cfg = self.cfg
        if self.step % cfg.log.every == 0 or self.step == cfg.total_steps:
            self.metrics.log(self.step, {"stage": stage.name, **metrics})
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", step_s=f"{metrics['step_time']:.3f}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
            self.save_checkpoint()
        if cfg.sample.every and self.step % cfg.sample.every == 0:
            self.sample()
        if self.on_step_end is not None:
            self.on_step_end(self, metrics)

    # ------------------------------------------------------------------------------------ one step

    def train_step(self, batch: Mapping[str, Any]) -> dict:
        """One optimizer step on ``batch``; returns its metrics (loss, lr, grad_norm, step time, tokens/s, ...)."""
        start = _now(self.device)
        x0, context = self.prepare_batch(batch)
        lr = lr_at(self.cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sigmas, noise, shift = self.draw_noise(x0)
        loss = flow_matching_loss(self.dit, x0, context, sigmas.to(self.device), noise.to(self.device),
                                  self.autocast_dtype, count=self._target_count(sigmas, x0.shape))
        loss.backward()
        params = list(self.params.values())
        if self._all_reduce_grads:
            _all_reduce_grads(params, self.dp_size)
        grad_norm = self._clip_gradients(params)
        finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        else:
            self._warn_once("nonfinite", f"skipped an update with a non-finite gradient norm at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and finite:
            self.ema.update()
        loss_value, sigma_mean = self._mean_over_dp(loss.detach(), sigmas.mean())
        seconds = _now(self.device) - start
        batch = x0.shape[0] * self.dp_size  # the global batch
        return {
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_time": seconds,
            "tokens_per_s": batch * tokens_of(x0, self.dit.cfg.patch_size) / max(seconds, 1e-9),
            "batch_size": int(batch),
            "latent_shape": list(x0.shape[2:]),
            "shift": shift,
            "sigma_mean": sigma_mean,
        }

    def _target_count(self, sigmas: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
        """With a level per frame under data parallel, the ranks' samples hold different numbers of noisy frames:
        each rank divides its squared error by the mean count over the ranks, so that the ranks' mean loss (and
        gradient) is the global batch's, as one process computes it. None: the batch's own count is that."""
        if self.dp_group is None or sigmas.ndim == 1:
            return None
        count = target_count(sigmas, shape).to(self.device)
        torch.distributed.all_reduce(count, group=self.dp_group)
        return count / self.dp_size

    def _clip_gradients(self, params: list[nn.Parameter]) -> float:
        """Scale the gradients to a global norm of at most ``optim.grad_clip``; returns the norm before.

        Under FSDP the gradients are DTensor shards: their norm is reduced over all ranks (the whole gradient's)."""
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm = _full_tensor(norm)
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        return float(norm)

    def _mean_over_dp(self, loss: torch.Tensor, sigma_mean: torch.Tensor) -> tuple[float, float]:
        """The loss and mean σ of the global batch (equal-sized shards: the mean of the data-parallel ranks')."""
        if self.dp_group is None:
            return loss.item(), float(sigma_mean)
        stats = torch.stack([loss.float(), sigma_mean.to(loss.device, torch.float32)])
        torch.distributed.all_reduce(stats, group=self.dp_group)
        loss_value, sigma_value = (stats / self.dp_size).tolist()
        return loss_value, sigma_value

    def draw_noise(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """σ and ε like x0, drawn on the CPU (the same on any device), each sample from its own generator:
        :func:`sample_generator` of its index in the global batch, so data-parallel shards draw what one process
        drawing the whole batch would. σ is [B]; with ``timesteps.per_frame`` > 0 it is [B, F]: that fraction of
        the samples draws a level per latent frame (per temporal patch), the rest one level repeated. With
        ``timesteps.mix``, each sample first picks the distribution it draws from; every level lies in
        ``[min_sigma, max_sigma]``. The current stage's own ``timesteps``, where it has one, replaces the run's."""
        t = self.cfg.stage_timesteps(stage_at(self.cfg, self.step)[0])
        if t.shift == "resolution":
            shift = resolution_shift(tokens_of(x0, self.dit.cfg.patch_size), t.base_tokens, t.base_shift,
                                     t.max_tokens, t.max_shift)
        else:
            shift = float(t.shift)
        frame_sigmas = t.per_frame > 0 or t.first_frame > 0  # [B, F] sigmas: a level per latent frame
        mix = [(m.fraction, m.shift, m.logit_mean, m.logit_std) for m in t.mix]
        sigmas, noise = [], []
        for gen in self._generators("noise", x0.shape[0]):
            sigmas.append(draw_sample_sigmas(
                gen, frames=x0.shape[2], patch_frames=self.dit.cfg.patch_size[0], mode=t.mode, shift=shift,
                logit_mean=t.logit_mean, logit_std=t.logit_std, mix=mix, per_frame=t.per_frame,
                first_frame=t.first_frame, sigma_range=(t.min_sigma, t.max_sigma)))
            noise.append(torch.randn(x0.shape[1:], generator=gen, dtype=torch.float32))
        return (torch.stack(sigmas) if frame_sigmas else torch.cat(sigmas)), torch.stack(noise), shift

    def _generators(self, stream: str, batch: int) -> list[torch.Generator]:
        """One generator per sample of this rank's batch for the next draw of ``stream``."""
        draw = self.draws[stream]
        self.draws[stream] += 1
        first = self.dp_rank * batch  # shards are equal: sample j here is sample first + j of the global batch
        return [sample_generator(self.cfg.seed, stream, draw, first + j) for j in range(batch)]

    def prepare_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 [B, C, F, h, w] float32, context [B, L, text_dim]) on the training device, text dropout applied."""
        x0 = self.latents_of(batch)
        context, empty = self.context_of(batch)
        if context.shape[0] != x0.shape[0]:
            raise ValueError(f"the batch has {x0.shape[0]} samples but {context.shape[0]} contexts; give one caption "
                             "or context per sample.")
        p = self.cfg.text_dropout
        if p > 0:
            gens = self._generators("dropout", x0.shape[0])
            drop = torch.cat([torch.rand(1, generator=g) for g in gens]) < p  # [B]
            if bool(drop.any()):
                empty = F.pad(empty.to(context), (0, 0, 0, context.shape[1] - empty.shape[0]))  # [L, D]
                context = torch.where(drop.to(context.device)[:, None, None], empty[None], context)
        return x0, context

    def latents_of(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "latents" in batch:
            x0 = batch["latents"]
        elif "video" in batch:
            x0 = self.encode_video(batch["video"])
        else:
            raise ValueError("a training batch needs 'latents' (from a latent cache) or 'video' (raw clips); got keys "
                             f"{sorted(batch)}.")
        in_dim = self.dit.cfg.in_dim
        if x0.ndim != 5 or x0.shape[1] != in_dim:
            raise ValueError(f"latents must be [B, {in_dim}, F, h, w] for this model; got {tuple(x0.shape)} — was the "
                             "cache built with this model's VAE?")
        return x0.to(self.device, torch.float32)

    def context_of(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's text states [B, L, D] and the empty prompt's [L', D] (None when no dropout is needed)."""
        need_empty = self.cfg.text_dropout > 0
        if "context" in batch:
            context = batch["context"].to(self.device, torch.float32)
            empty = batch.get("context_empty")
            if need_empty and empty is None:
                raise ValueError("text dropout needs the empty prompt's encoding: batches with 'context' must carry "
                                 "'context_empty' (the text cache stores it), or set text_dropout=0.")
            return context, empty
        if "caption" in batch:
            context = self.encode_text(list(batch["caption"]))
            return context, self.empty_context() if need_empty else None
        raise ValueError("a training batch needs 'context' (from a text cache) or 'caption'; got keys "
                         f"{sorted(batch)}.")

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise ValueError("raw-video batches need a VAE: set model.vae (or train from a latent cache).")
        self.vae.eval()
        dtype = next(self.vae.parameters()).dtype
        device = next(self.vae.parameters()).device
        return self.vae.encode(video.to(device, dtype)).float()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        from openwan.models.text_encoder import encode_prompts, pad_context

        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("caption batches need a text encoder and tokenizer: set model.text_encoder and "
                             "model.tokenizer (or train from a text cache).")
        self.text_encoder.eval()
        text_len = self.dit.cfg.text_len
        states = encode_prompts(self.text_encoder, self.tokenizer, prompts, text_len=text_len)
        return pad_context(states, text_len).to(self.device, torch.float32)

    def empty_context(self) -> torch.Tensor:
        if self._empty_context is None:
            self._empty_context = self.encode_text([""])[0]  # [text_len, D], zero rows past the EOS
        return self._empty_context

    # ------------------------------------------------------------------------------------ checkpoints

    def checkpoint_files(self) -> dict[str, Any]:
        """Every file of a one-process checkpoint of the current state (name -> object; see
        :mod:`openwan.train.checkpoint`)."""
        files: dict[str, Any] = {}
        if self.cfg.lora is not None:
            from openwan.train.lora import lora_state_dict

            files[ADAPTER_FILE] = {n: p.detach() for n, p in self.params.items()}
            files[LORA_FILE] = lora_state_dict(self.dit, "diffusers")
            files[LORA_OFFICIAL_FILE] = lora_state_dict(self.dit, "official")
            if self.ema is not None:
                with self.ema.swapped_in():
                    files[LORA_EMA_FILE] = lora_state_dict(self.dit, "diffusers")
        else:
            files[MODEL_FILE] = {k: v.detach() for k, v in self.dit.state_dict().items()}
            files[ckpt.CONFIG_FILE] = self.dit.cfg.to_dict()
        if self.ema is not None:
            files[EMA_FILE] = self.ema.state_dict()
        files[OPTIMIZER_FILE] = self.optimizer.state_dict()
        files.update(self._state_files())
        return files

    def _state_files(self) -> dict[str, Any]:
        """The RNG states and trainer_state.json: step (hence the LR), data position and draw counts."""
        rng_tensors, rng_plain = ckpt.capture_rng({})
        return {
            RNG_FILE: rng_tensors,
            ckpt.STATE_FILE: {
                "format": 2,
                "step": self.step,
                "lr": lr_at(self.cfg, max(self.step - 1, 0)),
                "data": self.data_state,
                "draws": dict(self.draws),
                "rng": rng_plain,
                "lora": self.cfg.lora is not None,
                "world_size": self.world_size,
                "config": self.cfg.to_dict(),
            },
        }

    def sharded_state(self) -> dict[str, Any]:
        """What a multi-process checkpoint saves with torch.distributed.checkpoint: model, optimizer, EMA (as
        ``torch.distributed.checkpoint.state_dict`` gives them: official parameter names, sharded under FSDP)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(self.dit),
                 "optimizer": get_optimizer_state_dict(self.dit, self.optimizer)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _sharded_files(self) -> dict[str, Any] | None:
        """Rank 0's plain files next to a sharded checkpoint (None on other ranks). With checkpoint.consolidated
        the full weights and EMA are gathered into it: a collective, every rank takes part."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        files: dict[str, Any] = {}
        if self.cfg.checkpoint.consolidated:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors on rank 0 only
            files[MODEL_FILE] = get_model_state_dict(self.dit, options=options)
            if self.ema is not None:
                files[EMA_FILE] = self.ema.full_state_dict(keep=self.is_main)
        if not self.is_main:
            return None
        files[ckpt.CONFIG_FILE] = self.dit.cfg.to_dict()
        files.update(self._state_files())
        return files

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (with a mesh: every rank must call this); returns its folder."""
        if self.mesh is None:
            folder = ckpt.save_checkpoint(self.out, self.step, self.checkpoint_files(), self.cfg.checkpoint.keep_last)
        else:
            folder = ckpt.save_sharded_checkpoint(self.out, self.step, self.sharded_state(), self._sharded_files(),
                                                  self.cfg.checkpoint.keep_last)
        self.last_checkpoint_step = self.step
        if self.is_main:
            self.metrics.plot()
            log.info("saved checkpoint %s", folder)
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore model (or adapter), EMA, optimizer, step (hence the LR), data position and every RNG — from a
        one-process or a sharded checkpoint, whatever the world size that wrote it."""
        folder = Path(folder)
        state = ckpt.read_file(folder / ckpt.STATE_FILE)
        if bool(state.get("lora")) != (self.cfg.lora is not None):
            kind = "a LoRA" if state.get("lora") else "a full fine-tune"
            raise ValueError(f"{folder} is a checkpoint of {kind} run; set lora as that run did to resume it.")
        if (folder / ckpt.SHARDED_DIR).is_dir():
            self._load_sharded(folder)
        elif self.mesh is None:
            self._load_files(folder)
        else:
            self._load_files_into_shards(folder)
        self.step = int(state["step"])
        self.data_state = self._resume_data = state.get("data")
        self.draws = dict(state.get("draws") or {"noise": self.step, "dropout": self.step})  # format 1: per step
        ckpt.restore_rng(ckpt.read_file(folder / RNG_FILE), state["rng"], {})
        self.last_checkpoint_step = self.step
        self.metrics.truncate_after(self.step)

    def _load_files(self, folder: Path) -> None:
        if self.cfg.lora is not None:
            self._load_params(ckpt.read_file(folder / ADAPTER_FILE), folder / ADAPTER_FILE)
        else:
            self._load_params(ckpt.read_file(folder / MODEL_FILE), folder / MODEL_FILE)
        self._load_ema(folder)
        self.optimizer.load_state_dict(ckpt.read_file(folder / OPTIMIZER_FILE))

    def _load_ema(self, folder: Path) -> None:
        if self.ema is None:
            return
        if (folder / EMA_FILE).is_file():
            self.ema.load_state_dict(ckpt.read_file(folder / EMA_FILE))
        else:
            log.warning("%s has no EMA; the EMA starts from the loaded weights", folder)
            self.ema = EMA(self.params, self.cfg.ema.decay)

    def _load_files_into_shards(self, folder: Path) -> None:
        """A one-process checkpoint into a model on a mesh: every rank reads the whole files and keeps its shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True)
        weights = ckpt.read_file(folder / MODEL_FILE)
        self._check_keys(set(weights), folder / MODEL_FILE)
        set_model_state_dict(self.dit, weights, options=whole)
        self._load_ema(folder)
        optim = _named_optimizer_state(ckpt.read_file(folder / OPTIMIZER_FILE), self.optimizer, self.params)
        set_optimizer_state_dict(self.dit, self.optimizer, optim, options=whole)

    def _load_sharded(self, folder: Path) -> None:
        """A sharded checkpoint at any world size: torch.distributed.checkpoint reshards it onto this mesh (or
        reads it whole into one process, with no process group)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path = folder / ckpt.SHARDED_DIR
        saved = ckpt.sharded_metadata(path)
        self._check_keys({k.removeprefix("model.") for k in saved if k.startswith("model.")}, path)
        state = self.sharded_state()
        has_ema = any(k.startswith("ema.") for k in saved)
        if not has_ema:
            state.pop("ema", None)
        ckpt.load_sharded(state, path, single_process=self.mesh is None)
        set_model_state_dict(self.dit, state["model"])
        set_optimizer_state_dict(self.dit, self.optimizer, state["optimizer"])
        if self.ema is not None and has_ema:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.warning("%s has no EMA; the EMA starts from the loaded weights", folder)
            self.ema = EMA(self.params, self.cfg.ema.decay)

    @torch.no_grad()
    def _load_params(self, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
        named = dict(self.dit.named_parameters())
        wanted = set(self.params) if self.cfg.lora is not None else set(named)
        missing, unexpected = wanted - set(tensors), set(tensors) - set(named)
        if missing or unexpected:
            raise ValueError(f"{source} does not match the model being trained ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors); resume with the config of the run that wrote it.")
        for name, value in tensors.items():
            named[name].copy_(value)

    def _check_keys(self, saved: set[str], source: Path) -> None:
        named = set(self.dit.state_dict())
        missing, unexpected = named - saved, saved - named
        if missing or unexpected:
            raise ValueError(f"{source} does not match the model being trained ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors); resume with the config of the run that wrote it.")

    # ------------------------------------------------------------------------------------ samples

    def sample(self) -> list[Path]:
        """Videos from the fixed prompts of ``cfg.sample`` with the current (EMA, if any) weights.

        With a mesh every rank runs the sampler (each forward is collective: context parallel, FSDP); all compute
        the same video and rank 0 writes it."""
        s = self.cfg.sample
        if None in (self.vae, self.text_encoder, self.tokenizer):
            self._warn_once("sample", "sample videos need model.vae, model.text_encoder and model.tokenizer; skipped")
            return []
        from openwan.data.video import save_video
        from openwan.pipelines import WanPipeline

        folder = self.out / "samples" / ckpt.checkpoint_name(self.step)
        pipe = WanPipeline(self.dit, self.vae, self.text_encoder, self.tokenizer, device=self.device,
                           dtype=torch.float32)
        suffix = ".png" if s.frame_num == 1 else ".mp4"
        written = []
        devices = [_cuda_index(self.device)] if self.device.type == "cuda" else []
        swap = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with torch.random.fork_rng(devices=devices), swap, _autocast(self.device, self.autocast_dtype):
            self.dit.eval()
            try:
                for i, prompt in enumerate(s.prompts):
                    out = pipe(prompt, s.negative_prompt, size=tuple(s.size), frame_num=s.frame_num,
                               sample_steps=s.steps, sample_shift=s.shift, guide_scale=s.guide_scale, seed=s.seed + i,
                               progress=False)
                    if self.is_main:
                        written.append(save_video(out.video, folder / f"prompt-{i:02d}{suffix}", fps=s.fps))
            finally:
                self.dit.train()
        return written

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


# ------------------------------------------------------------------------------------------ building


def train(cfg: TrainConfig, **kwargs: Any) -> dict:
    """Build a :class:`Trainer` from ``cfg`` (keyword arguments as the class takes them) and run it."""
    return Trainer(cfg, **kwargs).fit()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_dit(cfg: TrainConfig) -> nn.Module:
    from openwan.configs import get_preset
    from openwan.models import WanDiT

    if cfg.model.path:
        return WanDiT.from_pretrained(cfg.model.path, dtype=torch.float32)
    return WanDiT(get_preset("dit", cfg.model.preset))


def build_encoders(cfg: TrainConfig, device: torch.device,
                   only: Iterable[str] = ("vae", "text_encoder", "tokenizer")) -> dict[str, Any]:
    """The VAE, umT5 and tokenizer named in ``cfg.model`` (paths, or preset names for random test models), frozen;
    ``only`` limits which are built."""
    from openwan.configs import TEXT_ENCODER_PRESETS, VAE_PRESETS

    m, only = cfg.model, set(only)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out: dict[str, Any] = {}
    if m.vae and "vae" in only:
        from openwan.models import WanVAE

        if m.vae in VAE_PRESETS and not Path(m.vae).exists():
            log.warning("model.vae=%s builds a RANDOM VAE (a preset name, for tests)", m.vae)
            out["vae"] = WanVAE(VAE_PRESETS[m.vae]).to(device, dtype).eval().requires_grad_(False)
        else:
            out["vae"] = WanVAE.from_pretrained(m.vae, dtype=dtype, device=device).eval().requires_grad_(False)
    if m.text_encoder and "text_encoder" in only:
        if m.text_encoder in TEXT_ENCODER_PRESETS and not Path(m.text_encoder).exists():
            from transformers import UMT5EncoderModel

            log.warning("model.text_encoder=%s builds a RANDOM umT5 (a preset name, for tests)", m.text_encoder)
            enc = UMT5EncoderModel(TEXT_ENCODER_PRESETS[m.text_encoder].to_hf())
            out["text_encoder"] = enc.to(device, dtype).eval().requires_grad_(False)
        else:
            from openwan.models import load_umt5_encoder

            out["text_encoder"] = load_umt5_encoder(m.text_encoder, dtype=dtype, device=device)
    if "tokenizer" in only:
        tokenizer = _build_tokenizer(m.tokenizer or (m.text_encoder if m.text_encoder and Path(m.text_encoder).exists()
                                                     else None))
        if tokenizer is not None:
            out["tokenizer"] = tokenizer
    return out


def _build_tokenizer(name: str | None):
    if not name:
        return None
    if name == "byt5":  # byte level: needs no download, fits the tiny umT5 preset's 384-id vocabulary
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer()
    from openwan.models.text_encoder import load_tokenizer

    path = Path(name)
    return load_tokenizer(path if path.is_dir() else path.parent)


def training_mesh(cfg: TrainConfig):
    """Join the job ``torchrun`` started and lay its processes out as ``cfg.parallel`` says: a ``DeviceMesh`` with
    dims ("dp", "cfg", "ring", "ulysses") (cfg = 1); None for one process, which needs no process group.

    Raises ValueError when parallel.dp × cp_ring × cp_ulysses is not the number of processes."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else int(os.environ.get("WORLD_SIZE", "1"))
    sizes = cfg.parallel.sizes(world)
    if world == 1:
        return None
    from openwan.parallel import build_mesh, init_distributed

    device = _resolve_device(cfg.device)
    init_distributed("nccl" if device.type == "cuda" else "gloo")
    return build_mesh(dp=sizes["dp"], ring=sizes["ring"], ulysses=sizes["ulysses"], device_type=device.type)


def _checked_mesh(cfg: TrainConfig, mesh: Any):
    """``mesh`` if its dims are the ones ``cfg.parallel`` asks for (None for a mesh of one rank)."""
    if mesh is None or mesh.size() == 1:
        cfg.parallel.sizes(1)
        return None
    from openwan.parallel import dim_size

    want = {**cfg.parallel.sizes(mesh.size()), "cfg": 1}
    have = {name: dim_size(mesh, name) for name in want}
    if have != want:
        raise ValueError(f"the device mesh has {have} but the config's parallel section asks for {want}; build the "
                         "mesh with openwan.train.training_mesh(cfg), or change parallel.dp / cp_ring / cp_ulysses.")
    return mesh


def sample_generator(seed: int, stream: str, draw: int, index: int) -> torch.Generator:
    """The generator of one sample's random draws: a pure function of the run's seed, the stream ("noise" for σ
    and ε, "dropout" for text dropout), the draw number (once per step) and the sample's index in the global
    batch — so any split of the batch over data-parallel ranks draws exactly what one process draws."""
    words = np.random.SeedSequence([seed % 2**64, _STREAMS[stream], draw, index]).generate_state(2)  # 2 x uint32
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


_STREAMS = {"noise": 1, "dropout": 2}


def data_from_config(cfg: TrainConfig, dp_rank: int = 0, dp_size: int = 1) -> DataFactory:
    """The batch source of each stage from ``cfg.data`` / the stage: a manifest of raw clips or a cache folder.

    A stage's ``batch_size`` is the global batch: data-parallel rank ``dp_rank`` of ``dp_size`` gets its
    ``batch_size / dp_size`` samples of each (the ranks of a context-parallel group pass the same dp_rank)."""

    def factory(index: int, stage: StageConfig) -> BatchSource:
        manifest = stage.manifest or (cfg.data.manifest if stage.cache_dir is None else None)
        cache_dir = stage.cache_dir or (cfg.data.cache_dir if stage.manifest is None else None)
        if bool(manifest) == bool(cache_dir):
            raise ValueError(f"stage {index} ({stage.name}) needs exactly one data source: set data.manifest (raw "
                             "clips) or data.cache_dir (latent + text cache), here or in the stage.")
        if stage.batch_size % dp_size:
            raise ValueError(f"stages.{index}.batch_size={stage.batch_size} is the global batch and must split evenly "
                             f"over the {dp_size} data-parallel ranks (parallel.dp); make it a multiple of {dp_size}.")
        return _stage_source(cfg, index, stage, manifest, cache_dir, dp_rank, dp_size)

    return factory


def _stage_source(cfg: TrainConfig, index: int, stage: StageConfig, manifest: str | None,
                  cache_dir: str | None, dp_rank: int = 0, dp_size: int = 1) -> BatchSource:
    from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets
    from openwan.data.dataset import VideoClipDataset, collate

    buckets = [Bucket(*b) for b in stage.buckets]
    if manifest:
        from openwan.data.manifest import read_manifest

        records = read_manifest(manifest)
        assignments = assign_buckets(records, buckets, fps=cfg.data.fps)
        dataset = VideoClipDataset(records, assignments, fps=cfg.data.fps)
        where = f"manifest {manifest}"
    else:
        from openwan.data.cache import CachedDataset

        dataset = CachedDataset(cache_dir)
        # A cache holds each clip at the bucket it was built for: the stage trains on those in its buckets, and on
        # the first frames of longer ones (exact for a causal VAE; see CachedDataset.fit_buckets).
        assignments = dataset.fit_buckets(buckets)
        if not any(assignments):
            cached = sorted({tuple(b.as_list()) for b in dataset.buckets if b is not None})
            raise ValueError(f"stage {index} ({stage.name}): no clip of the cache {cache_dir} is in the stage's "
                             f"buckets {[list(b) for b in stage.buckets]}; the cache holds {[list(b) for b in cached]}"
                             " — set the stage's buckets to those, or to fewer frames at the same height and width"
                             " (served as a clip's first latent frames), or build a cache for these.")
        where = f"cache {cache_dir}"
    used = sum(a is not None for a in assignments)
    log.info("stage %d (%s): %d of %d clips of the %s fit its buckets", index, stage.name, used, len(assignments),
             where)
    # Cut into global batches of batch_size (the same plan for any dp_size), each split over the dp ranks.
    sampler = BucketBatchSampler(assignments, stage.batch_size // dp_size, seed=cfg.seed + 1000 * index,
                                 image_video_ratio=stage.image_video_ratio, rank=dp_rank, world_size=dp_size)
    return SamplerLoader(dataset, sampler, collate, num_workers=cfg.data.num_workers, seed=cfg.seed + 1000 * index)


class SamplerLoader:
    """A DataLoader over a resumable batch sampler (``openwan.data.BucketBatchSampler``), as a :class:`BatchSource`.

    Workers prefetch, so the sampler runs ahead of training; the state handed out is the sampler's position after
    the batches the trainer actually took (``state_dict(consumed=n)``). One pass is one epoch: the sampler moves
    to the next epoch itself, and the trainer iterates again.
    """

    def __init__(self, dataset, batch_sampler, collate_fn, num_workers: int = 0, seed: int = 0):
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.num_workers, self.seed = num_workers, seed
        self._state = _json_copy(batch_sampler.state_dict())

    def __iter__(self) -> Iterator[dict | None]:
        from torch.utils.data import DataLoader

        # An own generator, seeded by the epoch: worker seeds must not draw from torch's global generator, and a
        # resumed run must give its workers the seeds the uninterrupted run gave them.
        generator = torch.Generator().manual_seed(self.seed + int(self._state.get("epoch", 0)))
        loader = DataLoader(self.dataset, batch_sampler=self.batch_sampler, collate_fn=self.collate_fn,
                            num_workers=self.num_workers, generator=generator)
        for consumed, batch in enumerate(loader, 1):
            self._state = _json_copy(self.batch_sampler.state_dict(consumed=consumed))
            yield batch

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)
        self._state = _json_copy(state)


def _adamw(params: Mapping[str, nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices and kernels only: biases, norm scales, modulation tables and position tables keep their scale.
    decay = [p for n, p in params.items() if p.ndim >= 2 and not n.endswith(("modulation", "emb_pos"))]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and not n.endswith(("modulation", "emb_pos")))]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one kernel per op over all tensors; torch picks it on GPUs but loops tensor by tensor on the CPU.
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                             foreach=True)


def _check_trainable_model(dit: nn.Module) -> None:
    cfg = getattr(dit, "cfg", None)
    if cfg is None:
        raise ValueError("the model to train must be an openwan WanDiT.")
    if cfg.in_dim != cfg.out_dim:
        raise ValueError(f"training supports text-to-video models (in_dim = out_dim) so far; this is a "
                         f"{cfg.model_type} model with image conditioning.")


def _named_optimizer_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                           params: Mapping[str, nn.Parameter]) -> dict[str, Any]:
    """A one-process ``optimizer.state_dict()`` (parameters numbered in group order) keyed by parameter names, as
    ``set_optimizer_state_dict`` takes it."""
    names = {id(p): n for n, p in params.items()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(order):
        raise ValueError(f"the checkpoint's optimizer holds {len(saved)} parameters, this model trains {len(order)}; "
                         "resume with the config of the run that wrote it.")
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }


def _all_reduce_grads(params: list[nn.Parameter], samples: int) -> None:
    """Whole-model gradients on every rank (no FSDP): summed over all ranks — a context-parallel group holds one
    sample's gradient in per-token shares — and divided by the number of distinct samples (dp)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for all
    torch.distributed.all_reduce(flat)
    flat /= samples
    torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is available; use device=cpu or auto.")
    return device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _batch_size(batch: Any) -> int:
    if not batch:
        return 0
    for key in ("latents", "video"):
        if key in batch and isinstance(batch[key], torch.Tensor):
            return int(batch[key].shape[0])
    return len(batch.get("key", [])) or 1


def _json_copy(state: Any) -> Any:
    return json.loads(json.dumps(state))


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


__all__ = [
    "BatchSource",
    "DataFactory",
    "ListBatches",
    "Trainer",
    "build_dit",
    "build_encoders",
    "data_from_config",
    "sample_generator",
    "training_mesh",
    "SamplerLoader",
    "flow_matching_loss",
    "lr_at",
    "noised",
    "seed_everything",
    "stage_at",
    "tokens_of",
    "train",
]
