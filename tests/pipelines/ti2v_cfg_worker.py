"""One rank of the ti2v CFG-parallel check: the tiny TI2V pipeline on a cfg mesh of 2 gloo processes, image-to-video
with per-token timesteps; rank 0 writes the latents (test_ti2v_cfg_parallel.py compares them with one process)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from openwan.parallel import build_mesh
from openwan.pipelines import WanPipeline
from tiny import tiny_components


def run_ti2v(pipe: WanPipeline, **kw) -> torch.Tensor:
    """The run both sides make: image-to-video from fixed noise and a fixed image, latents only."""
    g = torch.Generator().manual_seed(11)
    image, noise = torch.rand(64, 64, 3, generator=g), torch.randn(48, 2, 4, 4, generator=g)
    args = dict(task="ti2v", image=image, size=(64, 64), frame_num=5, sample_steps=3, guide_scale=4.0, latents=noise,
                return_video=False, progress=False)
    return pipe("a red ball rolls", "blurry", **{**args, **kw}).latents


def entry(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pipe = WanPipeline(**tiny_components("tiny-ti2v"), mesh=build_mesh(cfg=2))
        latents = run_ti2v(pipe)
        if rank == 0:
            torch.save({"latents": latents}, Path(out_dir) / "latents.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
