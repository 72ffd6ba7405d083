"""Streaming generation (the paper's "Streamer", section 5.6): a sliding denoising queue over the DiT, decoded
frame by frame by the causal VAE, with no fixed length.

The queue holds up to ``window`` latent frames in time order, in G = window / block groups of ``block`` frames. The
frames of a group share a noise level; the levels form a staircase over a σ grid of S = G·K steps (K =
``steps_per_shift``) from σ_0 = 1 (pure noise) to σ_S = 0:

    the group of age a (0 = newest) sits at σ[a·K + k] at sub-step k of a queue step

One queue step: a group of pure noise joins at the new end; K Euler sub-steps (each one DiT evaluation of the whole
window, both CFG branches in one batch, per-token timesteps: each token gets its own frame's level) move every group
K grid points down; the oldest group, now at σ = 0, leaves and the causal VAE decodes it. Every latent frame thus
gets S steps in all, seeing cleaner frames before it and noisier ones after it.

- ``block=1``: the paper's staircase, one latent frame (4 video frames) out per queue step.
- ``block=window``: uniform levels: the window is denoised as one clip, then replaced. With a window of a clip's
  latent length and K = N steps this is the ordinary Euler sampler, number for number.
- ``sigmas=``: an explicit grid of S + 1 values, for a student trained on its own per-frame levels (e.g. K = 1).

RoPE positions: the window is its own frame of reference (positions 0 .. n-1, oldest first). RoPE attention depends
only on the offset between two tokens, so positions that kept growing would give the same attention in exact
arithmetic; the fixed frame keeps the angles small (no float precision lost after hours of video) and needs no
change to the DiT.

Anchor (``anchor=True``): the window's first slot holds one clean latent frame (σ 0) ahead of the staircase, and the
staircase walks the G = (window − 1) / block groups after it. The anchor is the stream's first latent frame to leave
the queue (or an image's latent, for a stream started from an image), so every later frame is denoised in attention
to how the stream began: its colours and shapes, minutes later. A prompt switch re-anchors as its first latent frame
joins the queue: the anchor becomes the first frame a new stream of the new prompt alone would give (drawn from the
stream's noise, no anchor, the queue filled from empty: G·K more evaluations, once), so the object in the window's
attention is the new prompt's while the frames in the queue carry the position over. Models are trained for it by
``timesteps.anchor`` (the clip's first latent frame given clean ahead of a window cut later in the clip); a DiT
trained with clean first frames (``timesteps.first_frame``, Wan2.2 TI2V-style) already reads an anchor that is its
window's neighbour.

Two-expert models (Wan2.2 A14B, the bundled demo model): each frame takes the velocity of the expert its own level
picks (t >= boundary·1000: the high-noise expert); a window straddling the boundary runs both experts on the whole
window, so such steps cost two evaluations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from openwan.diffusion import sampling_sigmas, timesteps_from_sigmas
from openwan.pipelines.stream_state import StreamDecoder, read_state, write_state
from openwan.pipelines.ti2v import encode_first_frame
from openwan.runtime.offload import on_device


@dataclass(frozen=True)
class StreamConfig:
    """How a stream samples. None fields take the loaded model's defaults (see :func:`stream`)."""

    window: int | None = None  # latent frames in the queue (None: the model's default clip, 5 for the demo)
    block: int = 1  # latent frames per noise level: 1 = staircase, window = uniform levels
    steps_per_shift: int | None = None  # Euler sub-steps (DiT evaluations) per queue step (None: ~ the model's steps)
    sample_shift: float | None = None  # flow shift of the σ staircase
    sigmas: tuple[float, ...] | None = None  # an explicit grid: (window / block) * steps_per_shift + 1 values, 1 .. 0
    guide_scale: float | tuple[float, float] | None = None  # CFG scale ((low, high) for two experts)
    negative_prompt: str | None = None
    size: tuple[int, int] | None = None  # (width, height) in pixels
    seed: int = 0
    transition: int = 2  # latent frames over which a prompt switch cross-fades (per frame, in velocity)
    fps: float | None = None  # frames per second of the output (prompt times are in seconds of it)
    anchor: bool = False  # keep the stream's first latent frame clean in the window's first slot

    def __post_init__(self) -> None:
        for name in ("window", "steps_per_shift"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"StreamConfig.{name} must be an integer >= 1; got {value!r}.")
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(f"StreamConfig.block must be an integer >= 1; got {self.block!r}.")
        if not isinstance(self.anchor, bool):
            raise ValueError(f"StreamConfig.anchor must be True or False; got {self.anchor!r}.")
        if self.window is not None and ((self.window - self.anchor) % self.block or self.window - self.anchor < 1):
            raise ValueError(f"StreamConfig.window ({self.window}) must be a multiple of block ({self.block})"
                             + (" plus the anchor's slot (1)" if self.anchor else "") + ".")
        if self.sample_shift is not None and not (math.isfinite(self.sample_shift) and self.sample_shift > 0):
            raise ValueError(f"StreamConfig.sample_shift must be a finite number above 0; got {self.sample_shift!r}.")
        scales = self.guide_scale if isinstance(self.guide_scale, (tuple, list)) else (self.guide_scale,)
        if self.guide_scale is not None and not (len(scales) in (1, 2)
                                                 and all(math.isfinite(g) and g >= 0 for g in scales)):
            raise ValueError(f"StreamConfig.guide_scale must be a finite number >= 0 or a (low, high) pair; got "
                             f"{self.guide_scale!r}.")
        if not isinstance(self.transition, int) or self.transition < 0:
            raise ValueError(f"StreamConfig.transition must be an integer >= 0 (latent frames); got "
                             f"{self.transition!r}.")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"StreamConfig.fps must be a number above 0; got {self.fps!r}.")
        if not -2**63 <= self.seed < 2**64:
            raise ValueError(f"StreamConfig.seed must be an integer from -2**63 to 2**64-1; got {self.seed}.")
        if self.sigmas is not None:
            s = [float(v) for v in self.sigmas]
            if len(s) < 2 or s[-1] != 0.0 or s[0] > 1.0 or any(b >= a for a, b in zip(s, s[1:])):
                raise ValueError("StreamConfig.sigmas must fall strictly from at most 1 to exactly 0 (at least two "
                                 f"values); got {self.sigmas!r}.")

    @property
    def groups(self) -> int:
        """G: noise levels in the full queue (latent frames out per queue step = ``block``); the anchor's slot is
        not one of them."""
        return (self.window - self.anchor) // self.block

    def grid(self) -> torch.Tensor:
        """The float64 σ grid [G·K + 1] the staircase walks (needs the resolved fields)."""
        steps = self.groups * self.steps_per_shift
        if self.sigmas is not None:
            if len(self.sigmas) != steps + 1:
                raise ValueError(f"StreamConfig.sigmas holds {len(self.sigmas)} values; window / block * "
                                 f"steps_per_shift + 1 = {steps + 1} are needed.")
            return torch.tensor([float(v) for v in self.sigmas], dtype=torch.float64)
        return sampling_sigmas(steps, self.sample_shift, kind="euler")

    def to_dict(self) -> dict:
        """JSON-shaped (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> StreamConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class PromptSchedule:
    """The text over time: ``entries`` are (start second, prompt), the first at 0 s, times increasing."""

    entries: tuple[tuple[float, str], ...] = ((0.0, ""),)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a prompt schedule needs at least one prompt.")
        times = [float(t) for t, _ in self.entries]
        if times[0] != 0.0 or any(b <= a for a, b in zip(times, times[1:])) or not all(map(math.isfinite, times)):
            raise ValueError(f"prompt times must start at 0 s and increase (give --then times in order); got {times}.")
        if not all(isinstance(p, str) and p.strip() for _, p in self.entries):
            raise ValueError("every prompt of a schedule must be a non-empty string.")

    @classmethod
    def of(cls, prompt: str, then: Sequence[tuple[float, str]] = ()) -> PromptSchedule:
        """``prompt`` from 0 s, then each (second, prompt) of ``then``."""
        return cls(((0.0, prompt), *((float(t), p) for t, p in then)))

    @property
    def prompts(self) -> list[str]:
        return [p for _, p in self.entries]

    def first_frames(self, fps: float, temporal: int) -> list[int]:
        """Each switch's (entries 1..) first latent frame: the one holding the video frame at its time."""
        out = []
        for start, _ in self.entries[1:]:
            pixel = round(start * fps)
            out.append(0 if pixel == 0 else (pixel - 1) // temporal + 1)
        return out

    def weights(self, latent_frame: int, fps: float, temporal: int, transition: int) -> list[float]:
        """Cross-fade weight of each switch (entries 1..) at ``latent_frame``: 0 before the switch's first latent
        frame, rising by 1 / (transition + 1) per latent frame from there, 1 after."""
        return [min(1.0, max(0.0, (latent_frame - first + 1) / (transition + 1)))
                for first in self.first_frames(fps, temporal)]


class VideoStream:
    """An endless video: iterate for chunks of frames [t, H, W, 3] in [0, 1] (CPU), or :meth:`read` n frames.

    The state between queue steps (queue latents and levels, the noise generator, the decoder's cache, decoded
    frames not yet handed out, counters) is what :meth:`save` writes and :meth:`resume` reads back.
    """

    def __init__(self, pipe, schedule: PromptSchedule, config: StreamConfig = StreamConfig(), image=None):
        self.pipe = pipe
        self.schedule = schedule
        self.config = cfg = _resolved(pipe, config)
        if image is not None and not cfg.anchor:
            raise ValueError("a stream started from an image keeps the image as its anchor; set anchor=True (stream() "
                             "and the CLI's --image do).")
        pt, ph, pw = pipe.dit.cfg.patch_size
        if pipe.has_image_input:
            raise ValueError("streaming generates from text; load a text-to-video model (this one is image-to-video).")
        if pt != 1:
            raise ValueError(f"streaming needs a DiT with temporal patch 1 (one latent frame per token row); this "
                             f"one has {pt}.")
        width, height = cfg.size
        s = pipe.vae.cfg.spatial_compression
        if width % (s * pw) or height % (s * ph) or width <= 0 or height <= 0:
            raise ValueError(f"size {width}x{height} must be positive multiples of {s * pw}x{s * ph}.")
        self.latent_shape = (pipe.dit.cfg.out_dim, cfg.block, height // s, width // s)  # one group [C, block, h, w]
        self.tokens_per_frame = (height // s // ph) * (width // s // pw)
        self.sigmas = cfg.grid()
        self._sig = self.sigmas.tolist()
        self.timesteps = timesteps_from_sigmas(self.sigmas)  # integer σ·1000, as the ordinary sampler
        self.temporal = pipe.vae.cfg.temporal_compression
        self.contexts = self._encode(schedule, cfg)
        device = pipe.device
        self.generator = torch.Generator(device).manual_seed(cfg.seed)
        self.latents = torch.zeros((*self.latent_shape[:1], 0, *self.latent_shape[2:]), device=device)
        self.levels: list[int] = []  # σ-grid index of each group, oldest first
        self.decoder = StreamDecoder(pipe.vae, device, pipe.offload_model)
        self.pending = torch.zeros(0, height, width, 3)
        self.joined = 0  # latent frames that have joined the queue
        self.steps = 0  # queue steps done
        self.emitted = 0  # video frames handed out
        self.extra: dict[str, torch.Tensor] = {}  # the caller's tensors read back by resume
        self.anchor: torch.Tensor | None = None  # [C, 1, h, w] the clean frame ahead of the window (anchor=True)
        self.anchor_prompt: int | None = None  # the prompt the anchor was made under (None: a cross-fade's mix)
        if image is not None:
            self._start_from(image)

    # ------------------------------------------------------------------------------------ text
    def _encode(self, schedule: PromptSchedule, cfg: StreamConfig) -> list[torch.Tensor]:
        """Each prompt's context [1 or 2, text_len, dim] (with the negative prompt's row when guided)."""
        guided = max(cfg.guide_scale) != 1.0 if isinstance(cfg.guide_scale, tuple) else cfg.guide_scale != 1.0
        out = []
        for prompt in schedule.prompts:  # encoded as the ordinary sampler does: [prompt, negative] in one batch
            out.append(self.pipe.encode_text([prompt, cfg.negative_prompt] if guided else [prompt]))
        return out

    def prompt_mix(self, latent_frame: int) -> list[float]:
        """How much of each prompt's conditional velocity latent frame ``latent_frame`` of the stream takes (sums to
        1): each switch fades its prompt in over ``transition`` latent frames from the switch's time."""
        mix = [1.0] + [0.0] * (len(self.contexts) - 1)
        weights = self.schedule.weights(latent_frame, self.config.fps, self.temporal, self.config.transition)
        for i, w in enumerate(weights, start=1):
            mix = [(1.0 - w) * c for c in mix]
            mix[i] = w
        return mix

    def pure_prompt(self, latent_frame: int) -> int | None:
        """The prompt latent frame ``latent_frame`` is made under alone (None inside a cross-fade)."""
        mix = self.prompt_mix(latent_frame)
        return next((i for i, w in enumerate(mix) if w == 1.0), None)

    def _start_from(self, image) -> None:
        """Latent frame 0 is ``image`` (encoded by the VAE, held as the anchor); its decoded frame is the stream's
        first."""
        from openwan.pipelines.wan import _as_frames  # the pipeline's own image check (imports this module)

        vae, device = self.pipe.vae, self.pipe.device
        with torch.no_grad(), on_device(vae, device, self.pipe.offload_model):
            z = encode_first_frame(vae, _as_frames(image), *self.config.size, device)[0]  # [C, 1, h, w]
        self.anchor, self.anchor_prompt = z, self.pure_prompt(0)
        self.pending = self.decoder.decode(z)
        self.joined = 1

    # ------------------------------------------------------------------------------------ the queue
    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One queue step: a noise group joins, K sub-steps, the clean group (if any) leaves; returns its decoded
        frames [t, H, W, 3] (t = 0 while the queue fills) and also keeps them for :meth:`read` / iteration.

        All or nothing: an exception (Ctrl-C included) inside leaves the stream as it was before the step, so a
        state saved after it still resumes identically."""
        cfg = self.config
        generator, decoder = self.generator.get_state(), self.decoder.snapshot()
        anchor = before = (self.anchor, self.anchor_prompt)
        try:
            joined = self.joined + cfg.block
            if cfg.anchor and anchor[0] is not None:  # a switch re-anchors as its first latent frame joins
                prompt = self._switch_starting(joined - cfg.block, joined)
                if prompt is not None and prompt != anchor[1]:
                    anchor = self.anchor, self.anchor_prompt = self._fresh_frame(prompt), prompt
            latents, levels = self._shift(torch.cat([self.latents, self._noise()], dim=1), [*self.levels, 0], joined)
            frames = self.pending[:0]
            if levels[0] == len(self._sig) - 1:  # the oldest group reached σ = 0: it leaves
                first = joined - latents.shape[1]  # its first latent frame's number in the stream
                clean, latents, levels = latents[:, :cfg.block], latents[:, cfg.block:].clone(), levels[1:]
                frames = self.decoder.decode(clean)
                if cfg.anchor and anchor[0] is None:  # the first frame out anchors the stream
                    anchor = (clean[:, :1].clone(), self.pure_prompt(first))
        except BaseException:
            self.generator.set_state(generator)
            self.decoder.restore_snapshot(decoder)
            self.anchor, self.anchor_prompt = before
            raise
        self.latents, self.levels, self.joined, self.steps, self.pending = (
            latents, levels, joined, self.steps + 1, torch.cat([self.pending, frames]))
        self.anchor, self.anchor_prompt = anchor
        return frames

    def _shift(self, latents: torch.Tensor, levels: list[int], joined: int, prompt: int | None = None,
               anchored: bool = True) -> tuple[torch.Tensor, list[int]]:
        """K Euler sub-steps of the window ``latents`` whose groups sit at grid ``levels``."""
        cfg = self.config
        for _ in range(cfg.steps_per_shift):
            v = self.velocity(latents, levels, joined, prompt=prompt, anchored=anchored)
            groups = latents.split(cfg.block, dim=1)
            # Euler per group, x + (σ_next - σ)·v with Python floats: the ordinary solver's arithmetic
            latents = torch.cat([x + (self._sig[i + 1] - self._sig[i]) * vg
                                 for x, vg, i in zip(groups, v.split(cfg.block, dim=1), levels)], dim=1)
            levels = [i + 1 for i in levels]
        return latents, levels

    def _noise(self) -> torch.Tensor:
        """One group of pure noise [C, block, h, w] from the stream's generator."""
        return torch.randn(self.latent_shape, generator=self.generator, device=self.latents.device, dtype=torch.float32)

    def _switch_starting(self, first: int, end: int) -> int | None:
        """The prompt whose switch has its first latent frame among ``first`` .. ``end`` - 1 (the latest such one;
        None: no switch begins there)."""
        starts = self.schedule.first_frames(self.config.fps, self.temporal)
        return next((i for i in range(len(starts), 0, -1) if first <= starts[i - 1] < end), None)

    def _fresh_frame(self, prompt: int) -> torch.Tensor:
        """The first clean latent frame [C, 1, h, w] a new stream of prompt ``prompt`` alone would give (no anchor,
        the queue filled from empty), drawn from the stream's noise."""
        latents, levels = self.latents[:, :0], []
        while not levels or levels[0] < len(self._sig) - 1:
            latents, levels = self._shift(torch.cat([latents, self._noise()], dim=1), [*levels, 0], 0, prompt=prompt,
                                          anchored=False)
        return latents[:, :1].clone()

    def velocity(self, x: torch.Tensor, levels: list[int], joined: int | None = None, *, prompt: int | None = None,
                 anchored: bool = True) -> torch.Tensor:
        """The guided velocity [C, F, h, w] for the window's latents ``x`` [C, F, h, w] (latent frames joined - F ..
        joined - 1 of the stream; ``joined`` defaults to :attr:`joined`) whose groups sit at grid ``levels``."""
        pipe, cfg = self.pipe, self.config
        joined = self.joined if joined is None else joined
        numbers = list(range(joined - x.shape[1], joined))  # the stream's latent frame numbers of the window
        t_frames = self.timesteps[torch.tensor(levels).repeat_interleave(cfg.block)]  # [F] int64
        anchored = anchored and self.anchor is not None
        if anchored:  # the anchor goes first, clean (t 0), under the window's first frame's prompt mix
            x, numbers = torch.cat([self.anchor.to(x), x], dim=1), numbers[:1] + numbers
            t_frames = torch.cat([self.timesteps[-1:], t_frames])
        mix = torch.tensor([self.prompt_mix(m) if prompt is None else
                            [float(i == prompt) for i in range(len(self.contexts))] for m in numbers])  # [F, P]
        used = [i for i in range(mix.shape[1]) if bool(mix[:, i].any())]
        context = torch.cat([self.contexts[i][:1] for i in used] + [self.contexts[0][1:]])  # conds, negative (if any)
        weights = mix[:, used].T.to(x.device)[:, None, :, None, None] if len(used) > 1 else None  # [P', 1, F, 1, 1]
        if bool((t_frames == t_frames[0]).all()):  # one level: the ordinary sampler's t [B]
            t = t_frames[:1].float().to(x.device)  # [1]
        else:
            t = t_frames.float().repeat_interleave(self.tokens_per_frame).to(x.device)[None]  # [1, L]: per token
        v = None
        for model, scale, frames in self._experts(t_frames):
            with on_device(model, pipe.device, pipe.offload_model and pipe.dit_low is not None):
                vm = _guided(model, x, t, context, len(used), scale, pipe.dtype, weights)
            if v is None and bool(frames.all()):
                v = vm
                break
            v = torch.zeros_like(vm) if v is None else v
            v[:, frames.to(v.device)] = vm[:, frames.to(v.device)]
        return v[:, 1:] if anchored else v

    def _experts(self, t_frames: torch.Tensor) -> list[tuple[torch.nn.Module, float, torch.Tensor]]:
        """(model, guide scale, frames it serves [F] bool) for the experts this window's levels need."""
        pipe, guide = self.pipe, self.config.guide_scale
        if pipe.dit_low is None or pipe.boundary is None:
            return [(pipe.dit, guide[1] if isinstance(guide, tuple) else guide, torch.ones_like(t_frames, dtype=bool))]
        low, high = guide if isinstance(guide, tuple) else (guide, guide)
        high_frames = t_frames.double() >= pipe.boundary * 1000
        pairs = [(pipe.dit, high, high_frames), (pipe.dit_low, low, ~high_frames)]
        return [p for p in pairs if bool(p[2].any())]

    # ------------------------------------------------------------------------------------ frames out
    def read(self, n: int) -> torch.Tensor:
        """The next ``n`` video frames [n, H, W, 3] in [0, 1]."""
        while self.pending.shape[0] < n:
            self.step()
        out, self.pending = self.pending[:n], self.pending[n:].clone()
        self.emitted += n
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        while self.pending.shape[0] == 0:
            self.step()
        return self.read(self.pending.shape[0])

    @property
    def held_latent_frames(self) -> int:
        """Latent frames in the queue now (never more than the window)."""
        return self.latents.shape[1]

    def held_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the stream keeps between steps, by name (what :meth:`save` writes)."""
        tensors, _ = self.decoder.export()
        anchor = {} if self.anchor is None else {"anchor": self.anchor}
        return {"latents": self.latents, "pending": self.pending, "generator": self.generator.get_state(), **anchor,
                **tensors}

    # ------------------------------------------------------------------------------------ save / resume
    def save(self, path: str | Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the stream's state to ``path`` atomically (a safetensors file); :meth:`resume` continues it.
        ``extra``: the caller's own tensors stored beside it (the resumed stream's :attr:`extra`)."""
        _, decoder_info = self.decoder.export()
        info = {"config": self.config.to_dict(), "schedule": [list(e) for e in self.schedule.entries],
                "levels": self.levels, "joined": self.joined, "steps": self.steps, "emitted": self.emitted,
                "decoder": decoder_info, "model": _model_signature(self.pipe), "anchor_prompt": self.anchor_prompt}
        extra = {f"extra.{k}": v for k, v in (extra or {}).items()}
        return write_state(path, {**self.held_tensors(), **extra}, info)

    @classmethod
    def resume(cls, pipe, path: str | Path) -> VideoStream:
        """The stream saved at ``path``, over ``pipe`` (the same model it was started with)."""
        tensors, info = read_state(path)
        if info["model"] != _model_signature(pipe):
            raise ValueError(f"{path} was saved from another model ({info['model']}); resume it with the model it "
                             "was started with (the same --ckpt-dir).")
        schedule = PromptSchedule(tuple((float(t), p) for t, p in info["schedule"]))
        self = cls(pipe, schedule, StreamConfig.from_dict(info["config"]))
        self.latents = tensors["latents"].to(pipe.device)
        self.pending = tensors["pending"]
        self.generator.set_state(tensors["generator"])
        self.levels = [int(i) for i in info["levels"]]
        self.joined, self.steps, self.emitted = int(info["joined"]), int(info["steps"]), int(info["emitted"])
        self.decoder.restore(tensors, info["decoder"])
        self.anchor = tensors["anchor"].to(pipe.device) if "anchor" in tensors else None
        self.anchor_prompt = info.get("anchor_prompt")
        self.extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return self


def stream(pipe, prompt: str | PromptSchedule, *, then: Sequence[tuple[float, str]] = (),
           config: StreamConfig | None = None, image=None, **options) -> VideoStream:
    """An endless video from ``pipe`` (a loaded :class:`~openwan.pipelines.WanPipeline`): ``prompt`` from 0 s, then
    each (second, prompt) of ``then``. ``options`` are :class:`StreamConfig` fields (window=, block=, seed=, ...).
    ``image`` ([H, W, 3] or [1, H, W, 3] in [0, 1], scaled to cover the stream's size and center-cropped): the
    stream's first frame, kept as its anchor (``anchor`` is set)."""
    schedule = prompt if isinstance(prompt, PromptSchedule) else PromptSchedule.of(prompt, then)
    if image is not None:
        options["anchor"] = True
    return VideoStream(pipe, schedule, dataclasses.replace(config or StreamConfig(), **options), image=image)


def _resolved(pipe, cfg: StreamConfig) -> StreamConfig:
    """``cfg`` with every None field set from the model's sampling defaults."""
    d = pipe.defaults
    window = cfg.window or (d.frame_num - 1) // pipe.vae.cfg.temporal_compression + 1
    groups = max(1, (window - cfg.anchor) // cfg.block)
    steps = cfg.steps_per_shift or max(1, round(d.sample_steps / groups))
    return dataclasses.replace(
        cfg, window=window, steps_per_shift=steps,
        sample_shift=d.sample_shift if cfg.sample_shift is None else cfg.sample_shift,
        guide_scale=d.guide_scale if cfg.guide_scale is None else cfg.guide_scale,
        negative_prompt=d.negative_prompt if cfg.negative_prompt is None else cfg.negative_prompt,
        size=tuple(cfg.size or d.size), fps=float(cfg.fps or d.fps))


def _model_signature(pipe) -> dict:
    c = pipe.dit.cfg
    return {"dim": c.dim, "num_layers": c.num_layers, "out_dim": c.out_dim, "two_experts": pipe.dit_low is not None,
            "vae_z_dim": pipe.vae.cfg.z_dim}


def _guided(model, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, prompts: int, scale: float, dtype,
            weights: torch.Tensor | None) -> torch.Tensor:
    """Classifier-free guidance, every branch in one batch: x [C, F, h, w]; t [1] or [1, L] (one value per token);
    context [P (+ 1), L_text, D]: P = ``prompts`` prompts' rows, then the negative prompt's when guided; weights
    [P, 1, F, 1, 1], each frame's mix of the P conditional velocities (None: P = 1) -> v [C, F, h, w]."""
    rows = context.shape[0]
    xb = x[None].to(dtype)
    v = model(torch.cat([xb] * rows), t.expand(rows, *t.shape[1:]), context).float()  # [rows, C, F, h, w]
    v_cond = v[0] if weights is None else (weights * v[:prompts]).sum(0)
    if rows == prompts:  # no guidance
        return v_cond
    v_uncond = v[prompts]
    return v_uncond + scale * (v_cond - v_uncond)
