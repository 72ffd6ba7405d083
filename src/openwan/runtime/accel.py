"""``apply_accelerations``: 8-bit weights, an attention backend and regional compile applied to a loaded pipeline.

Every request is checked first (mode names, packages, device and dtype, models already quantized or wrapped by
LoRA or FSDP); only when all pass is anything changed. Order of application: quantize, then compile (the compiled
graph sees the quantized weights), then the attention backend (process-wide, like ``set_attention_backend``).
"""

from __future__ import annotations

import torch
from torch import nn

from openwan.models.layers import ATTENTION_BACKENDS, attention_backend_problem, set_attention_backend
from openwan.runtime.compile import check_compile, compile_blocks, is_compiled
from openwan.runtime.quantize import check_mode, check_runs, quantize_model, weight_bytes


def _models(pipe, names: tuple[str, ...]) -> dict[str, nn.Module]:
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def _refuse_quantize(name: str, model: nn.Module) -> None:
    for module_name, _ in model.named_modules():
        if "lora_A" in module_name.split("."):
            raise ValueError(f"the {name} carries unfused LoRA adapters; fuse them first "
                             "(openwan.runtime.lora.fuse_lora, or generate with the LoRA fused) and then quantize.")
    for param_name, p in model.named_parameters():
        if type(p) not in (torch.Tensor, nn.Parameter):
            kind = type(p).__name__
            if kind == "DTensor":
                raise ValueError(f"the {name} is sharded by FSDP ({param_name}); 8-bit weights run on one "
                                 "process — drop --dit-fsdp/--t5-fsdp or the quantization.")
            raise ValueError(f"the {name} already holds {kind} weights ({param_name}); quantize a model once.")


def _half_cuda_backend(name: str, pipe) -> None:
    device, dtype = torch.device(getattr(pipe, "device", "cpu")), getattr(pipe, "dtype", torch.float32)
    if ATTENTION_BACKENDS[name].cuda and (device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16)):
        raise ValueError(f"the {name} attention backend runs bfloat16/float16 on a CUDA device, but this pipeline "
                         f"runs {dtype} on {device.type}; use --attention sdpa there.")


def check_request(*, quantize: str | None = None, attention: str | None = None, compile: bool = False,
                  compile_mode: str | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, stream_blocks: bool = False) -> None:
    """The checks that need no model, for a pipeline that will run in ``dtype`` on ``device``: mode names, packages
    (torchao, flash-attn, sageattention, a C++ compiler for CPU compile), the device and dtype they run on, and
    block streaming (which neither 8-bit weights nor compiled blocks go through). ValueError, one sentence."""
    device = torch.device(device)
    if stream_blocks and (quantize is not None or compile):
        raise ValueError("block streaming keeps its own host copies of the DiT's blocks and swaps them in by hooks, "
                         "which 8-bit weights and compiled blocks do not go through; drop --stream-blocks "
                         "(--offload-model moves whole models and combines with both).")
    if quantize is not None:
        check_runs(quantize, device, dtype)
    if attention is not None:
        problem = attention_backend_problem(attention)
        if problem:
            raise ValueError(problem)
        if ATTENTION_BACKENDS[attention].cuda and (device.type != "cuda"
                                                   or dtype not in (torch.bfloat16, torch.float16)):
            raise ValueError(f"the {attention} attention backend runs bfloat16/float16 on a CUDA device, but this "
                             f"pipeline runs {dtype} on {device.type}; use --attention sdpa there.")
    if compile:
        check_compile(device, compile_mode)


def apply_accelerations(pipe, *, quantize: str | None = None, attention: str | None = None, compile: bool = False,
                        compile_mode: str | None = None, text_encoder: bool = True) -> dict:
    """Apply the requested accelerations to ``pipe`` (a WanPipeline) in place and report them.

    ``quantize``: None, "int8" or "fp8" — weight-only 8-bit linears in the DiT(s) and, with ``text_encoder``, the
    umT5 encoder (:mod:`openwan.runtime.quantize` says which layers). ``attention``: a name of
    ``ATTENTION_BACKENDS`` set for the whole process (None leaves the current one). ``compile``: each DiT block
    compiled (:func:`openwan.runtime.compile.compile_blocks`, ``compile_mode`` as torch.compile's ``mode``).

    Returns ``{"quantize": {model: QuantReport.as_dict()}, "attention": name, "compile": [models],
    "weight_bytes": {model: {"before": bytes, "after": bytes}}}``. Bad requests raise ValueError before any change.
    """
    dits = _models(pipe, ("dit", "dit_low"))
    if not dits:
        raise ValueError("apply_accelerations takes a WanPipeline with a DiT loaded (pipe.dit).")
    device, dtype = torch.device(getattr(pipe, "device", "cpu")), getattr(pipe, "dtype", torch.float32)
    targets = dict(dits)
    streamed = [name for name, m in dits.items() if getattr(m, "_openwan_block_streamer", None) is not None]
    if streamed and (quantize is not None or compile):
        raise ValueError("block streaming keeps its own host copies of the DiT's blocks and swaps them in by hooks, "
                         "which 8-bit weights and compiled blocks do not go through; drop --stream-blocks "
                         "(--offload-model moves whole models and combines with both).")
    if quantize is not None:
        check_mode(quantize)
        if text_encoder:
            targets.update(_models(pipe, ("text_encoder",)))
        for name, model in targets.items():
            _refuse_quantize(name, model)
        check_runs(quantize, device, dtype)  # torchao present, and its kernels run on this device and dtype
        text = targets.get("text_encoder")
        text_device = torch.device(getattr(pipe, "text_device", device))
        if text is not None and text_device != device:  # --t5-cpu: the encoder runs on the CPU in its own dtype
            check_runs(quantize, text_device, next(text.parameters()).dtype)
    if attention is not None:
        problem = attention_backend_problem(attention)
        if problem:
            raise ValueError(problem)
        _half_cuda_backend(attention, pipe)
    if compile:
        check_compile(device, compile_mode)
        if any(is_compiled(m) for m in dits.values()):
            raise ValueError("the DiT's blocks are compiled already; pass compile=False.")

    before = {name: weight_bytes(m) for name, m in {**dits, **_models(pipe, ("text_encoder",))}.items()}
    report: dict = {"quantize": {}, "attention": None, "compile": [], "weight_bytes": {}}
    if quantize is not None:
        for name, model in targets.items():
            report["quantize"][name] = quantize_model(model, quantize).as_dict()
    if compile:
        for name, model in dits.items():
            compile_blocks(model, mode=compile_mode)
            report["compile"].append(name)
    if attention is not None:
        set_attention_backend(attention)
        report["attention"] = attention
    for name, model in {**dits, **_models(pipe, ("text_encoder",))}.items():
        report["weight_bytes"][name] = {"before": before[name], "after": weight_bytes(model)}
    return report


def describe(report: dict) -> str:
    """One line per applied acceleration, for the CLI's output (sizes in MiB)."""
    lines = []
    for name, q in report["quantize"].items():
        lines.append(f"{name}: {q['layers']} linears {q['mode']}, weights {q['bytes_before'] / 2**20:.1f} -> "
                     f"{q['bytes_after'] / 2**20:.1f} MiB")
    if report["compile"]:
        lines.append(f"compiled blocks: {', '.join(report['compile'])}")
    if report["attention"]:
        lines.append(f"attention backend: {report['attention']}")
    return "\n".join(lines)


__all__ = ["apply_accelerations", "check_request", "describe"]
