"""``openwan generate``: flags mirror the official generate.py, in dash-case."""

from __future__ import annotations

import argparse
import logging
import time

import torch
from safetensors.torch import save_file as save_tensors

from openwan.cli.common import parse_dtype, parse_size
from openwan.data.video import VideoWriter, check_writable, read_image, read_video, save_image
from openwan.eval.prompts import write_strip
from openwan.fileio import atomic_write
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED, BUNDLED_NOTE, holds_dit
from openwan.pipelines.conditioning import check_frame_num
from openwan.pipelines.prompt_extend import extend_prompt
from openwan.runtime.lora import fuse_lora, load_lora, parse_lora_spec

HELP = "make a video (or image) from a prompt, an image, two frames or a video"




def add_parser(sub) -> None:
    p = sub.add_parser("generate", help=HELP, description=HELP + ".")
    p.add_argument("--task", default="t2v", choices=["t2v", "t2i", "i2v", "flf2v", "v2v", "extend"])
    p.add_argument("--size", type=str, default=None, help="WIDTH*HEIGHT, e.g. 832*480 (default: the model's)")
    p.add_argument("--frame-num", type=int, default=None,
                   help="frames, 4n+1 (default: the model's, 81 for a Wan release, 17 for the bundled model; t2i: 1)")
    p.add_argument("--ckpt-dir", default=None, help="a Wan release folder (official or diffusers layout)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None, help="default: the reference's negative prompt")
    p.add_argument("--image", default=None, help="i2v: the first frame")
    p.add_argument("--first-frame", default=None, help="flf2v: the first frame")
    p.add_argument("--last-frame", default=None, help="flf2v: the last frame")
    p.add_argument("--video", default=None, help="v2v / extend: the input video")
    p.add_argument("--strength", type=float, default=None, help="v2v: how much to re-noise the input, in (0, 1]")
    p.add_argument("--sample-solver", default="unipc", choices=["unipc", "dpm++", "euler"])
    p.add_argument("--sample-steps", type=int, default=None)
    p.add_argument("--sample-shift", type=float, default=None)
    p.add_argument("--sample-guide-scale", type=float, nargs="+", default=None,
                   help="guidance scale (two values low high for Wan2.2 A14B)")
    p.add_argument("--base-seed", type=int, default=0)
    p.add_argument("--offload-model", action="store_true", help="move each model to the CPU when its stage ends")
    p.add_argument("--t5-cpu", action="store_true", help="keep the text encoder on the CPU")
    p.add_argument("--stream-blocks", action="store_true", help="stream DiT blocks to the GPU one at a time")
    p.add_argument("--no-cfg-batch", action="store_true", help="run the two guidance branches one after another")
    p.add_argument("--prompt-extend", default=None, metavar="MODEL_DIR_OR_URL",
                   help="rewrite the prompt with a local causal LM folder or an OpenAI-compatible endpoint")
    p.add_argument("--prompt-extend-model", default="default", help="model name sent to the endpoint")
    p.add_argument("--save-file", default=None, help="output .mp4 (or .png for t2i)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the file (default 16)")
    p.add_argument("--strip", default=None, help="also write a PNG strip of evenly spaced frames here")
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
        return _run(args)
    finally:
        close_distributed()  # under torchrun: every rank waits for rank 0's files, then leaves


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    mesh, rank = _mesh(args)
    main_rank = rank == 0
    task = args.task
    size = parse_size(args.size) if args.size else None
    if args.frame_num is not None:
        check_frame_num(args.frame_num)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    save_file = args.save_file or f"{task}_{time.strftime('%Y%m%d_%H%M%S')}" + (".png" if task == "t2i" else ".mp4")
    if main_rank:  # only rank 0 writes
        check_writable(save_file)  # before any compute
        if args.strip:
            check_writable(args.strip)
    image = last = video = None
    if task == "i2v" and not args.image:
        raise ValueError("task i2v needs --image (the first frame).")
    if task == "flf2v" and not ((args.first_frame or args.image) and args.last_frame):
        raise ValueError("task flf2v needs --first-frame and --last-frame.")
    if task in ("v2v", "extend") and not args.video:
        raise ValueError(f"task {task} needs --video.")
    if args.image or args.first_frame:
        image = read_image(args.first_frame or args.image)
    if args.last_frame:
        last = read_image(args.last_frame)
    if args.video:
        video = read_video(args.video, fps=args.fps or 16)
    if args.ckpt_dir is None:
        if not holds_dit(BUNDLED):
            raise ValueError(f"no --ckpt-dir given and no bundled model at {BUNDLED}; give --ckpt-dir, a Wan release "
                             "folder (e.g. Wan2.1-T2V-1.3B).")
        args.ckpt_dir = str(BUNDLED)
        if main_rank:
            print(BUNDLED_NOTE)

    t0 = time.perf_counter()
    device = args.device
    if device is None and mesh is not None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    pipe = WanPipeline.from_pretrained(args.ckpt_dir, device=device, dtype=dtype, t5_cpu=args.t5_cpu,
                                       offload_model=args.offload_model, stream_blocks=args.stream_blocks,
                                       mesh=mesh, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp)
    if args.lora:
        for model in (pipe.dit, pipe.dit_low):
            if model is not None:
                load_lora(model, [parse_lora_spec(spec) for spec in args.lora])
                if args.fuse_lora:
                    fuse_lora(model)
    load_s = time.perf_counter() - t0
    prompt = args.prompt
    if args.prompt_extend:
        prompt = extend_prompt(prompt, args.prompt_extend, model=args.prompt_extend_model)
        print(f"extended prompt: {prompt}")
    guide = args.sample_guide_scale
    if guide is not None:
        guide = tuple(guide) if len(guide) == 2 else float(guide[0])
    out = pipe(prompt, args.negative_prompt, task=task, size=size, frame_num=args.frame_num,
               sample_steps=args.sample_steps, sample_shift=args.sample_shift, guide_scale=guide,
               solver=args.sample_solver, seed=args.base_seed, image=image, last_image=last, video=video,
               strength=args.strength, cfg_batch=not args.no_cfg_batch, return_video=task in ("extend",),
               progress=main_rank)
    if not main_rank:  # every rank computed the same latents; rank 0 decodes and writes
        return 0
    if args.save_latents:
        atomic_write(args.save_latents, lambda tmp: save_tensors({"latents": out.latents.contiguous()}, tmp))
    fps = args.fps or pipe.defaults.fps
    t1 = time.perf_counter()
    if out.video is not None:  # extend: the joined video is already decoded
        with VideoWriter(save_file, fps=fps) as writer:
            writer.write(out.video)
    elif save_file.lower().endswith((".png", ".jpg", ".jpeg")):
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
