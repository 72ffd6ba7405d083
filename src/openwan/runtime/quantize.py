"""8-bit weights for the DiT's and umT5's linear layers through torchao: weight-only int8 or fp8 (e4m3).

Both keep one scale per output channel (per row of the weight); activations and the matmul stay in the model's
dtype (the weight is dequantized on the fly, or fed to a fused kernel where torchao has one), so the saving is
weight memory and weight bandwidth. What is quantized (:func:`dit_filter`, :func:`umt5_filter`):

- DiT: every ``nn.Linear`` inside ``blocks`` (self/cross attention q, k, v, o, the image k/v of i2v, the FFN) —
  over 99% of a released DiT's linear weights.
- umT5: every ``nn.Linear`` inside the encoder's blocks (attention q, k, v, o and the gated FFN wi_0, wi_1, wo).

Left in their dtype: the patch embedding (a Conv3d), the text and time embedding MLPs and the time projection
(run in float32 on purpose, ``dit._run_fp32``), the head (its error lands directly in the velocity), the
image embedding, the modulation tables, norms, umT5's token embedding and relative position bias.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

QUANT_MODES = ("int8", "fp8")
INSTALL_HINT = "pip install openwan[accel]"

# Loggers that speak while torchao is imported or first quantizes (it imports submodules lazily): its optional CUDA
# extensions (absent from CPU wheels) and torch's pytree deprecation note about enums torchao registers. Neither
# changes what openwan runs.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_torchao_logs() -> Iterator[None]:
    """Hold back the log lines torchao and torch print while torchao imports or first quantizes."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torchao_quantization():
    """torchao.quantization (imported quietly), or a ValueError saying how to install it."""
    try:
        with quiet_torchao_logs():
            import torchao.quantization as tq
    except ImportError:
        raise ValueError(f"8-bit weights need the torchao package; install it with `{INSTALL_HINT}`.") from None
    return tq


def _config(mode: str):
    tq = torchao_quantization()
    with quiet_torchao_logs():
        if mode == "int8":
            return tq.Int8WeightOnlyConfig(granularity=tq.PerRow())
        return tq.Float8WeightOnlyConfig(weight_dtype=torch.float8_e4m3fn, granularity=tq.PerRow())


def _quantize(model: nn.Module, mode: str, filter_fn=None) -> None:
    with quiet_torchao_logs():
        torchao_quantization().quantize_(model, _config(mode), filter_fn=filter_fn)


def check_mode(mode: str) -> None:
    """A ValueError unless ``mode`` is one of ``QUANT_MODES``."""
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}.")


def check_runs(mode: str, device: torch.device | str, dtype: torch.dtype) -> None:
    """Quantize a small linear layer and run it on ``device`` in ``dtype``: a ValueError saying what is needed
    when this torch/torchao/device cannot (checked before any model is touched)."""
    check_mode(mode)
    torchao_quantization()  # the install hint before anything else
    device = torch.device(device)
    try:
        probe = nn.Sequential(nn.Linear(64, 64)).to(device=device, dtype=dtype)
        _quantize(probe, mode)
        with torch.no_grad():
            out = probe(torch.randn(2, 64, device=device, dtype=dtype))
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite output")
    except Exception as err:  # any failure of the probe means the mode cannot run here
        if mode == "fp8":
            need = ("a GPU of compute capability 8.9 or newer (L4, RTX 4090, H100) or a torch/torchao pair whose "
                    "CPU kernels take float8 — use int8 or no quantization")
        else:
            need = "float32, bfloat16 or float16 activations and a torch/torchao pair with int8 kernels for them"
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ValueError(f"{mode} weight-only linears do not run on {device.type} in {dtype} with this torch and "
                         f"torchao ({reason}); they need {need}.") from None


# ------------------------------------------------------------------------------------------------ filters


def dit_filter(module: nn.Module, name: str) -> bool:
    """True for the DiT linears that are quantized: those inside ``blocks``."""
    return isinstance(module, nn.Linear) and name.startswith("blocks.")


def umt5_filter(module: nn.Module, name: str) -> bool:
    """True for the umT5 linears that are quantized: those inside the encoder's blocks."""
    return isinstance(module, nn.Linear) and ".block." in f".{name}"


def default_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """The filter for a WanDiT or a transformers umT5 encoder; a ValueError for any other model."""
    if hasattr(model, "blocks") and hasattr(model, "head") and hasattr(model, "cfg"):
        return dit_filter
    if hasattr(getattr(model, "encoder", None), "block"):
        return umt5_filter
    raise ValueError(f"quantize_model takes a WanDiT or a umT5 encoder (or an explicit filter_fn); got "
                     f"{type(model).__name__}.")


# ------------------------------------------------------------------------------------------------ memory


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; for a torchao quantized tensor, the sum of its inner tensors (data, scales)."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(tensor_bytes(getattr(t, n)) for n in names)


def weight_bytes(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None) -> int:
    """Bytes of ``model``'s parameters and buffers (shared tensors counted once); with ``filter_fn``, only
    those of the modules it selects."""
    seen, total = set(), 0
    for name, module in model.named_modules():
        if filter_fn is not None and not filter_fn(module, name):
            continue
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
    return total


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_model` did: the mode, how many linears it quantized, the weight bytes of the whole
    model and of the quantized linears before and after, and the linears it left alone."""

    mode: str = "int8"
    layers: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    linear_bytes_before: int = 0
    linear_bytes_after: int = 0
    kept: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        """Plain numbers (bytes) for JSON reports."""
        return {"mode": self.mode, "layers": self.layers, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "linear_bytes_before": self.linear_bytes_before,
                "linear_bytes_after": self.linear_bytes_after, "kept": list(self.kept)}


def quantize_model(model: nn.Module, mode: str, *,
                   filter_fn: Callable[[nn.Module, str], bool] | None = None) -> QuantReport:
    """Replace the selected linears' weights of ``model`` (in place) by weight-only ``mode`` ("int8" or "fp8"
    e4m3) tensors with per-output-channel scales; returns a :class:`QuantReport` (bytes).

    ``filter_fn(module, name)`` picks the layers; None takes :func:`default_filter` (DiT blocks / umT5 blocks).
    Quantize where the weights will stay: a quantized model moves with ``.to(device)`` but not to another dtype.
    """
    check_mode(mode)
    filter_fn = filter_fn or default_filter(model)
    chosen = {name for name, m in model.named_modules() if filter_fn(m, name)}
    if not chosen:
        raise ValueError(f"no layer of this {type(model).__name__} matches the quantization filter; nothing to do.")
    already = [n for n, m in model.named_modules() if n in chosen and type(m.weight) not in (torch.Tensor,
                                                                                            nn.Parameter)]
    if already:
        raise ValueError(f"{already[0]} already holds quantized weights; quantize a model once.")
    selected = lambda m, n: n in chosen
    before, linear_before = weight_bytes(model), weight_bytes(model, selected)
    _quantize(model, mode, filter_fn=selected)
    kept = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in chosen)
    return QuantReport(mode, len(chosen), before, weight_bytes(model), linear_before, weight_bytes(model, selected),
                       kept)


__all__ = [
    "INSTALL_HINT",
    "QUANT_MODES",
    "QuantReport",
    "check_mode",
    "check_runs",
    "default_filter",
    "dit_filter",
    "quiet_torchao_logs",
    "quantize_model",
    "tensor_bytes",
    "torchao_quantization",
    "umt5_filter",
    "weight_bytes",
]
