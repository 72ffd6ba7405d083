"""One pipeline for every Wan task: text / image / first-last-frame / video to video, video extension, and Wan2.2
TI2V's text-or-image to video.

Tasks differ only in their conditioning (``conditioning.py``); the denoising loop below is shared and short.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from openwan.data.video import resize_crop
from openwan.diffusion import make_solver, sampling_sigmas, timesteps_from_sigmas
from openwan.models.image_encoder import encode_images
from openwan.models.text_encoder import encode_prompts, pad_context
from openwan.pipelines import conditioning as cond
from openwan.pipelines import ti2v, vace
from openwan.pipelines.components import load_components
from openwan.pipelines.decode_sigma import check_decode_sigma, decoder_range_warning, naming_the_stop, stop_step
from openwan.pipelines.defaults import SamplingDefaults
from openwan.runtime.cache import BRANCHES, CacheRun, resolve
from openwan.runtime.offload import BlockStreamer, on_device

log = logging.getLogger(__name__)


@dataclass
class WanOutput:
    video: torch.Tensor | None  # [T, H, W, 3] in [0, 1]
    latents: torch.Tensor  # [C, F_lat, H/s, W/s], s the VAE's spatial compression (8; 16 for the Wan2.2 VAE)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_gb: float | None = None
    cache: dict[str, int] | None = None  # with cache=: evaluations run and saved (CacheRun.summary)
    steps_run: int | None = None  # solver steps the sampler ran (fewer than the schedule's with decode_sigma)
    latents_sigma: float | None = None  # the noise level of ``latents``: 0 after a full run, sigma_k with decode_sigma


class WanPipeline:
    """The Wan generation pipeline over loaded components (see :meth:`from_pretrained`)."""

    def __init__(self, dit, vae, text_encoder, tokenizer, *, image_encoder=None, dit_low=None,
                 boundary: float | None = None, defaults: SamplingDefaults | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 t5_cpu: bool = False, offload_model: bool = False, stream_blocks: bool = False,
                 mesh=None, dit_fsdp: bool = False, t5_fsdp: bool = False):
        self.dit, self.dit_low, self.boundary = dit, dit_low, boundary
        z_dim = getattr(getattr(vae, "cfg", None), "z_dim", dit.cfg.out_dim)
        if z_dim != dit.cfg.out_dim:
            raise ValueError(f"the VAE makes {z_dim}-channel latents but the DiT denoises {dit.cfg.out_dim} channels; "
                             "load the VAE of the DiT's release (Wan2.2 TI2V-5B: Wan2.2_VAE.pth).")
        self.vae, self.text_encoder, self.tokenizer, self.image_encoder = vae, text_encoder, tokenizer, image_encoder
        self.defaults = defaults or SamplingDefaults()
        self.device, self.dtype = torch.device(device), dtype
        self.text_device = torch.device("cpu") if t5_cpu else self.device
        self.offload_model = offload_model
        self._streamers = []
        self.cfg_group = None
        if mesh is not None and mesh.size() > 1:
            if stream_blocks or offload_model:
                raise ValueError("block streaming and offload do not combine with a multi-process run; drop "
                                 "--stream-blocks/--offload-model (FSDP shards the weights instead).")
            self._parallelize(mesh, dit_fsdp, t5_fsdp)
        if stream_blocks:
            self._streamers = [BlockStreamer(m, self.device).attach() for m in (dit, dit_low) if m is not None]

    def _parallelize(self, mesh, dit_fsdp: bool, t5_fsdp: bool) -> None:
        """Context parallel / FSDP for the DiT(s) and CFG-parallel, applied from outside (openwan.parallel)."""
        # openwan.parallel imports torch.distributed's FSDP and DTensor, slow to import: only a parallel run does.
        from openwan.parallel import DiTParallelConfig, dim_group, dim_size, parallelize_dit, shard_text_encoder

        for model in (self.dit, self.dit_low):
            if model is not None:
                parallelize_dit(model, mesh, DiTParallelConfig(fsdp=dit_fsdp))
        if t5_fsdp:
            shard_text_encoder(self.text_encoder, mesh)
        if dim_size(mesh, "cfg") > 1:
            self.cfg_group = dim_group(mesh, "cfg")

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, dit_dir: str | Path | None = None,
                        **memory) -> WanPipeline:
        """Load a release folder (official or diffusers layout) — see :mod:`openwan.pipelines.components`;
        ``dit_dir``: a DiT folder that replaces the release's own DiT(s)."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        parts = load_components(path, dtype=dtype, device="cpu" if memory.get("offload_model") else device,
                                dit_dir=dit_dir)
        return cls(**parts, device=device, dtype=dtype, **memory)

    @property
    def has_image_input(self) -> bool:
        return self.dit.cfg.in_dim > self.dit.cfg.out_dim

    @property
    def vae_stride(self) -> tuple[int, int, int]:
        """Pixels per latent along (t, h, w): (4, 8, 8) with the Wan2.1 VAE, (4, 16, 16) with the Wan2.2 VAE."""
        cfg = self.vae.cfg
        return cfg.temporal_compression, cfg.spatial_compression, cfg.spatial_compression

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: one DiT patch of latents (16 with Wan2.1, 32 with TI2V-5B)."""
        _, sh, sw = self.vae_stride
        return math.lcm(sh * self.dit.cfg.patch_size[1], sw * self.dit.cfg.patch_size[2])

    # ------------------------------------------------------------------------------------ text
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] context: each prompt's umT5 output trimmed to its length, zero-padded."""
        text_len = self.dit.cfg.text_len
        with on_device(self.text_encoder, self.text_device, self.offload_model):
            outs = encode_prompts(self.text_encoder, self.tokenizer, prompts, text_len=text_len)
        return pad_context(outs, text_len).to(self.device, self.dtype)

    # ------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str | None = None, task: str = "t2v",
                 size: tuple[int, int] | None = None, frame_num: int | None = None, sample_steps: int | None = None,
                 sample_shift: float | None = None, guide_scale: float | tuple[float, float] | None = None,
                 solver: str = "unipc", seed: int = 0, latents: torch.Tensor | None = None,
                 image: torch.Tensor | None = None, last_image: torch.Tensor | None = None,
                 video: torch.Tensor | None = None, strength: float | None = None, cfg_batch: bool = True,
                 return_video: bool = True, progress: bool = True, cache=None, src_video: torch.Tensor | None = None,
                 src_mask: torch.Tensor | None = None, src_ref_images=None, vace_context_scale: float = 1.0,
                 decode_sigma: float | None = None) -> WanOutput:
        """Generate. Images/videos are [T, H, W, 3] in [0, 1] (an image may be [H, W, 3]).

        ``latents`` (when given) is the initial noise [C, F_lat, H/s, W/s] (s: the VAE's spatial compression), so
        runs can be compared step by step.
        ``cache`` (a preset name of openwan.runtime.cache.PRESETS, a Cache or one cache policy) reuses work
        between steps (docs/acceleration.md); None or "off" runs the plain loop.
        ``task="ti2v"`` (a Wan2.2 TI2V model): text-to-video without ``image``; with it, the image is the clean first
        frame and the video takes its aspect ratio at about the area of ``size``.
        ``decode_sigma`` (in (0, 1)): the sampler stops at the first level sigma_k <= it of the ordinary schedule
        and the latent at sigma_k is decoded, for a VAE decoder trained on noisy latents (train-vae --decode-noise);
        ``steps_run`` and ``latents_sigma`` of the output say where it stopped.
        """
        timings: dict[str, float] = {}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        size, frame_num = vace.defaults_from_video(task, size, frame_num, src_video)
        d = self.defaults.for_task(task)
        frame_num = d.frame_num if frame_num is None else frame_num
        width, height = size or d.size
        steps = d.sample_steps if sample_steps is None else sample_steps
        shift = d.sample_shift if sample_shift is None else sample_shift
        guide = d.guide_scale if guide_scale is None else guide_scale
        _check_sampling(steps, shift, guide, seed)
        check_decode_sigma(decode_sigma)
        vace.check_inputs(self.dit, task, frame_num, src_video, src_mask, src_ref_images, vace_context_scale,
                          self.vae_stride[0])
        self._check_inputs(task, frame_num, width, height, image, last_image, video, strength)
        if task == "extend":
            return self._extend(prompt, negative_prompt, video, frame_num, (width, height), steps, shift, guide,
                                solver, seed, cfg_batch, progress, timings, cache, decode_sigma)
        if task in ("i2v", "flf2v"):
            first = _as_frames(image)
            width, height = cond.size_for_image(first.shape[1:3], width * height, self.vae_stride[1],
                                                self.dit.cfg.patch_size[1])
        elif task == "ti2v" and image is not None:  # the image's aspect ratio at about the asked-for area
            h, w = _as_frames(image).shape[1:3]
            width, height = ti2v.best_output_size((w, h), width * height, (self.size_multiple,) * 2)
        sigmas = sampling_sigmas(steps, shift, kind=solver)
        if task == "v2v":  # enter the schedule at the first sigma <= strength
            sigmas = sigmas[min(int((sigmas[:-1] > strength).sum()), steps - 1):]
        stop = stop_step(sigmas, decode_sigma)  # steps that run: all of them without decode_sigma
        with naming_the_stop(decode_sigma, stop, len(sigmas) - 1):
            run = self._cache_run(cache, stop, _max_scale(guide) != 1.0)  # refuses before any compute
        if return_video and (warning := decoder_range_warning(self.vae.cfg.decode_noise, float(sigmas[stop]))):
            log.warning(warning)

        with _timer(timings, "text"):
            negative = d.negative_prompt if negative_prompt is None else negative_prompt
            guided = _max_scale(guide) != 1.0
            context = self.encode_text([prompt, negative] if guided else [prompt])
        with _timer(timings, "condition"):
            c = self._conditioning(task, frame_num, width, height, image, last_image, video, strength,
                                   (src_video, src_mask, src_ref_images, vace_context_scale))

        t_stride, h_stride, w_stride = self.vae_stride
        frames = c.prefix_frames + cond.latent_frames(frame_num, t_stride)  # vace: reference frames first
        shape = (self.dit.cfg.out_dim, frames, height // h_stride, width // w_stride)
        if latents is None:
            generator = torch.Generator(self.device).manual_seed(seed)
            noise = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} for this size and frame count; got "
                                 f"{tuple(latents.shape)}.")
            noise = latents.to(self.device, torch.float32)
        x = noise[None]
        if c.init_latents is not None:  # v2v: noise the input to the schedule's first sigma
            s = float(sigmas[0])
            x = (1 - s) * c.init_latents.float() + s * x
        with _timer(timings, "denoise"):
            x = self.denoise(x, context, c, sigmas, solver, guide, cfg_batch, progress, run, stop=stop)
        x = x[:, :, c.prefix_frames:]  # vace: the reference images' frames are not part of the video
        out = WanOutput(video=None, latents=x[0], timings=timings, cache=run.summary() if run else None,
                        steps_run=stop, latents_sigma=float(sigmas[stop]))
        if return_video:
            with _timer(timings, "decode"):
                out.video = self.decode(x)
        if torch.cuda.is_available():
            out.peak_memory_gb = torch.cuda.max_memory_allocated() / 1024**3
        return out

    def denoise(self, x: torch.Tensor, context: torch.Tensor, c: cond.Conditioning, sigmas: torch.Tensor,
                solver_name: str, guide, cfg_batch: bool, progress: bool = True, cache: CacheRun | None = None,
                stop: int | None = None) -> torch.Tensor:
        """The shared loop: one model evaluation (both CFG branches) and one solver step per sigma; with
        ``cache``, the cache is told each step and expert and decides what the evaluation recomputes. ``stop``:
        run only the first ``stop`` steps (the solver still gets the whole grid) and return x at sigmas[stop]."""
        solver = make_solver(solver_name, sigmas)
        timesteps = timesteps_from_sigmas(sigmas).to(self.device)  # integer sigma*1000, as the reference
        x = c.restore(x)  # latents given clean (ti2v's image) start clean
        with _attached(cache):
            for i in tqdm(range(len(sigmas) - 1 if stop is None else stop), desc="denoising", disable=not progress,
                          leave=False):
                t = timesteps[i]
                model, scale = self._expert(t, guide)
                if cache is not None:
                    cache.begin(i, model)
                with on_device(model, self.device, self.offload_model and self.dit_low is not None):
                    v = self._guided(model, x, t, context, c, scale, cfg_batch, cache)
                x = solver.step(v, x, i)
                x = c.restore(x)
        return x

    def _cache_run(self, cache, steps: int, guided: bool) -> CacheRun | None:
        """The run state of ``cache=`` for ``steps`` steps (None: no cache); refuses what does not apply."""
        policy = resolve(cache)
        if policy is None:
            return None
        return CacheRun(policy, steps, (self.dit, self.dit_low), guided=guided, cfg_parallel=self.cfg_group is not None)

    def _expert(self, t: torch.Tensor, guide):
        """Wan2.2 A14B: the high-noise expert while t >= boundary·1000, each with its own guide scale."""
        if self.dit_low is None or self.boundary is None:
            return self.dit, (guide[1] if isinstance(guide, tuple) else guide)
        low, high = guide if isinstance(guide, tuple) else (guide, guide)
        return (self.dit, high) if float(t) >= self.boundary * 1000 else (self.dit_low, low)

    def _guided(self, model, x, t, context, c: cond.Conditioning, scale: float, cfg_batch: bool,
                cache: CacheRun | None = None) -> torch.Tensor:
        dtype = self.dtype
        kwargs = {}
        if c.y is not None:
            kwargs["y"] = c.y.to(dtype)
        if c.clip_fea is not None:
            kwargs["clip_fea"] = c.clip_fea.to(dtype)
        if c.vace_context is not None:  # tensors, so that the CFG batch concatenates them like the others
            kwargs["vace_context"] = c.vace_context.to(dtype)
            kwargs["vace_context_scale"] = torch.full((1,), c.vace_scale, device=self.device)
        tt = c.timesteps(t, model.cfg.patch_size)  # [1], or per token [1, L] where latents are held clean
        if context.shape[0] == 1:  # no guidance
            _branches(cache, "cond")
            return model(x.to(dtype), tt, context, **kwargs).float()
        if cache is not None and cache.reuse_uncond():  # CFG cache: the conditional branch alone
            _branches(cache, "cond")
            v_cond = model(x.to(dtype), tt, context[:1], **kwargs).float()
            v_uncond = cache.uncond(v_cond)
            return v_uncond + scale * (v_cond - v_uncond)
        if self.cfg_group is not None:  # one branch per rank of the cfg group
            import torch.distributed as dist

            from openwan.parallel import cfg_parallel_forward

            _branches(cache, BRANCHES[dist.get_rank(self.cfg_group)])
            v_cond, v_uncond = cfg_parallel_forward(model, self.cfg_group, x.to(dtype), tt, context, **kwargs)
            v_cond, v_uncond = v_cond.float(), v_uncond.float()
        elif cfg_batch:  # both branches in one batch of 2
            _branches(cache, *BRANCHES)
            batched = {k: torch.cat([v, v]) for k, v in kwargs.items()}
            v = model(torch.cat([x, x]).to(dtype), tt.expand(2, *tt.shape[1:]), context, **batched).float()
            v_cond, v_uncond = v.chunk(2)
        else:
            _branches(cache, "cond")
            v_cond = model(x.to(dtype), tt, context[:1], **kwargs).float()
            _branches(cache, "uncond")
            v_uncond = model(x.to(dtype), tt, context[1:], **kwargs).float()
        if cache is not None:
            cache.store_guidance(v_cond, v_uncond)
        return v_uncond + scale * (v_cond - v_uncond)

    # ------------------------------------------------------------------------------------ conditioning
    def _check_inputs(self, task, frame_num, width, height, image, last_image, video, strength) -> None:
        if task not in cond.TASKS:
            raise ValueError(f"unknown task {task!r}; use one of: {', '.join(cond.TASKS)}.")
        cond.check_frame_num(frame_num, self.vae_stride[0])
        cond.check_size(width, height, self.size_multiple)
        if task == "t2i" and frame_num != 1:
            raise ValueError("t2i makes one image; set frame_num to 1 (or use task t2v).")
        ti2v_model = self.dit.cfg.model_type == "ti2v"
        if task == "ti2v" and not ti2v_model:
            raise ValueError("task ti2v needs a Wan2.2 TI2V model (48 latent channels, the Wan2.2 VAE); load a "
                             "TI2V-5B release, or use task t2v / i2v with this one.")
        if task in ("i2v", "flf2v", "extend") and ti2v_model:
            raise ValueError(f"this checkpoint is Wan2.2 TI2V, which takes its image in task ti2v; use task ti2v "
                             f"with image= (CLI: --task ti2v-5B --image) instead of {task}.")
        if task in ("i2v", "flf2v", "extend"):
            if not self.has_image_input:
                raise ValueError(f"task {task} needs an image-to-video model (in_dim 36); this checkpoint is "
                                 f"text-to-video — load an i2v/flf2v release.")
            if task != "extend" and image is None:
                raise ValueError(f"task {task} needs an image: pass image= (CLI: --image or --first-frame).")
        if task == "flf2v" and last_image is None:
            raise ValueError("task flf2v needs a last frame: pass last_image= (CLI: --last-frame).")
        if task in ("t2v", "t2i", "v2v") and self.has_image_input:
            raise ValueError(f"this checkpoint is image-to-video; task {task} needs a text-to-video model.")
        if task == "v2v":
            if video is None:
                raise ValueError("task v2v needs an input video: pass video= (CLI: --video).")
            if strength is None or not 0.0 < strength <= 1.0:
                raise ValueError("task v2v needs strength in (0, 1] (how much of the input to re-noise).")

    def _conditioning(self, task, frame_num, width, height, image, last_image, video, strength,
                      vace_inputs=(None, None, None, 1.0)) -> cond.Conditioning:
        """The task's conditioning; ``vace_inputs``: (src_video, src_mask, src_ref_images, vace_context_scale)."""
        if task in ("t2v", "t2i") or (task == "ti2v" and image is None):
            return cond.Conditioning()
        if task == "vace":
            with on_device(self.vae, self.device, self.offload_model):
                return vace.conditioning(self.vae, self.vae_stride, frame_num, width, height, *vace_inputs,
                                         self.device)
        if task == "ti2v":
            with on_device(self.vae, self.device, self.offload_model):
                return ti2v.first_frame_conditioning(self.vae, _as_frames(image), width, height, frame_num,
                                                     self.device)
        if task == "v2v":
            frames = _as_frames(video)
            if frames.shape[0] < frame_num:
                raise ValueError(f"the input video has {frames.shape[0]} frames; v2v needs at least frame_num = "
                                 f"{frame_num} (or lower --frame-num).")
            clip = cond.to_model_range(resize_crop(frames[:frame_num], (width, height)))
            with on_device(self.vae, self.device, self.offload_model):
                z = self.vae.encode(clip.to(self.device, _dtype_of(self.vae)))
            return cond.Conditioning(init_latents=z.float(), strength=strength)
        # i2v / flf2v: the reference resizes (no crop) to the chosen size, encodes, and runs CLIP on the frames.
        frames = [_as_frames(image)] + ([_as_frames(last_image)] if task == "flf2v" else [])
        pixels = [cond.resize_frame(cond.to_model_range(f[:1])[:, :, 0], width, height) for f in frames]
        positions = [0] + ([frame_num - 1] if task == "flf2v" else [])
        with on_device(self.vae, self.device, self.offload_model):
            y = cond.image_conditioning(self.vae, [p.to(self.device) for p in pixels], positions, frame_num,
                                        width, height)
        clip_fea = None
        if self.dit.cfg.image_tokens:
            with on_device(self.image_encoder, self.device, self.offload_model):
                enc_dtype = _dtype_of(self.image_encoder)
                feats = [encode_images(self.image_encoder, cond.to_model_range(f[:1])[:, :, 0].to(self.device,
                                                                                                  enc_dtype))
                         for f in frames]
            clip_fea = torch.cat(feats, dim=1)  # flf2v: first frame's 257 tokens, then the last frame's
        return cond.Conditioning(y=y, clip_fea=clip_fea)

    def _extend(self, prompt, negative_prompt, video, frame_num, size, steps, shift, guide, solver, seed,
                cfg_batch, progress, timings, cache=None, decode_sigma=None) -> WanOutput:
        """Continue ``video`` from its last frame through i2v, ``frame_num`` frames per segment (``decode_sigma``:
        the new segment is decoded from its latent at that level; the input frames are kept as they are)."""
        if video is None:
            raise ValueError("task extend needs an input video: pass video= (CLI: --video).")
        frames = _as_frames(video)
        out = self(prompt, negative_prompt, task="i2v", size=size, frame_num=frame_num, sample_steps=steps,
                   sample_shift=shift, guide_scale=guide, solver=solver, seed=seed, image=frames[-1],
                   cfg_batch=cfg_batch, progress=progress, cache=cache, decode_sigma=decode_sigma)
        height, width = out.video.shape[1:3]
        head = resize_crop(frames, (width, height))
        # The new segment's first frame re-creates the conditioning frame: keep the original one.
        video_out = torch.cat([head, out.video[1:]])
        return WanOutput(video=video_out, latents=out.latents, timings={**timings, **out.timings},
                         peak_memory_gb=out.peak_memory_gb, cache=out.cache, steps_run=out.steps_run,
                         latents_sigma=out.latents_sigma)

    # ------------------------------------------------------------------------------------ decoding
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, C, F, h, w] latents -> [T, H, W, 3] in [0, 1]."""
        return torch.cat(list(self.decode_frames(latents)))

    def decode_frames(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Frames chunk by chunk ([t, H, W, 3] in [0, 1]) in constant memory, for streaming to a file."""
        if latents.ndim == 4:
            latents = latents[None]
        with on_device(self.vae, self.device, self.offload_model):
            z = latents.to(self.device, _dtype_of(self.vae))
            for chunk in self.vae.decode_stream(z):
                yield chunk[0].float().add(1).div(2).clamp(0, 1).permute(1, 2, 3, 0).cpu()


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images and videos must be [T, H, W, 3] (or [H, W, 3]) in [0, 1]; got {tuple(x.shape)}.")
    return x.float()


def _check_sampling(steps: int, shift: float, guide, seed: int) -> None:
    """Numbers that would otherwise run to a black or garbage video (NaN guidance) or fail deep in torch."""
    if steps < 1 or int(steps) != steps:
        raise ValueError(f"sample_steps must be a positive integer; got {steps!r}.")
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"sample_shift must be a finite number above 0 (e.g. 5.0); got {shift!r}.")
    scales = tuple(guide) if isinstance(guide, (tuple, list)) else (guide,)
    if len(scales) not in (1, 2) or not all(math.isfinite(g) and g >= 0 for g in scales):
        raise ValueError(f"guide_scale must be one finite number >= 0, or a (low, high) pair of them; got {guide!r}.")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must be an integer from -2**63 to 2**64-1 (what torch.Generator takes); got {seed}.")


def _branches(cache: CacheRun | None, *names: str) -> None:
    """Tell the cache which CFG branches (one per batch row) the next forward carries."""
    if cache is not None:
        cache.branches = names


@contextlib.contextmanager
def _attached(cache: CacheRun | None):
    """The cache's hooks on the DiTs for the loop, taken off after (also on an error)."""
    if cache is None:
        yield
        return
    cache.attach()
    try:
        yield
    finally:
        cache.detach()


def _dtype_of(module) -> torch.dtype:
    return next(module.parameters()).dtype


def _max_scale(guide) -> float:
    return max(guide) if isinstance(guide, tuple) else float(guide)


@contextlib.contextmanager
def _timer(timings: dict, name: str):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


ProgressFn = Callable[[int, int], None]
