"""The DiT trainer: flow matching over any iterable of batch dicts, a curriculum of stages, exact resume.

One optimizer step (the objective is :func:`openwan.diffusion.objective.flow_matching_loss`):

    x_σ = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   loss = MSE(dit(x_σ, σ·1000, context), v)

Batches are dicts (the data contract): ``latents`` [B, C, F, h, w] or ``video`` [B, 3, T, H, W] in [-1, 1]
(encoded here with the VAE), and ``context`` [B, L, D] (+ ``context_empty`` [L', D]) or ``caption`` (encoded here
with umT5). Text dropout swaps a sample's context for the empty prompt's so classifier-free guidance works.

Many processes (``torchrun``) run the same code: the model is parallelized from outside with
``openwan.parallel.parallelize_dit`` (context parallel over ``cp_ring × cp_ulysses``, FSDP2 over all ranks),
the data is sharded over the ``dp`` ranks only, and every random draw of a step (σ, ε, text dropout) is a
function of (seed, draw, the sample's index in the global batch) — so a run, its loss curve and its checkpoints do
not depend on how many processes trained it. Multi-process checkpoints are sharded
(``torch.distributed.checkpoint``) and load at any world size, one process included (:mod:`.dit_state`). The
builders (device, mesh, model, encoders, data) are in :mod:`.builders`, the optimizer and schedule in :mod:`.optim`,
what a step takes in (the batch read into x0 and context, the random draws) in :mod:`.step_inputs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from openwan.data.sources import BatchSource, DataFactory
from openwan.data.video import save_video
from openwan.diffusion.objective import flow_matching_loss, target_count
from openwan.parallel import DiTParallelConfig, dim_group, dim_size, parallelize_dit
from openwan.pipelines import WanPipeline
from openwan.train import checkpoint as ckpt
from openwan.train.builders import (
    autocast_dtype,
    build_dit,
    build_encoders,
    check_trainable_model,
    checked_mesh,
    data_from_config,
    resolve_device,
    seed_everything,
    training_mesh,
)
from openwan.train.config import StageConfig, TrainConfig, save_config
from openwan.train.distill import Distillation
from openwan.train.dit_state import DiTCheckpointing
from openwan.train.ema import EMA
from openwan.train.lock import RunLock
from openwan.train.lora import add_lora
from openwan.train.metrics import MetricsLogger
from openwan.train.optim import build_adamw, clip_gradients, lr_at, set_lr
from openwan.train.step_inputs import StepInputs, sample_generator, tokens_of

log = logging.getLogger("openwan.train")


# ------------------------------------------------------------------------------------------ maths


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------ trainer


class Trainer(DiTCheckpointing, StepInputs):
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
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)
        self.mesh = checked_mesh(cfg, mesh if mesh is not None else training_mesh(cfg))
        if cfg.lora is not None and self.mesh is not None:
            raise ValueError("LoRA training runs in one process; start it without torchrun (or train the "
                             "full model on many processes).")
        self._init_ranks()
        self.out = Path(cfg.output_dir)
        self.on_step_end = on_step_end
        seed_everything(cfg.seed)
        self.distill = (Distillation(cfg.distill, self.device, self.autocast_dtype)  # loads the frozen teacher
                        if cfg.distill is not None else None)
        if self.distill is not None:
            dit = self.distill.student(dit)  # given, else distill.student_init, else a copy of the teacher
        self.dit = dit if dit is not None else build_dit(cfg)
        check_trainable_model(self.dit)
        self.dit.to(self.device, torch.float32)  # float32 master weights; bf16 comes from autocast
        if cfg.lora is not None:
            add_lora(self.dit, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets)
        self.dit.gradient_checkpointing = cfg.activation_checkpointing
        self._parallelize()
        if self.distill is not None:  # the frozen teacher sharded like the student (nothing at one process)
            self.distill.teacher.shard(self.mesh, fsdp=cfg.parallel.fsdp, param_dtype=self.autocast_dtype)
            if self.distill.teacher.sharded and self.is_main:
                held, whole = self.distill.teacher.held_parameters()
                log.info("distillation teacher sharded over %d processes: %d of its %d parameters held here",
                         self.world_size, held, whole)
        self.dit.train()
        self.params = {n: p for n, p in self.dit.named_parameters() if p.requires_grad}  # DTensors under FSDP
        self.optimizer = build_adamw(self.params.items(), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                     weight_decay=cfg.optim.weight_decay, keep_scale=("modulation", "emb_pos"),
                                     foreach=True)
        self.ema = EMA(self.params, cfg.ema.decay) if cfg.ema.decay > 0 else None
        # How many times σ/ε and text dropout were drawn: with the seed and each sample's index in the global
        # batch this fixes every draw (see sample_generator), so a checkpoint holds the counts, not generator states.
        self.draws = {"noise": 0, "dropout": 0}  # "window" joins when a stage cuts random windows
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
        """Run every stage to its end (resuming first if ``cfg.resume`` says so); returns the last step's metrics.
        Rank 0 holds the output folder's run lock meanwhile: a second run on the same folder refuses to start."""
        lock = self._take_lock()
        try:
            self._start()
            return self._train_stages()
        finally:
            if lock is not None:
                lock.release()

    def _take_lock(self) -> RunLock | None:
        """Rank 0 takes the run lock; every rank raises its refusal (so none waits for a rank that stopped)."""
        lock, error = RunLock(self.out) if self.is_main else None, None
        if lock is not None:
            try:
                lock.acquire()
            except ValueError as err:
                lock, error = None, str(err)
        if self.mesh is not None:
            box = [error]
            torch.distributed.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ValueError(error)
        return lock

    def _train_stages(self) -> dict:
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
        folder = ckpt.resume_folder(self.out, self.cfg.resume)
        if folder is not None:
            self.load_checkpoint(folder)
            log.info("resumed from %s at step %d", folder, self.step)
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")

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
        set_lr(self.optimizer, lr)
        if self.distill is not None:  # consistency distillation of cfg.distill's teacher (train/distill.py)
            loss, sigmas, shift = self.distill.loss(self, x0, context, batch)
        else:
            sigmas, noise, shift = self.draw_noise(x0)
            loss = flow_matching_loss(self.dit, x0, context, sigmas.to(self.device), noise.to(self.device),
                                      self.autocast_dtype, count=self._target_count(sigmas, x0.shape))
        loss.backward()
        params = list(self.params.values())
        if self._all_reduce_grads:
            _all_reduce_grads(params, self.dp_size)
        grad_norm = clip_gradients(params, self.cfg.optim.grad_clip)
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

    def _mean_over_dp(self, loss: torch.Tensor, sigma_mean: torch.Tensor) -> tuple[float, float]:
        """The loss and mean σ of the global batch (equal-sized shards: the mean of the data-parallel ranks')."""
        if self.dp_group is None:
            return loss.item(), float(sigma_mean)
        stats = torch.stack([loss.float(), sigma_mean.to(loss.device, torch.float32)])
        torch.distributed.all_reduce(stats, group=self.dp_group)
        loss_value, sigma_value = (stats / self.dp_size).tolist()
        return loss_value, sigma_value

    # ------------------------------------------------------------------------------------ samples

    def sample(self) -> list[Path]:
        """Videos from the fixed prompts of ``cfg.sample`` with the current (EMA, if any) weights.

        With a mesh every rank runs the sampler (each forward is collective: context parallel, FSDP); all compute
        the same video and rank 0 writes it."""
        s = self.cfg.sample
        if None in (self.vae, self.text_encoder, self.tokenizer):
            self._warn_once("sample", "sample videos need model.vae, model.text_encoder and model.tokenizer; skipped")
            return []
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
                               solver="unipc" if self.distill is None else "euler", progress=False)
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


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


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


__all__ = ["Trainer", "sample_generator", "tokens_of", "train"]
