"""The GPU suite's figures in one JSON: openwan against diffusers, each acceleration's speed-up, memory modes, MFU.

    python benchmarks/bench_gpu.py --out runs/gpu-suite.json            # GPU: t2v-1.3B, 480x832, 81 frames, bf16
    python benchmarks/bench_gpu.py --tiny --out /tmp/gpu-suite.json     # CPU: the tiny config, seconds

Random weights (speed and memory do not depend on them). Sections, each in its own process on a GPU (so each peak
is its own and one failure does not stop the rest; --tiny runs them in this process):

- dit_step: one DiT forward, ours against diffusers' WanTransformer3DModel (benchmarks/bench_models.py's bench_dit);
  a guided sampling step is two of them.
- end_to_end: prompt to decoded video, ours against diffusers' WanPipeline (bench_generate.py's _run_variant) at
  --steps steps.
- accelerations: the DiT forward with int8 / fp8 weights, the flash and sage attention backends and compiled
  blocks, against the same eager bf16 model with SDPA: seconds, speed-up, rel L2 error of the output.
- cache: denoising with each preset of openwan.runtime.cache against none, at --steps steps (when that module
  and the pipeline's ``cache=`` are present).
- memory: peak GPU memory of a generation in the default mode, with --offload-model and with --stream-blocks.
- mfu: the DiT forward's FLOPs counted analytically (:func:`dit_forward_flops`) over its measured time, against
  the GPU's dense bf16 peak.
- pytest (with --pytest): ``pytest -m gpu``, its summary line and exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench_generate
import bench_models
from openwan.configs import DIT_PRESETS, TEXT_ENCODER_PRESETS, DiTConfig, TextEncoderConfig
from openwan.fileio import atomic_write
from openwan.models import WanDiT
from openwan.models.layers import attention_backend, attention_backend_problem
from openwan.runtime.compile import check_compile, compile_blocks
from openwan.runtime.quantize import check_runs, quantize_model, weight_bytes

ROOT = Path(__file__).resolve().parents[1]
FULL = {"dit": DIT_PRESETS["t2v-1.3B"], "text": TextEncoderConfig(), "size": (832, 480), "frames": 81}
TINY = {"dit": DIT_PRESETS["tiny"], "text": TEXT_ENCODER_PRESETS["tiny"], "size": (16, 16), "frames": 5}
SECTIONS = ("dit_step", "end_to_end", "accelerations", "cache", "memory")
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a piece of the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "4090": 165.2}


# ------------------------------------------------------------------------------------------- FLOPs


def dit_forward_flops(cfg: DiTConfig, grid: tuple[int, int, int], batch: int = 1) -> dict[str, int]:
    """FLOPs of one DiT forward on a latent ``grid`` (frames, height, width), 2 per multiply-add, counted from the
    architecture, as {"matmul", "attention", "total"}. Per block, with L video tokens, C = text_len (+ image tokens)
    context rows, width D, FFN width F: matmuls — self-attention q, k, v, o 4·2·L·D², cross-attention q, o 2·2·L·D²
    and k, v 2·2·C·D², FFN 2·2·L·D·F; attention — self 2·2·L²·D (scores and weighted sum), cross 2·2·L·C·D. Once:
    the patch embedding 2·L·D·(in_dim·patch volume), the text embedding 2·text_len·(text_dim·D + D²), the time MLP
    and projection 2·(freq_dim·D + D²) + 2·D·6D, the head 2·L·D·(out_dim·patch volume), and for i2v the image
    embedding. Norms, RoPE and modulation (O(L·D)) are left out; they are under 1% at any real size."""
    pt, ph, pw = cfg.patch_size
    tokens = (grid[0] // pt) * (grid[1] // ph) * (grid[2] // pw)
    d, f, c = cfg.dim, cfg.ffn_dim, cfg.text_len + cfg.image_tokens
    patch = pt * ph * pw
    matmul = cfg.num_layers * (8 * tokens * d * d + 4 * tokens * d * d + 4 * c * d * d + 4 * tokens * d * f)
    matmul += (2 * tokens * d * cfg.in_dim * patch + 2 * cfg.text_len * (cfg.text_dim * d + d * d)
               + 2 * (cfg.freq_dim * d + d * d) + 12 * d * d + 2 * tokens * d * cfg.out_dim * patch)
    if cfg.image_tokens:
        matmul += 2 * cfg.image_tokens * (cfg.image_dim * cfg.image_dim + cfg.image_dim * d)
    attention = cfg.num_layers * (4 * tokens * tokens * d + 4 * tokens * c * d)
    return {"matmul": batch * matmul, "attention": batch * attention, "total": batch * (matmul + attention)}


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of this CUDA device (TFLOP/s), None where unknown (CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# ---------------------------------------------------------------------------------------- sections


def _grid(setup: dict) -> tuple[int, int, int]:
    width, height = setup["size"]
    return 1 + (setup["frames"] - 1) // 4, height // 8, width // 8


def _median_time(fn, device, reps: int) -> float:
    fn()  # warm-up (and compilation)
    return statistics.median(bench_models._time(fn, device) for _ in range(reps))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def section_dit_step(setup, device, dtype, reps, steps) -> dict:
    row = bench_models.bench_dit(setup["dit"], _grid(setup), device, dtype, reps)
    row["flops_analytic"] = dit_forward_flops(setup["dit"], _grid(setup))
    return row


def section_end_to_end(setup, device, dtype, reps, steps) -> dict:
    # bench_generate's variants read their configuration from its module-level SMALL, set here for the call.
    saved, bench_generate.SMALL = bench_generate.SMALL, {**setup, "steps": steps}
    rows = {}
    try:
        for variant in ("ours", "diffusers"):
            rows[variant] = bench_generate._run_variant(variant, False, str(device))
            gc.collect()  # the first variant's models gone before the second's peak is measured
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        bench_generate.SMALL = saved
    rows["ours_speedup"] = rows["diffusers"]["total_s"] / rows["ours"]["total_s"]
    return rows


def section_accelerations(setup, device, dtype, reps, steps, tiny: bool = False) -> dict:
    torch.manual_seed(0)
    base = WanDiT(setup["dit"]).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        base.head.head.weight.normal_(0, 0.02)  # a non-zero head, so errors show in the output
    cfg = base.cfg
    x = torch.randn(1, cfg.in_dim, *_grid(setup), device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    with torch.no_grad():
        ref = base(x, t, ctx)
        seconds = _median_time(lambda: base(x, t, ctx), device, reps)
    out = {"baseline": {"what": f"eager {dtype}, sdpa", "s": seconds, "weight_bytes": weight_bytes(base)}}

    def run(name, model, skip=None, context=None):
        if skip:
            out[name] = {"skipped": skip}
            return
        try:
            with torch.no_grad(), (context or contextlib.nullcontext()):
                start = time.perf_counter()
                first = model(x, t, ctx)
                bench_models._sync(device)
                first_s = time.perf_counter() - start
                s = _median_time(lambda: model(x, t, ctx), device, reps)
            out[name] = {"s": s, "speedup": seconds / s, "first_call_s": first_s,
                         "rel_l2_vs_baseline": _rel(first, ref), "weight_bytes": weight_bytes(model)}
        except Exception as err:  # one acceleration failing is a figure too; the others still run
            out[name] = {"error": f"{type(err).__name__}: {err}"[:300]}

    for mode in ("int8", "fp8"):
        problem = _problem(lambda mode=mode: check_runs(mode, device, dtype))
        model = None if problem else copy.deepcopy(base)
        if model is not None:
            quantize_model(model, mode)
        run(mode, model, problem)
        del model
    for name in ("flash", "sage"):
        run(name, base, attention_backend_problem(name), attention_backend(name) if not
            attention_backend_problem(name) else None)
    problem = "skipped with --tiny (inductor's CPU build takes ~35 s; tests/runtime/test_compile.py checks it)" \
        if tiny else _problem(lambda: check_compile(device))
    run("compile", None if problem else compile_blocks(copy.deepcopy(base)), problem)
    return out


def _problem(check) -> str | None:
    try:
        check()
    except ValueError as err:
        return f"not measured: {err}"
    return None


def _pipeline(setup, device, dtype, parts=None, **memory):
    """A WanPipeline over bench_generate's random components (``parts`` reuses them), placed for ``memory``."""
    from openwan.pipelines import WanPipeline

    dit, vae, text, tokenizer = parts or bench_generate._components(setup, device, dtype)
    for m in (dit, vae, text):
        m.to("cpu" if memory.get("offload_model") else device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return WanPipeline(dit, vae, text, tokenizer, device=device, dtype=dtype, **memory)


def _generate(pipe, setup, steps, **kw) -> dict:
    width, height = setup["size"]
    noise = torch.randn(16, *_grid(setup), generator=torch.Generator().manual_seed(0))
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = pipe(bench_generate.PROMPT, bench_generate.NEGATIVE, size=(width, height), frame_num=setup["frames"],
                  sample_steps=steps, sample_shift=5.0, guide_scale=5.0, latents=noise, progress=False, **kw)
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if pipe.device.type == "cuda" else None
    row = {"total_s": total, "timings": result.timings, "peak_gb": peak}
    if peak is None:
        row["peak_note"] = "not measured: GPU allocator figure (CPU run)"
    if getattr(result, "cache", None):
        row["cache_summary"] = result.cache
    return row


def section_cache(setup, device, dtype, reps, steps) -> dict:
    try:
        from openwan.runtime.cache import PRESETS
    except ImportError:
        return {"skipped": "not measured: openwan.runtime.cache is not present"}
    from openwan.pipelines import WanPipeline

    if "cache" not in inspect.signature(WanPipeline.__call__).parameters:
        return {"skipped": "not measured: WanPipeline.__call__ takes no cache= argument"}
    pipe = _pipeline(setup, device, dtype)
    rows = {"none": _generate(pipe, setup, steps, return_video=False)}
    for name in PRESETS:
        if name != "off":
            rows[name] = _generate(pipe, setup, steps, return_video=False, cache=name)
            rows[name]["speedup"] = rows["none"]["total_s"] / rows[name]["total_s"]
    return rows


def section_memory(setup, device, dtype, reps, steps) -> dict:
    rows = {}
    parts = bench_generate._components(setup, device, dtype)
    # streaming last: it leaves the DiT's blocks in host memory
    for mode, memory in (("default", {}), ("offload_model", {"offload_model": True}),
                         ("stream_blocks", {"stream_blocks": True})):
        pipe = _pipeline(setup, device, dtype, parts, **memory)
        rows[mode] = _generate(pipe, setup, min(steps, 2))
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def mfu(results: dict, setup: dict, device: torch.device) -> dict:
    """Achieved FLOP/s and MFU of the DiT forward, from the analytic count and the measured seconds."""
    analytic = dit_forward_flops(setup["dit"], _grid(setup))
    flops = analytic["total"]
    row = {"flops_analytic": analytic, "formula": "benchmarks/bench_gpu.py dit_forward_flops"}
    step = results.get("dit_step", {})
    if "gflop" in step:
        # torch.utils.flop_counter on the same forward; it counts SDPA's CUDA kernels but not its CPU one
        row["flops_counted"] = round(step["gflop"] * 1e9)
    peak = peak_tflops(device)
    row["peak_tflops"] = peak
    for name, seconds in (("ours", step.get("ours_s")), ("diffusers", step.get("peer_s")),
                          *((k, v.get("s")) for k, v in results.get("accelerations", {}).items())):
        if seconds:
            achieved = flops / seconds / 1e12
            row[name] = {"tflops": achieved, "mfu": achieved / peak if peak else None}
    if peak is None:
        row["mfu_note"] = f"not measured: no bf16 peak known for {device.type} (pass --peak-tflops)"
    return row


def run_section(name: str, setup, device, dtype, reps, steps, tiny: bool) -> dict:
    fn = globals()[f"section_{name}"]
    kwargs = {"tiny": tiny} if name == "accelerations" else {}
    return fn(setup, device, dtype, reps, steps, **kwargs)


def run_pytest(seconds: float) -> dict:
    """``pytest -m gpu`` within ``seconds``: its summary line, exit status and duration."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"stopped at the suite's budget after {seconds:.0f} s", "s": seconds}
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "s": time.perf_counter() - start}


def _child(name: str, args, seconds: float) -> dict:
    """One section in its own process (its own peak memory; a crash or hang costs only that section)."""
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--reps", str(args.reps)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at the suite's budget after {seconds:.0f} s"}
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write(path: str, results: dict) -> None:
    text = json.dumps(results, indent=1, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> dict:
    """Run the suite (``argv`` as on the command line) and return the figures it wrote."""
    begun = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny config on CPU, in this process")
    parser.add_argument("--out", default="runs/gpu-suite.json", help="the JSON of figures (rewritten per section)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of the end-to-end and cache runs")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per figure (median)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=470.0, help="seconds for everything; late parts are cut")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, if not listed")
    parser.add_argument("--pytest", action="store_true", help="run `pytest -m gpu` last and record its summary")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup = TINY if args.tiny else FULL
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.child:
        row = run_section(args.child, setup, device, dtype, args.reps, args.steps, args.tiny)
        print(json.dumps(row, default=str))
        return row
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; --tiny runs the CPU configuration.")
    if args.peak_tflops:
        PEAK_BF16_TFLOPS[torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"] = args.peak_tflops
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "tiny": args.tiny, "steps": args.steps, "reps": args.reps,
                     "config": {"dit": "tiny" if args.tiny else "t2v-1.3B", "size": setup["size"],
                                "frames": setup["frames"], "latent_grid": _grid(setup), "dtype": str(dtype)},
                     "section_s": {}}
    left = lambda: args.budget_s - (time.perf_counter() - begun)
    for name in args.sections.split(","):
        start = time.perf_counter()
        if left() < 10:
            results[name] = {"skipped": f"not measured: the suite's {args.budget_s:.0f} s budget was spent"}
            continue
        try:
            results[name] = (run_section(name, setup, device, dtype, args.reps, args.steps, True) if args.tiny
                             else _child(name, args, left()))
        except Exception as err:
            results[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        results["section_s"][name] = time.perf_counter() - start
        results["mfu"] = mfu(results, setup, device)
        _write(args.out, results)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    results["mfu"] = mfu(results, setup, device)
    if args.pytest and not args.tiny:
        results["pytest"] = run_pytest(max(left(), 0)) if left() > 30 else {
            "skipped": f"not run: {max(left(), 0):.0f} s of the suite's budget left"}
    _write(args.out, results)
    print(f"wrote {args.out}", flush=True)
    return results


if __name__ == "__main__":
    main()
