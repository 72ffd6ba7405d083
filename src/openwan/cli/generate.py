"""``openwan generate``: flags mirror the official generate.py, in dash-case."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file as save_tensors

from openwan.checkpoints import finite_check
from openwan.cli.common import check_device, check_number, device_memory_bytes, parse_dtype, parse_size
from openwan.data.video import (
    IMAGE_SUFFIXES,
    VIDEO_WRITE_SUFFIXES,
    VideoWriter,
    check_output,
    frames_at_fps,
    read_header,
    read_image,
    read_video,
    save_image,
)
from openwan.diffusion.schedule import SAMPLING_KINDS
from openwan.eval.prompts import write_strip
from openwan.fileio import Terminated, atomic_write, terminate_cleanly
from openwan.models.layers import ATTENTION_BACKENDS
from openwan.pipelines import WanPipeline, vace
from openwan.pipelines import conditioning as cond
from openwan.pipelines.components import BUNDLED, BUNDLED_NOTE, holds_dit
from openwan.pipelines.decode_sigma import check_decode_sigma, naming_the_stop, steps_to_run
from openwan.pipelines.defaults import SamplingDefaults, defaults_for
from openwan.pipelines.prompt_extend import extend_prompt
from openwan.runtime.accel import apply_accelerations, check_request, describe
from openwan.runtime.cache import PRESETS, resolve
from openwan.runtime.lora import fuse_lora, load_lora, parse_lora_spec
from openwan.runtime.quantize import QUANT_MODES

HELP = "make a video (or image) from a prompt, an image, two frames or a video"
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_FRAME_NUM = 1001  # one pass; the released models are trained on 81 frames
# The official generate.py's --task names that name a model rather than a task: the pipeline task each runs.
TASK_NAMES = {"ti2v-5B": "ti2v", **vace.CLI_TASKS}


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help=HELP, description=HELP + ".")
    p.add_argument("--task", default="t2v", choices=["t2v", "t2i", "i2v", "flf2v", "v2v", "extend", "ti2v-5B", "ti2v",
                                                     "vace-1.3B", "vace-14B", "vace"],
                   help="ti2v-5B (or ti2v): Wan2.2 TI2V-5B, text-to-video, or image-to-video with --image; vace-1.3B / "
                        "vace-14B (or vace): Wan2.1-VACE with --src-video / --src-mask / --src-ref-images")
    p.add_argument("--size", type=str, default=None, help="WIDTH*HEIGHT, e.g. 832*480 (default: the model's)")
    p.add_argument("--frame-num", type=int, default=None,
                   help="frames, 4n+1 up to 1001 (default: the model's, 81 for a Wan release, 17 for the bundled "
                        "model; t2i: 1)")
    p.add_argument("--ckpt-dir", default=None, help="a Wan release folder (official or diffusers layout)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None, help="default: the reference's negative prompt")
    p.add_argument("--image", default=None,
                   help="i2v: the first frame; ti2v-5B: optional first frame (the video takes its aspect ratio at "
                        "about --size's area)")
    p.add_argument("--first-frame", default=None, help="flf2v: the first frame")
    p.add_argument("--last-frame", default=None, help="flf2v: the last frame")
    p.add_argument("--video", default=None,
                   help="v2v / extend: the input video (frames up to 4096*2304 pixels; v2v reads --frame-num of them)")
    p.add_argument("--strength", type=float, default=None, help="v2v: how much to re-noise the input, in (0, 1]")
    p.add_argument("--src-video", default=None,
                   help="vace: the source video, a control signal (depth, pose, flow, grey, scribbles) or the video to "
                        "edit; the output takes its --frame-num frames at --size")
    p.add_argument("--src-mask", default=None,
                   help="vace: a mask video of --src-video's size, white where to generate, black where to keep")
    p.add_argument("--src-ref-images", default=None, help="vace: reference images, comma-separated")
    p.add_argument("--vace-context-scale", type=float, default=1.0,
                   help="vace: how strongly the VACE context steers the video (1: as trained, 0: ignored)")
    p.add_argument("--sample-solver", default="unipc", choices=SAMPLING_KINDS)
    p.add_argument("--sample-steps", type=int, default=None, help="denoising steps, 1 to 1000")
    p.add_argument("--sample-shift", type=float, default=None, help="sigma schedule shift, in (0, 100]")
    p.add_argument("--sample-guide-scale", type=float, nargs="+", default=None,
                   help="guidance scale in [0, 100] (two values low high for Wan2.2 A14B)")
    p.add_argument("--base-seed", type=int, default=0, help="noise seed, -2**63 to 2**64-1")
    p.add_argument("--decode-sigma", type=float, default=None, metavar="S",
                   help="stop the sampler at the first noise level <= S, in (0, 1), of the ordinary schedule and let "
                        "the VAE decoder finish the denoising: for a decoder trained with openwan train-vae "
                        "--decode-noise (docs/vae_compression.md); default: denoise to the end")
    p.add_argument("--offload-model", action="store_true", help="move each model to the CPU when its stage ends")
    p.add_argument("--t5-cpu", action="store_true", help="keep the text encoder on the CPU")
    p.add_argument("--convert-model-dtype", action="store_true",
                   help="as in the official generate.py; openwan always holds the DiT in --dtype")
    p.add_argument("--no-weight-check", action="store_true",
                   help="skip the scan that refuses weights holding NaN or Inf (saves a pass over the weights)")
    p.add_argument("--stream-blocks", action="store_true", help="stream DiT blocks to the GPU one at a time")
    p.add_argument("--no-cfg-batch", action="store_true", help="run the two guidance branches one after another")
    p.add_argument("--cache", default=None, choices=list(PRESETS),
                   help="reuse work between denoising steps (docs/acceleration.md): off, safe (the smallest change "
                        "to the video), fast, fastest (the fewest DiT evaluations); default off")
    p.add_argument("--quantize", default=None, choices=list(QUANT_MODES),
                   help="weight-only 8-bit linears in the DiT and umT5 through torchao (pip install openwan[accel]); "
                        "changes the numbers slightly (docs/acceleration.md)")
    p.add_argument("--attention", default=None, choices=list(ATTENTION_BACKENDS),
                   help="the attention kernel: sdpa (default), math (the float32 reference), flash (flash-attn) or "
                        "sage (SageAttention, 8-bit) — the last two bf16/fp16 on CUDA when installed")
    p.add_argument("--compile", action="store_true",
                   help="compile each DiT block with torch.compile (the first step pays the build)")
    p.add_argument("--prompt-extend", default=None, metavar="MODEL_DIR_OR_URL",
                   help="rewrite the prompt with a local causal LM folder or an OpenAI-compatible endpoint")
    p.add_argument("--prompt-extend-model", default="default", help="model name sent to the endpoint")
    p.add_argument("--save-file", default=None,
                   help=f"output {', '.join(VIDEO_WRITE_SUFFIXES)} (one frame, as t2i makes: also "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the file, 1 to 240 (default 16)")
    p.add_argument("--strip", default=None, help="also write a PNG strip of evenly spaced frames here (a .png)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA (ours, diffusers, ComfyUI/official or musubi format); repeat for several")
    p.add_argument("--fuse-lora", action="store_true", help="merge the LoRAs into the weights (faster sampling)")
    p.add_argument("--save-latents", default=None, help="also write the final latents as a .safetensors file")
    p.add_argument("--ulysses-size", type=int, default=1, help="Ulysses context parallel degree (under torchrun)")
    p.add_argument("--ring-size", type=int, default=1, help="Ring attention context parallel degree (under torchrun)")
    p.add_argument("--cfg-parallel", action="store_true", help="conditional and unconditional branch on two ranks")
    p.add_argument("--dit-fsdp", action="store_true", help="shard the DiT weights with FSDP2 (under torchrun)")
    p.add_argument("--t5-fsdp", action="store_true", help="shard the text encoder with FSDP2 (under torchrun)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on GPU, fp32 on CPU)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # openwan.parallel imports torch.distributed's FSDP and DTensor, slow to import: loaded here, when a command
    # runs, not when the CLI starts.
    from openwan.parallel.mesh import close_distributed

    try:
        with terminate_cleanly():  # SIGTERM unwinds like Ctrl-C: the writers remove their temporary files
            return _run(args)
    except Terminated:
        print("openwan generate: terminated; nothing was left half-written", file=sys.stderr)
        return 143
    finally:
        close_distributed()  # under torchrun: every rank waits for rank 0's files, then leaves


@dataclass
class Plan:
    """What :func:`check_args` settled before any model is loaded."""

    size: tuple[int, int] | None
    dtype: torch.dtype | None
    device: torch.device | None
    save_file: str
    guide: float | tuple[float, float] | None
    image: torch.Tensor | None = None
    last: torch.Tensor | None = None
    video: torch.Tensor | None = None
    vace: dict | None = None  # task vace: src_video, src_mask, src_ref_images as the pipeline takes them


def check_args(args: argparse.Namespace) -> Plan:
    """Every check that needs no model: numbers, device, output paths, inputs (video headers first), and the
    release's config for what it decides (one or two experts, default size and frames, working memory)."""
    args.task = TASK_NAMES.get(args.task, args.task)
    _check_numbers(args)
    cache = resolve(args.cache)
    if cache is not None and cache.cfg is not None and args.cfg_parallel:
        raise ValueError(f"--cache {args.cache} skips the unconditional branch, which --cfg-parallel computes on its "
                         "own rank: drop --cfg-parallel, or use --cache safe (no CFG part).")
    size = parse_size(args.size) if args.size else None
    if size:
        cond.check_size(*size)
    _check_accelerations(args)
    if args.frame_num is not None:
        cond.check_frame_num(args.frame_num)
        if args.task == "t2i" and args.frame_num != 1:
            raise ValueError("--task t2i makes one image; leave --frame-num out (or set it to 1), or use --task t2v.")
    dtype = parse_dtype(args.dtype) if args.dtype else None
    device = check_device(args.device) if args.device else None
    save_file = _check_outputs(args)
    _check_tasks(args)
    vace.check_flags(args.task, args.src_video, args.src_mask, args.src_ref_images, args.vace_context_scale)
    root = Path(args.ckpt_dir) if args.ckpt_dir else (BUNDLED if holds_dit(BUNDLED) else None)
    facts = _release_facts(root) if root is not None else None
    if facts is not None:
        _check_task_fits(args.task, facts, root)
        vace.check_release(args.task, root, "the bundled demo model" if root == BUNDLED else str(root))
        if size:
            cond.check_size(*size, facts.size_multiple)
    defaults = facts.defaults.for_task(args.task) if facts else None
    guide = _guide(args.sample_guide_scale, facts)
    steps = args.sample_steps or (defaults.sample_steps if defaults else None)
    if cache is not None and steps is not None and args.task != "v2v":  # v2v's steps depend on --strength
        cache.check(steps)
        if args.decode_sigma is not None and defaults is not None:  # the cache is sized by the steps that run
            shift = defaults.sample_shift if args.sample_shift is None else args.sample_shift
            run = steps_to_run(steps, shift, args.sample_solver, args.decode_sigma)
            with naming_the_stop(args.decode_sigma, run, steps, "--decode-sigma"):
                cache.check(run)
    frame_num = args.frame_num or (defaults.frame_num if defaults else None)
    width_height = size or (defaults.size if defaults else None)
    if facts and frame_num and width_height:
        _check_memory(args, facts, defaults, width_height, frame_num, dtype, device, guide)
    plan = Plan(size=size, dtype=dtype, device=device, save_file=save_file, guide=guide)
    _read_inputs(args, plan, frame_num, width_height)
    if args.task == "vace":
        plan.vace = vace.read_sources(args.src_video, args.src_mask, args.src_ref_images, fps=args.fps or 16,
                                      size=width_height, frame_num=frame_num)
    return plan


def _check_numbers(args: argparse.Namespace) -> None:
    check_number("--sample-steps", args.sample_steps, 1, 1000, example="50")
    check_number("--sample-shift", args.sample_shift, 0, 100, low_open=True, example="5")
    for value in args.sample_guide_scale or ():
        check_number("--sample-guide-scale", value, 0, 100, example="5")
    check_number("--strength", args.strength, 0, 1, low_open=True, example="0.7")
    check_decode_sigma(args.decode_sigma, "--decode-sigma")
    check_number("--fps", args.fps, 1, 240, example="16")
    check_number("--ulysses-size", args.ulysses_size, 1, 1024, example="2")
    check_number("--ring-size", args.ring_size, 1, 1024, example="2")
    if args.frame_num is not None and not 1 <= args.frame_num <= MAX_FRAME_NUM:
        raise ValueError(f"--frame-num {args.frame_num} is out of range; give 4n+1 frames from 1 to {MAX_FRAME_NUM} "
                         "(longer videos: --task extend continues a video segment by segment).")
    low, high = SEED_RANGE
    if not low <= args.base_seed <= high:
        raise ValueError(f"--base-seed {args.base_seed} is out of range; give an integer from {low} to {high}.")
    if args.sample_guide_scale is not None and len(args.sample_guide_scale) > 2:
        raise ValueError(f"--sample-guide-scale takes one value (or two, low high, for a two-expert Wan2.2 A14B "
                         f"model); got {len(args.sample_guide_scale)}.")


def _check_outputs(args: argparse.Namespace) -> str:
    """The output paths: a format openwan writes, in a writable place. Returns the video/image file name."""
    task = args.task
    save_file = args.save_file or f"{task}_{time.strftime('%Y%m%d_%H%M%S')}" + (".png" if task == "t2i" else ".mp4")
    makes_image = task == "t2i" or args.frame_num == 1
    check_output(save_file, (IMAGE_SUFFIXES if makes_image else ()) + VIDEO_WRITE_SUFFIXES, "--save-file")
    if args.save_latents:
        check_output(args.save_latents, (".safetensors",), "--save-latents")
    if args.strip:
        check_output(args.strip, (".png",), "--strip")
    return save_file


def _check_tasks(args: argparse.Namespace) -> None:
    task = args.task
    if task == "i2v" and not args.image:
        raise ValueError("task i2v needs --image (the first frame).")
    if task == "flf2v" and not ((args.first_frame or args.image) and args.last_frame):
        raise ValueError("task flf2v needs --first-frame and --last-frame.")
    if task in ("v2v", "extend") and not args.video:
        raise ValueError(f"task {task} needs --video.")
    if task == "v2v" and args.strength is None:
        raise ValueError("task v2v needs --strength in (0, 1]: how much of the input to re-noise (e.g. 0.7).")


@dataclass
class ReleaseFacts:
    """What a release's DiT config says, read as JSON before anything is loaded."""

    two_experts: bool
    image_to_video: bool  # the DiT takes a conditioning image's latents beside the noise (i2v, flf2v)
    dim: int
    ffn_dim: int
    patch: tuple[int, int, int]
    defaults: SamplingDefaults
    model_type: str = "t2v"
    vae_stride: int = 8  # pixels per latent in height and width: 16 for TI2V-5B (the Wan2.2 VAE)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: one DiT patch of latents."""
        return self.vae_stride * max(self.patch[1:])


def _release_facts(root: Path) -> ReleaseFacts | None:
    """The DiT config of an official or diffusers release; None where it cannot be read (the loader then says
    what is wrong, naming the file)."""
    official = [root / "config.json", root / "high_noise_model" / "config.json"]
    diffusers = root / "transformer" / "config.json"
    try:
        path = next((p for p in official if p.is_file()), None)
        if path is not None:
            raw = json.loads(path.read_text())
            dim, ffn, in_dim, out_dim = (int(raw[k]) for k in ("dim", "ffn_dim", "in_dim", "out_dim"))
            patch, model_type = tuple(int(v) for v in raw.get("patch_size", (1, 2, 2))), raw.get("model_type", "t2v")
            two = (root / "low_noise_model").is_dir()
        elif diffusers.is_file():
            raw = json.loads(diffusers.read_text())
            dim = int(raw["num_attention_heads"]) * int(raw["attention_head_dim"])
            ffn, in_dim, out_dim = (int(raw[k]) for k in ("ffn_dim", "in_channels", "out_channels"))
            patch = tuple(int(v) for v in raw.get("patch_size", (1, 2, 2)))
            model_type = "flf2v" if raw.get("pos_embed_seq_len") else ("i2v" if in_dim > out_dim else "t2v")
            model_type = "ti2v" if in_dim == out_dim == 48 else model_type
            two = (root / "transformer_2").is_dir()
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if dim <= 0 or ffn <= 0 or len(patch) != 3 or min(patch) <= 0:
        return None
    shape = SimpleNamespace(dim=dim, in_dim=in_dim, out_dim=out_dim, model_type=model_type)
    return ReleaseFacts(two_experts=two, image_to_video=in_dim > out_dim, dim=dim, ffn_dim=ffn, patch=patch,
                        defaults=defaults_for(shape, two), model_type=model_type,
                        vae_stride=16 if model_type == "ti2v" else 8)


def _check_task_fits(task: str, facts: ReleaseFacts, root: Path) -> None:
    """A task the release's DiT cannot do is refused before anything is loaded."""
    which = "the bundled demo model" if root == BUNDLED else str(root)
    if task == "ti2v" and facts.model_type != "ti2v":
        raise ValueError(f"--task ti2v-5B needs a Wan2.2 TI2V-5B release; {which} is not one: pass --ckpt-dir with "
                         "a TI2V-5B release, or use --task t2v / i2v.")
    if task in ("i2v", "flf2v", "extend") and facts.model_type == "ti2v":
        raise ValueError(f"{which} is Wan2.2 TI2V-5B, which takes its first frame in --task ti2v-5B --image; use "
                         f"that instead of --task {task}.")
    if task in ("i2v", "flf2v", "extend") and not facts.image_to_video:
        raise ValueError(f"--task {task} needs an image-to-video release (Wan2.1 I2V/FLF2V or Wan2.2 I2V); {which} "
                         "is text-to-video (t2v, t2i, v2v): pass --ckpt-dir with an image-to-video release.")
    if task in ("t2v", "t2i", "v2v") and facts.image_to_video:
        raise ValueError(f"--task {task} needs a text-to-video release; {which} is image-to-video: use --task i2v, "
                         "flf2v or extend, or pass --ckpt-dir with a text-to-video release.")


def _guide(values: list[float] | None, facts: ReleaseFacts | None) -> float | tuple[float, float] | None:
    if values is None:
        return None
    if len(values) == 2:
        if facts is not None and not facts.two_experts:
            raise ValueError("--sample-guide-scale takes two values (low high) only for a two-expert Wan2.2 A14B "
                             "model; this release has one DiT, so give one value.")
        return tuple(values)
    return float(values[0])


def _check_memory(args, facts: ReleaseFacts, defaults: SamplingDefaults, size: tuple[int, int], frame_num: int,
                  dtype, device, guide) -> None:
    """Refuse a size and frame count whose working memory is beyond what the device holds in all."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elem = (dtype.itemsize if dtype is not None else (2 if device.type == "cuda" else 4))
    scale = defaults.guide_scale if guide is None else guide
    batch = 2 if max(scale if isinstance(scale, tuple) else (scale,)) != 1.0 and not args.no_cfg_batch else 1
    need = cond.activation_bytes(*size, frame_num, dim=facts.dim, ffn_dim=facts.ffn_dim, patch=facts.patch,
                                 elem_bytes=elem, batch=batch, stride=facts.vae_stride)
    have = device_memory_bytes(device)
    if need > have:
        where = "of RAM" if device.type == "cpu" else f"that {device} holds"
        raise ValueError(f"--size {size[0]}*{size[1]} with --frame-num {frame_num} needs about {need / 2**30:,.0f} GiB "
                         f"of working memory, more than the {have / 2**30:,.0f} GiB {where}; use a smaller --size or "
                         "fewer frames.")


def _read_inputs(args: argparse.Namespace, plan: Plan, frame_num: int | None, size: tuple[int, int] | None) -> None:
    """Images whole; a video's header first (folder, size, too short), then only the frames the task needs."""
    if args.image or args.first_frame:
        plan.image = read_image(args.first_frame or args.image)
    if args.last_frame:
        plan.last = read_image(args.last_frame)
    if not args.video:
        return
    fps = args.fps or 16
    header = read_header(args.video)
    if args.task == "v2v" and frame_num:
        available = frames_at_fps(header, fps)
        if available and available < frame_num:
            raise _too_short(args.video, available, fps, frame_num)
        plan.video = read_video(args.video, fps=fps, size=size, max_frames=frame_num)
        if len(plan.video) < frame_num:
            raise _too_short(args.video, len(plan.video), fps, frame_num)
    else:  # extend keeps every input frame (at the source size: the conditioning frame is resized by the pipeline)
        plan.video = read_video(args.video, fps=fps)


def _check_accelerations(args: argparse.Namespace) -> None:
    """--quantize, --attention and --compile checked before any model loads, on the device and dtype the pipeline
    will take (the defaults: cuda and bfloat16 when CUDA is here, else cpu and float32)."""
    if not (args.quantize or args.attention or args.compile):
        return
    device = torch.device(check_device(args.device) if args.device else ("cuda" if torch.cuda.is_available()
                                                                          else "cpu"))
    dtype = parse_dtype(args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    check_request(quantize=args.quantize, attention=args.attention, compile=args.compile, device=device, dtype=dtype,
                  stream_blocks=args.stream_blocks)


def _too_short(path: str, frames: int, fps: float, frame_num: int) -> ValueError:
    return ValueError(f"--video {path} has {frames} frames at {fps:g} fps; v2v needs at least --frame-num "
                      f"{frame_num}: give a longer video or a lower --frame-num (4n+1).")


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    plan = check_args(args)  # before the mesh and any model: bad input costs nothing
    mesh, rank = _mesh(args)
    main_rank = rank == 0
    task = args.task
    save_file = plan.save_file
    if args.ckpt_dir is None:
        if not holds_dit(BUNDLED):
            raise ValueError(f"no --ckpt-dir given and no bundled model at {BUNDLED}; give --ckpt-dir, a Wan release "
                             "folder (e.g. Wan2.1-T2V-1.3B).")
        args.ckpt_dir = str(BUNDLED)
        if main_rank:
            print(BUNDLED_NOTE)

    t0 = time.perf_counter()
    device = plan.device
    if device is None and mesh is not None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    with finite_check(not args.no_weight_check):
        pipe = WanPipeline.from_pretrained(args.ckpt_dir, device=device, dtype=plan.dtype, t5_cpu=args.t5_cpu,
                                           offload_model=args.offload_model, stream_blocks=args.stream_blocks,
                                           mesh=mesh, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp)
    if args.lora:
        for model in (pipe.dit, pipe.dit_low):
            if model is not None:
                load_lora(model, [parse_lora_spec(spec) for spec in args.lora])
                if args.fuse_lora:
                    fuse_lora(model)
    if args.quantize or args.attention or args.compile:
        report = apply_accelerations(pipe, quantize=args.quantize, attention=args.attention, compile=args.compile)
        if main_rank:
            print(describe(report))
    load_s = time.perf_counter() - t0
    prompt = args.prompt
    if args.prompt_extend:
        prompt = extend_prompt(prompt, args.prompt_extend, model=args.prompt_extend_model)
        print(f"extended prompt: {prompt}")
    out = pipe(prompt, args.negative_prompt, task=task, size=plan.size, frame_num=args.frame_num,
               sample_steps=args.sample_steps, sample_shift=args.sample_shift, guide_scale=plan.guide,
               solver=args.sample_solver, seed=args.base_seed, image=plan.image, last_image=plan.last,
               video=plan.video, strength=args.strength, cfg_batch=not args.no_cfg_batch,
               return_video=task in ("extend",), progress=main_rank, cache=args.cache,
               vace_context_scale=args.vace_context_scale, decode_sigma=args.decode_sigma, **(plan.vace or {}))
    if not main_rank:  # every rank computed the same latents; rank 0 decodes and writes
        return 0
    if args.save_latents:
        atomic_write(args.save_latents, lambda tmp: save_tensors({"latents": out.latents.contiguous()}, tmp))
    fps = args.fps or pipe.defaults.fps
    t1 = time.perf_counter()
    if out.video is not None:  # extend: the joined video is already decoded
        with VideoWriter(save_file, fps=fps) as writer:
            writer.write(out.video)
    elif save_file.lower().endswith(IMAGE_SUFFIXES):
        save_image(pipe.decode(out.latents[None])[0], save_file)
    else:
        with VideoWriter(save_file, fps=fps) as writer:  # frames go to the file as they are decoded
            for chunk in pipe.decode_frames(out.latents[None]):
                writer.write(chunk)
    out.timings["decode+write"] = time.perf_counter() - t1
    if args.strip:
        video = out.video if out.video is not None else pipe.decode(out.latents[None])
        print(f"saved {write_strip(video, args.strip)}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in {"load": load_s, **out.timings}.items())
    print(f"saved {save_file}")
    print(f"time: {stages}; total {time.perf_counter() - t0:.1f}s")
    if out.cache is not None:
        print(f"cache {args.cache}: {out.cache['dit_evaluations']} of {out.cache['uncached_dit_evaluations']} DiT "
              "evaluations run")
    if args.decode_sigma is not None:
        print(f"decode sigma {args.decode_sigma:g}: the sampler ran {out.steps_run} steps and stopped at sigma "
              f"{out.latents_sigma:.4g}; the VAE decoder took the latent there")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB")
    return 0


def _mesh(args: argparse.Namespace):
    """A device mesh when context / CFG parallelism is asked for (run under torchrun), else None."""
    cfg = 2 if args.cfg_parallel else 1
    if args.ulysses_size * args.ring_size * cfg == 1 and not (args.dit_fsdp or args.t5_fsdp):
        return None, 0
    from openwan.parallel import build_mesh, init_distributed  # see run()

    rank, world = init_distributed()
    if world == 1:
        raise ValueError("--ulysses-size, --ring-size, --cfg-parallel and --*-fsdp need several processes: launch "
                         "with torchrun --nproc-per-node N -m openwan generate ...")
    # As in the reference CLI, the parallel sizes must use every process (build_mesh says so otherwise).
    return build_mesh(cfg=cfg, ring=args.ring_size, ulysses=args.ulysses_size), rank
