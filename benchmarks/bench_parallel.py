"""Context parallelism: the analytic communication table, and measured overhead of each mode on the tiny model.

    python benchmarks/bench_parallel.py --table           # bytes per step for t2v-1.3B / 14B at 480p / 720p
    python benchmarks/bench_parallel.py --cpu             # tiny model on CPU processes (gloo): time per forward
    python benchmarks/bench_parallel.py                   # both

The table comes from ``openwan.parallel.context_parallel_comm`` (checked against bytes counted in real runs by
tests/parallel and again by --cpu here). Times in the table are that volume over an assumed per-GPU link
bandwidth (--intra-gbs inside a node, --inter-gbs across nodes; Ulysses groups sit inside a node, Ring traffic
crosses nodes once the mesh is larger than --gpus-per-node), set against the forward's compute at an assumed
--tflops; they are estimates, not measurements, and Ring's transfers overlap its attention compute.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist

from openwan.configs import DIT_PRESETS, DiTConfig
from openwan.models.dit import WanDiT
from openwan.parallel import (
    DiTParallelConfig,
    build_mesh,
    cfg_parallel_forward,
    context_parallel_comm,
    count_sent_bytes,
    dim_group,
    latent_tokens,
    parallelize_dit,
)

RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
MESHES = [("Ulysses", 8, 1), ("Ring", 1, 8), ("2D", 4, 2), ("2D", 2, 4), ("2D (16 GPUs)", 8, 2)]


def forward_flops(cfg: DiTConfig, tokens: int) -> float:
    """Matmul FLOPs of one DiT forward: the linear layers on every token plus the two attention matmuls."""
    d, f, text = cfg.dim, cfg.ffn_dim, cfg.text_len
    per_token = 2 * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,o; cross q,o; FFN
    attention = 4 * tokens * d + 4 * text * d  # QK^T and PV to all tokens and to the text
    cross_kv = 2 * 2 * text * d * d
    return cfg.num_layers * (tokens * (per_token + attention) + cross_kv)


def table(args) -> None:
    print("Per-GPU bytes sent by context parallelism, bf16 activations, batch 1, 81 frames. A sampling step is")
    print("two forwards (CFG); a training step is forward + recomputed forward (activation checkpointing) +")
    print(f"backward. Time: {args.intra_gbs} GB/s per GPU inside a node of {args.gpus_per_node} GPUs, "
          f"{args.inter_gbs} GB/s across nodes; compute at {args.tflops} TFLOP/s per GPU.\n")
    print("| model | res | tokens | mesh (ulysses×ring) | GB / forward | GB / sampling step | GB / training step "
          "| comm ms / forward | compute ms / forward | comm / compute |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("t2v-1.3B", "t2v-14B"):
        cfg = DIT_PRESETS[name]
        for res, (h, w) in RESOLUTIONS.items():
            if name == "t2v-1.3B" and res == "720p":
                continue  # 1.3B is released for 480p only
            tokens = latent_tokens(cfg, 81, h, w)
            for label, u, r in MESHES:
                row = f"| {name} | {res} | {tokens:,} | {label} {u}×{r} |"
                if cfg.num_heads % u:
                    print(row + f" {cfg.num_heads} heads do not split {u} ways |" + " — |" * 5)
                    continue
                fwd = context_parallel_comm(cfg, tokens, ulysses=u, ring=r)
                bwd = context_parallel_comm(cfg, tokens, ulysses=u, ring=r, backward=True)
                blocks = fwd["all_to_all"] + fwd["ring"]
                f, train = sum(fwd.values()), sum(fwd.values()) + blocks + sum(bwd.values())
                ring_gbs = args.intra_gbs if u * r <= args.gpus_per_node else args.inter_gbs
                comm_s = fwd["all_to_all"] / (args.intra_gbs * 1e9) + fwd["ring"] / (ring_gbs * 1e9)
                compute_s = forward_flops(cfg, tokens) / (u * r) / (args.tflops * 1e12)
                print(f"{row} {f / 1e9:.2f} | {2 * f / 1e9:.2f} | {train / 1e9:.2f} | {comm_s * 1e3:.0f} | "
                      f"{compute_s * 1e3:.0f} | {comm_s / compute_s:.1%} |")


# ------------------------------------------------------------------------------------ CPU timings

TINY_GRID = (5, 16, 16)  # 5·8·8 = 320 tokens
MODES = {"one process": (1, {}), "Ulysses 2": (2, {"ulysses": 2}), "Ring 2": (2, {"ring": 2}),
         "CFG-parallel 2": (2, {"cfg": 2}), "2D 2×2": (4, {"ring": 2, "ulysses": 2})}


def _tiny_model() -> WanDiT:
    torch.manual_seed(0)
    model = WanDiT(DIT_PRESETS["tiny"].replace(dim=128, ffn_dim=256, num_heads=4, num_layers=4))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _inputs(cfg: DiTConfig):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *TINY_GRID, generator=g)
    return x, torch.tensor([500.0]), torch.randn(2, 7, cfg.text_dim, generator=g)


def _worker(rank: int, world: int, port: int, sizes: dict, reps: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model, mesh = _tiny_model(), build_mesh(**sizes) if world > 1 else None
    parallelize_dit(model, mesh, DiTParallelConfig(fsdp=False))
    x, t, context = _inputs(model.cfg)
    cfg_group = dim_group(mesh, "cfg")

    def step():  # one guided evaluation: both CFG branches
        if cfg_group is not None:
            return cfg_parallel_forward(model, cfg_group, x, t, context)
        return model(x, t, context[:1]), model(x, t, context[1:])

    times = []
    with torch.no_grad():
        step()
        for _ in range(reps):
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            with count_sent_bytes() as sent:
                step()
            times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put((statistics.median(times), dict(sent)))
    if world > 1:
        dist.destroy_process_group()


def cpu(args) -> None:
    mp = torch.multiprocessing.get_context("spawn")
    cfg = _tiny_model().cfg
    tokens = TINY_GRID[0] * (TINY_GRID[1] // 2) * (TINY_GRID[2] // 2)
    print(f"Tiny DiT (dim {cfg.dim}, {cfg.num_heads} heads, {cfg.num_layers} layers), {tokens} tokens, one guided "
          f"step (two forwards), float32, one thread per rank, gloo on {os.cpu_count()} CPU cores; median of "
          f"{args.reps}.\n")
    print("| mode | ranks | s / step | speed-up | rank-seconds / step vs one process | bytes sent / rank "
          "| analytic model |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, (world, sizes) in MODES.items():
        queue = mp.Queue()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = torch.multiprocessing.start_processes(_worker, args=(world, port, sizes, args.reps, queue),
                                                    nprocs=world, join=False, start_method="spawn")
        seconds, sent = queue.get()
        ctx.join()
        base = base or seconds
        u, r = sizes.get("ulysses", 1), sizes.get("ring", 1)
        predicted = {k: 2 * v for k, v in context_parallel_comm(cfg, tokens, ulysses=u, ring=r, dtype_bytes=4)
                     .items() if v}
        measured = {k: v for k, v in sent.items() if k != "cfg"}
        check = "—" if u * r == 1 else ("equal" if measured == predicted else f"differs: {predicted}")
        print(f"| {name} | {world} | {seconds:.4f} | {base / seconds:.2f}× | {world * seconds / base:.2f} | "
              f"{sum(sent.values()):,} | {check} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="print only the analytic table")
    parser.add_argument("--cpu", action="store_true", help="run only the CPU timings")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--intra-gbs", type=float, default=150.0, help="all-to-all GB/s per GPU inside a node")
    parser.add_argument("--inter-gbs", type=float, default=40.0, help="P2P GB/s per GPU across nodes")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s per GPU")
    args = parser.parse_args()
    both = not (args.table or args.cpu)
    if args.table or both:
        table(args)
        print()
    if args.cpu or both:
        cpu(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
