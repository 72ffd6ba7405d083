"""LoRA at inference: read LoRA files of any common convention, apply them to a Wan DiT as peft adapters, fuse them.

:func:`load_lora` reads the files openwan writes (``openwan.train.lora.save_lora``: diffusers' key layout with the
alpha/rank scale in ``lora_B``, or the official/ComfyUI layout with ``.alpha`` entries), plus ``lora_down`` /
``lora_up`` naming, musubi-tuner's ``lora_unet_blocks_0_...`` keys, peft's ``.lora_A.<adapter>.weight`` keys, and
full-weight ``.diff`` / ``.diff_b`` entries (fused at once). Several files may be loaded together, each at its own
scale; :func:`fuse_lora` merges them into the weights and gives back plain modules.

peft (which imports transformers, seconds of start-up) is imported when a LoRA is first used.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from openwan.checkpoints import keymaps
from openwan.checkpoints.io import read_state_dict

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", "lora_unet_")
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_-]+)?"
                       r"\.(?P<param>weight|bias)$")
_EXTRA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>alpha|diff|diff_b)$")


def peft_module():
    """The peft package, or a ValueError that says how to install it."""
    try:
        import peft
    except ImportError:
        raise ValueError("LoRA needs the peft package; install it with `pip install peft`.") from None
    return peft


def lora_layers(dit: nn.Module) -> dict[str, nn.Module]:
    """The peft-wrapped linears by their official module name (``blocks.0.self_attn.q``)."""
    layer_type = peft_module().tuners.lora.LoraLayer
    return {name: m for name, m in dit.named_modules() if isinstance(m, layer_type)}


@dataclass
class _ModuleDelta:
    a: torch.Tensor | None = None  # [r, in]
    b: torch.Tensor | None = None  # [out, r]
    alpha: float | None = None
    b_bias: torch.Tensor | None = None  # [out]
    diff: torch.Tensor | None = None  # full weight delta
    diff_b: torch.Tensor | None = None  # bias delta


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``path[:scale]`` (the CLI's ``--lora``) -> (path, scale)."""
    path, sep, scale = spec.rpartition(":")
    if sep and path and not re.match(r"^[A-Za-z]$", path):  # keep Windows drive letters ("C:\\...") intact
        try:
            return path, float(scale)
        except ValueError:
            pass
    return spec, 1.0


def read_lora(path: str | Path, dit: nn.Module) -> dict[str, _ModuleDelta]:
    """A LoRA file in any supported convention, as deltas per official module name of ``dit``."""
    state = read_state_dict(path)
    return _normalise(state, dit, str(path))


def _normalise(state: Mapping[str, torch.Tensor], dit: nn.Module, source: str) -> dict[str, _ModuleDelta]:
    modules = _module_names(dit)
    underscored = {n.replace(".", "_"): n for n in modules}
    deltas: dict[str, _ModuleDelta] = {}
    unknown = []
    for key, value in state.items():
        stripped = _strip_prefix(key)
        match = _LORA_KEY.match(stripped) or _EXTRA_KEY.match(stripped)
        module = _resolve_module(match.group("module"), modules, underscored) if match else None
        if module is None:
            unknown.append(key)
            continue
        d = deltas.setdefault(module, _ModuleDelta())
        kind = match.group("kind")
        param = match.groupdict().get("param")
        if kind in ("lora_A", "lora_down"):
            d.a = value
        elif kind in ("lora_B", "lora_up"):
            if param == "bias":
                d.b_bias = value
            else:
                d.b = value
        elif kind == "alpha":
            d.alpha = float(value)
        else:
            setattr(d, kind, value)
    if unknown:
        raise ValueError(
            f"{source} has {len(unknown)} keys that are not a LoRA of this Wan DiT (e.g. {', '.join(unknown[:3])}); "
            "give a Wan LoRA in diffusers, official/ComfyUI or musubi-tuner format that matches this model."
        )
    broken = [m for m, d in deltas.items() if (d.a is None) != (d.b is None)]
    if broken:
        raise ValueError(f"{source} has lora_A without lora_B (or the reverse) for {', '.join(broken[:3])}; "
                         "the file is incomplete.")
    return deltas


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _module_names(dit: nn.Module) -> set[str]:
    """Official module names of ``dit``, ignoring the internals of peft wrappers."""
    names = set()
    for name, _ in dit.named_modules():
        if any(part in name.split(".") for part in ("base_layer", "lora_A", "lora_B", "lora_dropout")):
            continue
        names.add(name)
    return names


def _resolve_module(name: str, modules: set[str], underscored: dict[str, str]) -> str | None:
    if name in modules:
        return name
    try:
        official = next(iter(keymaps.dit_diffusers_to_official({name: None})))
    except ValueError:
        official = None
    if official in modules:
        return official
    return underscored.get(name)  # musubi-tuner: blocks_0_self_attn_q


def load_lora(dit: nn.Module, loras: str | Path | Iterable[str | Path | tuple[str | Path, float]],
              scale: float = 1.0) -> list[str]:
    """Load one or several LoRA files into ``dit`` as active peft adapters; returns the adapter names.

    ``loras``: a path, or a list of paths / (path, scale) pairs (``scale`` is the default scale). Low-rank
    pairs become adapters that can be scaled or fused later; ``.diff`` / ``.diff_b`` entries (full-weight
    deltas some releases ship) are added to the weights at once. The model is left frozen.
    """
    specs = [loras] if isinstance(loras, (str, Path)) else list(loras)
    if not specs:
        raise ValueError("no LoRA given; pass a path or a list of paths.")
    names = []
    existing = {a for layer in lora_layers(dit).values() for a in layer.lora_A} if _has_peft_layers(dit) else set()
    for spec in specs:
        path, weight = (spec if isinstance(spec, tuple) else (spec, scale))
        deltas = read_lora(path, dit)
        name = _adapter_name(Path(path).stem, existing | set(names))
        _fuse_diffs(dit, deltas, weight)
        pairs = {m: d for m, d in deltas.items() if d.a is not None}
        if pairs:
            _inject(dit, pairs, name, weight)
            names.append(name)
    _activate(dit, names + sorted(existing))
    dit.requires_grad_(False)
    return names


def _has_peft_layers(dit: nn.Module) -> bool:
    try:
        return bool(lora_layers(dit))
    except ValueError:  # no peft installed: no adapters either
        return False


def _adapter_name(stem: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "lora"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


@torch.no_grad()
def _fuse_diffs(dit: nn.Module, deltas: Mapping[str, _ModuleDelta], weight: float) -> None:
    modules = dict(dit.named_modules())
    for name, d in deltas.items():
        module = modules[name]
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if d.diff is not None:
            base.weight.add_(weight * d.diff.to(base.weight))
        if d.diff_b is not None:
            base.bias.add_(weight * d.diff_b.to(base.bias))


@torch.no_grad()
def _inject(dit: nn.Module, pairs: Mapping[str, _ModuleDelta], name: str, weight: float) -> None:
    peft = peft_module()
    ranks = {m: d.a.shape[0] for m, d in pairs.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): r for m, r in ranks.items() if r != rank}
    # alpha = rank everywhere (scale 1): each file's alpha/rank is multiplied into lora_B below.
    config = peft.LoraConfig(r=rank, lora_alpha=rank, rank_pattern=pattern, alpha_pattern=dict(pattern),
                             target_modules=sorted(pairs), lora_dropout=0.0,
                             lora_bias=any(d.b_bias is not None for d in pairs.values()))
    with warnings.catch_warnings():  # several adapters in one model is what is wanted here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        peft.inject_adapter_in_model(config, dit, adapter_name=name)
    layers = lora_layers(dit)
    for module, d in pairs.items():
        layer = layers[module]
        r = d.a.shape[0]
        factor = 1.0 if d.alpha is None else d.alpha / r
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        if tuple(a.shape) != tuple(d.a.shape) or tuple(b.shape) != tuple(d.b.shape):
            raise ValueError(f"the LoRA for {module} has shapes {tuple(d.a.shape)}/{tuple(d.b.shape)} that do not fit "
                             f"the layer {tuple(b.shape[:1])}x{tuple(a.shape[1:])}; it belongs to another model size.")
        a.copy_(d.a)
        b.copy_(d.b.to(torch.float32) * factor)
        if d.b_bias is not None:
            layer.lora_B[name].bias.copy_(d.b_bias)
        layer.set_scale(name, weight)


def _activate(dit: nn.Module, names: list[str]) -> None:
    for layer in lora_layers(dit).values():
        present = [n for n in names if n in layer.lora_A]
        if present:
            layer.set_adapter(present, inference_mode=True)


def set_lora_scale(dit: nn.Module, adapter_name: str, scale: float) -> None:
    for layer in lora_layers(dit).values():
        layer.set_scale(adapter_name, scale)


@torch.no_grad()
def fuse_lora(dit: nn.Module) -> nn.Module:
    """Merge every active adapter into the base weights and remove the peft wrappers (plain module names again)."""
    modules = dict(dit.named_modules())
    for name, layer in lora_layers(dit).items():
        layer.merge(adapter_names=list(layer.active_adapters))
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else dit
        setattr(parent, child, layer.get_base_layer())
    return dit


__all__ = [
    "fuse_lora",
    "load_lora",
    "lora_layers",
    "parse_lora_spec",
    "peft_module",
    "read_lora",
    "set_lora_scale",
]
