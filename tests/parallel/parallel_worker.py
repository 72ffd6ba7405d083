"""Real multi-process runs for tests/parallel: ``launch(world, scenario, out_dir)`` starts ``world`` CPU processes
on a gloo group; each runs the scenario's checks and rank 0 saves what they produced (outputs, losses, full
gradients, bytes sent) to ``out_dir/result.pt``. The test process compares that with its own one-process run of
the same tiny models (``tiny_dit``, ``inputs``, ``train_loss`` are shared by both sides).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from openwan.configs import DIT_PRESETS, VACE_PRESETS
from openwan.models.dit import WanDiT
from openwan.models.vace import WanVaceDiT
from openwan.parallel import (
    DiTParallelConfig,
    build_mesh,
    cfg_parallel_forward,
    count_sent_bytes,
    dim_group,
    parallelize_dit,
)

# Latent grids (F, H, W) with patch (1, 2, 2): 3·2·3 = 18 tokens and 3·1·3 = 9 tokens (odd: padding on 2 and 4
# ranks; on 4 ranks the last shard holds nothing but padding).
EVEN, ODD = (3, 4, 6), (3, 2, 6)
LR = 1e-3

# ------------------------------------------------------------------------------- shared by both sides


def tiny_dit(preset: str = "tiny", seed: int = 0, **changes) -> WanDiT:
    """A tiny DiT with every parameter random (the release init zeroes the head and VACE's projections, which would
    hide bugs); a ``tiny-vace`` preset gives a WanVaceDiT."""
    model = (WanVaceDiT(VACE_PRESETS[preset].replace(**changes)) if preset in VACE_PRESETS
             else WanDiT(DIT_PRESETS[preset].replace(**changes)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.05 * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if "norm" in name else noise * 4 if name.endswith("modulation") else noise)
    return model


def inputs(model: WanDiT, grid: tuple[int, int, int], batch: int = 2, seed: int = 1, per_token: bool = False):
    """(x, t, context) for ``model``: latents of ``grid``, timesteps [B] (or [B, L]), text states [B, 7, text_dim]."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, *grid, generator=g)
    tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    t = torch.rand(batch, tokens, generator=g) * 1000 if per_token else torch.tensor([999.0, 500.0])[:batch]
    context = torch.randn(batch, 7, cfg.text_dim, generator=g)
    return x, t, context


def vace_inputs(model: WanVaceDiT, grid: tuple[int, int, int], seed: int = 2) -> dict:
    """A VACE context on ``grid`` for a batch of 2 and a context scale per sample (the keyword arguments)."""
    g = torch.Generator().manual_seed(seed)
    return {"vace_context": torch.randn(2, model.cfg.vace_in_dim, *grid, generator=g),
            "vace_context_scale": torch.tensor([1.0, 0.5])}


def train_batch(model: WanDiT, seed: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """(x0, t, context, noise) at the odd grid."""
    x0, t, context = inputs(model, ODD, batch=batch, seed=seed)
    return x0, t, context, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 100))


def train_loss(model: WanDiT, batch) -> torch.Tensor:
    """Flow-matching loss: x_t = (1-σ)x0 + σε, target ε - x0 (written inline; the trainer is not needed)."""
    x0, t, context, noise = batch
    sigma = (t / 1000).view(-1, 1, 1, 1, 1)
    pred = model((1 - sigma) * x0 + sigma * noise, t, context)
    return (pred - (noise - x0)).pow(2).mean()


# ---------------------------------------------------------------------------------------- launching


def launch(world: int, scenario: str, out_dir: Path, timeout: float = 240.0) -> dict:
    """Run ``scenario`` on ``world`` fresh processes and return rank 0's results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # forkserver: torch and openwan are imported once by the server, each rank is a cheap fork of it.
    multiprocessing.set_forkserver_preload(["parallel_worker"])
    ctx = torch.multiprocessing.start_processes(
        _entry, args=(world, port, scenario, str(out_dir)), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"scenario {scenario!r} on {world} processes did not finish in {timeout} s")
    return torch.load(Path(out_dir) / "result.pt", weights_only=True)


def _entry(rank: int, world: int, port: int, scenario: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results: dict = {}
        for check in SCENARIOS[scenario]:
            check(results, Path(out_dir))
        if rank == 0:
            torch.save(results, Path(out_dir) / "result.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ checks


def _forward(results: dict, name: str, mesh, preset: str = "tiny", per_token: bool = False,
             max_scores: int | None = None) -> None:
    """Context-parallel forward at both grids; outputs and forward bytes sent."""
    model = parallelize_dit(tiny_dit(preset), mesh, DiTParallelConfig(fsdp=False))
    if max_scores is not None:  # force Ring to take its query rows in several chunks
        model.blocks[0].self_attn.attn_backend.max_scores = max_scores  # one backend shared by all blocks
    for label, grid in (("even", EVEN), ("odd", ODD)):
        with torch.no_grad(), count_sent_bytes() as sent:
            out = model(*inputs(model, grid, per_token=per_token))
        results[f"{name}_{label}"] = {"out": out, "sent": dict(sent)}


def _train(results: dict, name: str, mesh, cfg: DiTParallelConfig, batch_of: Callable, out_dir: Path | None = None,
           max_scores: int | None = None) -> None:
    """One AdamW step under FSDP2 + context parallel: loss, full gradients, bytes sent forward and backward.
    With ``out_dir``: also save a distributed checkpoint after the step, then take a second step."""
    model = parallelize_dit(tiny_dit(), mesh, cfg)
    if max_scores is not None:
        model.blocks[0].self_attn.attn_backend.max_scores = max_scores
    optim = torch.optim.AdamW(model.parameters(), lr=LR)
    with count_sent_bytes() as fwd:
        loss = train_loss(model, batch_of(model, 1))
    with count_sent_bytes() as bwd:
        loss.backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    losses = torch.zeros(dist.get_world_size())
    losses[dist.get_rank()] = loss.detach()
    dist.all_reduce(losses)
    res = {"losses": losses, "grads": grads, "sent_fwd": dict(fwd), "sent_bwd": dict(bwd)}
    optim.step()
    optim.zero_grad()
    if out_dir is not None:
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
        dcp.save(state, checkpoint_id=str(out_dir / f"{name}_ckpt"))
        res["state"] = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        loss2 = train_loss(model, batch_of(model, 2))
        loss2.backward()
        optim.step()
        with torch.no_grad():
            loss3 = train_loss(model, batch_of(model, 3))
        res["next_losses"] = torch.stack([loss2.detach(), loss3])
    results[name] = res


def _same_batch(model, seed):
    return train_batch(model, seed)


def _batch_by_dp_rank(mesh):
    def batch_of(model, seed):  # a batch of 2 split over the dp ranks: one sample each
        rank = mesh.get_local_rank("dp")
        return tuple(t[rank : rank + 1] for t in train_batch(model, seed))
    return batch_of


def ulysses_and_ring(results: dict, out_dir: Path) -> None:
    _forward(results, "ulysses", build_mesh(ulysses=2))
    _forward(results, "ring", build_mesh(ring=2))
    _forward(results, "ulysses_ti2v", build_mesh(ulysses=2), preset="tiny-ti2v", per_token=True)
    _forward(results, "ring_ti2v", build_mesh(ring=2), preset="tiny-ti2v", per_token=True, max_scores=64)


def vace(results: dict, out_dir: Path) -> None:
    """The VACE DiT's forward under Ulysses, Ring, and Ring with its blocks under FSDP, at both grids."""
    for name, mesh, fsdp in (("ulysses", build_mesh(ulysses=2), False), ("ring", build_mesh(ring=2), False),
                             ("ring_fsdp", build_mesh(ring=2), True)):
        model = parallelize_dit(tiny_dit("tiny-vace"), mesh, DiTParallelConfig(fsdp=fsdp))
        for label, grid in (("even", EVEN), ("odd", ODD)):
            with torch.no_grad():
                results[f"vace_{name}_{label}"] = model(*inputs(model, grid), **vace_inputs(model, grid))


def cfg_parallel(results: dict, out_dir: Path) -> None:
    mesh = build_mesh(cfg=2)
    model = parallelize_dit(tiny_dit(), mesh)
    x, t, _ = inputs(model, ODD, batch=1)
    context = inputs(model, ODD, batch=2, seed=5)[2]  # [prompt, negative prompt]
    with torch.no_grad():
        v_cond, v_uncond = cfg_parallel_forward(model, dim_group(mesh, "cfg"), x, t, context)
    results["cfg"] = {"cond": v_cond, "uncond": v_uncond}


def heads_error(results: dict, out_dir: Path) -> None:
    try:
        parallelize_dit(tiny_dit(num_heads=1), build_mesh(ulysses=2))
        results["heads_error"] = ""
    except ValueError as err:
        results["heads_error"] = str(err)


def train_two(results: dict, out_dir: Path) -> None:
    ring = DiTParallelConfig(activation_checkpointing=False)
    _train(results, "train_ring", build_mesh(ring=2), ring, _same_batch, out_dir, max_scores=64)
    ulysses_ac = DiTParallelConfig(activation_checkpointing=True)
    _train(results, "train_ulysses_ac", build_mesh(ulysses=2), ulysses_ac, _same_batch)


def text_encoder_fsdp(results: dict, out_dir: Path) -> None:
    from openwan.parallel import shard_text_encoder  # transformers is imported only here

    encoder = tiny_umt5()
    ids = torch.randint(0, encoder.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    shard_text_encoder(encoder, build_mesh(dp=dist.get_world_size()))
    with torch.no_grad():
        results["umt5"] = encoder(input_ids=ids).last_hidden_state


def tiny_umt5():
    from transformers import UMT5EncoderModel

    from openwan.configs import TEXT_ENCODER_PRESETS

    torch.manual_seed(0)
    return UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()).eval()


def two_d(results: dict, out_dir: Path) -> None:
    _forward(results, "2d", build_mesh(ring=2, ulysses=2))
    _forward(results, "2d_ti2v", build_mesh(ring=2, ulysses=2), preset="tiny-ti2v", per_token=True)
    mesh = build_mesh(cfg=2, ulysses=2)  # CFG-parallel on top of Ulysses
    model = parallelize_dit(tiny_dit(), mesh, DiTParallelConfig(fsdp=False))
    x, t, _ = inputs(model, ODD, batch=1)
    context = inputs(model, ODD, batch=2, seed=5)[2]
    with torch.no_grad():
        v_cond, v_uncond = cfg_parallel_forward(model, dim_group(mesh, "cfg"), x, t, context)
    results["cfg_ulysses"] = {"cond": v_cond, "uncond": v_uncond}


def train_four(results: dict, out_dir: Path) -> None:
    _train(results, "train_2d", build_mesh(ring=2, ulysses=2), DiTParallelConfig(), _same_batch)
    mesh = build_mesh(dp=2, ring=2)
    _train(results, "train_dp_ring_ac", mesh, DiTParallelConfig(activation_checkpointing=True),
           _batch_by_dp_rank(mesh))


SCENARIOS: dict[str, list[Callable]] = {
    "two": [ulysses_and_ring, vace, cfg_parallel, heads_error, train_two, text_encoder_fsdp],
    "four": [two_d, train_four],
}
