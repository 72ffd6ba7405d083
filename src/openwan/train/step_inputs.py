"""What goes into a DiT training step: the batch read into (x0, context) — latents from the cache or encoded from
video, text states from the cache or encoded from captions, random windows, text dropout — and the step's random
draws (σ, ε), each a pure function of (seed, stream, draw, the sample's index in the global batch).

:class:`StepInputs` is a mixin of :class:`~openwan.train.trainer.Trainer`; it uses the trainer's ``cfg``, ``step``,
``device``, ``dit``, ``vae``, ``text_encoder``, ``tokenizer``, ``draws``, ``dp_rank`` and ``_empty_context``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openwan.data.buckets import Bucket
from openwan.data.cache import cut_windows
from openwan.diffusion import resolution_shift
from openwan.diffusion.objective import draw_sample_sigmas
from openwan.models.text_encoder import encode_prompts, pad_context
from openwan.train.optim import stage_at


def tokens_of(latents: torch.Tensor, patch_size: tuple[int, int, int]) -> int:
    """DiT tokens per sample for latents [B, C, F, h, w]."""
    f, h, w = latents.shape[2:]
    return (f // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])


class StepInputs:
    """The batch and random-draw side of :class:`~openwan.train.trainer.Trainer` (see the module docstring)."""

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
        # [B, F]: a level per latent frame
        frame_sigmas = t.per_frame > 0 or t.first_frame > 0 or t.staircase > 0 or t.anchor > 0
        mix = [(m.fraction, m.shift, m.logit_mean, m.logit_std) for m in t.mix]
        sigmas, noise = [], []
        anchored = self.anchored(x0.shape[0])
        for gen, anchor in zip(self.generators("noise", x0.shape[0]), anchored.tolist()):
            sigma = draw_sample_sigmas(
                gen, frames=x0.shape[2], patch_frames=self.dit.cfg.patch_size[0], mode=t.mode, shift=shift,
                logit_mean=t.logit_mean, logit_std=t.logit_std, mix=mix, per_frame=t.per_frame,
                first_frame=t.first_frame, sigma_range=(t.min_sigma, t.max_sigma),
                staircase=(t.staircase, t.staircase_steps, t.staircase_shift) if t.staircase > 0 else None,
                anchor=anchor)
            sigmas.append(sigma.expand(x0.shape[2]) if frame_sigmas else sigma)
            noise.append(torch.randn(x0.shape[1:], generator=gen, dtype=torch.float32))
        return (torch.stack(sigmas) if frame_sigmas else torch.cat(sigmas)), torch.stack(noise), shift

    def anchored(self, batch: int) -> torch.Tensor:
        """Which samples of this step's batch [B] (bool) take an anchor (``timesteps.anchor``): a pure function of
        (seed, step, the sample's index in the global batch), so the window cut and the noise draw agree."""
        p = self.cfg.stage_timesteps(stage_at(self.cfg, self.step)[0]).anchor
        if p <= 0:
            return torch.zeros(batch, dtype=torch.bool)
        first = self.dp_rank * batch
        return torch.tensor([float(torch.rand((), generator=sample_generator(self.cfg.seed, "anchor", self.step,
                                                                             first + j))) < p for j in range(batch)])

    def generators(self, stream: str, batch: int) -> list[torch.Generator]:
        """One generator per sample of this rank's batch for the next draw of ``stream``."""
        draw = self.draws.get(stream, 0)  # a checkpoint from before a stream existed holds no count for it
        self.draws[stream] = draw + 1
        first = self.dp_rank * batch  # shards are equal: sample j here is sample first + j of the global batch
        return [sample_generator(self.cfg.seed, stream, draw, first + j) for j in range(batch)]

    def prepare_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 [B, C, F, h, w] float32, context [B, L, text_dim]) on the training device, text dropout applied."""
        x0 = self.latents_of(batch)
        stage = stage_at(self.cfg, self.step)[0]
        if stage.window == "random":  # whole cached clips in; each sample's window at its own random offset
            x0 = cut_windows(x0, Bucket(*stage.buckets[0]).latent_frames, self.generators("window", x0.shape[0]),
                             self.anchored(x0.shape[0]))
        context, empty = self.context_of(batch)
        if context.shape[0] != x0.shape[0]:
            raise ValueError(f"the batch has {x0.shape[0]} samples but {context.shape[0]} contexts; give one caption "
                             "or context per sample.")
        p = self.cfg.text_dropout
        if p > 0:
            gens = self.generators("dropout", x0.shape[0])
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


def sample_generator(seed: int, stream: str, draw: int, index: int) -> torch.Generator:
    """The generator of one sample's random draws: a pure function of the run's seed, the stream ("noise" for σ
    and ε, "dropout" for text dropout, "window" for a stage's random windows, "anchor" for which samples take an
    anchor), the draw number (once per step; the step itself for "anchor")
    and the sample's index in the global batch — so any split of the batch over data-parallel ranks draws
    exactly what one process draws."""
    words = np.random.SeedSequence([seed % 2**64, _STREAMS[stream], draw, index]).generate_state(2)  # 2 x uint32
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


_STREAMS = {"noise": 1, "dropout": 2, "window": 3, "anchor": 4}


__all__ = ["StepInputs", "sample_generator", "tokens_of"]
