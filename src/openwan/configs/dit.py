"""The Wan diffusion transformer's config and presets, and VACE's (the DiT plus its context blocks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from openwan.configio import check
from openwan.configs.fields import MAX_LAYERS, MAX_WIDTH, _count, _finite, _from_dict, _to_dict

# --------------------------------------------------------------------------------------------- DiT


@dataclass(frozen=True)
class DiTConfig:
    """The Wan diffusion transformer. Field names are those of the release's config.json.

    ``image_tokens`` is not in the release config: Wan2.1 i2v/flf2v take CLIP image tokens (257 / 2×257)
    through ``img_emb``, Wan2.2's i2v experts take none although their config.json is identical. The
    loaders set it from the checkpoint's tensors; ``from_dict`` derives a default from ``model_type``.
    """

    model_type: str = "t2v"  # t2v | i2v | flf2v | ti2v
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    image_tokens: int = -1  # -1: derive from model_type (i2v 257, flf2v 514, else 0)
    image_dim: int = 1280  # CLIP ViT-H/14 width

    MODEL_TYPES: ClassVar[tuple[str, ...]] = ("t2v", "i2v", "flf2v", "ti2v")

    def __post_init__(self) -> None:
        check(self.model_type in self.MODEL_TYPES, "model_type", "one of: " + ", ".join(self.MODEL_TYPES),
              self.model_type)
        self._check_ranges()
        check(self.dim % self.num_heads == 0, "dim", f"a multiple of num_heads ({self.num_heads})", self.dim)
        check(self.head_dim % 2 == 0 and self.head_dim >= 6, "num_heads",
              f"a divisor of dim ({self.dim}) leaving an even head_dim >= 6 for 3D RoPE", self.num_heads)
        if self.image_tokens == -1:
            default = {"i2v": 257, "flf2v": 514}.get(self.model_type, 0)
            object.__setattr__(self, "image_tokens", default)
        if self.image_tokens not in (0, 257, 514):
            raise ValueError(f"image_tokens must be 0, 257 (i2v) or 514 (flf2v); got {self.image_tokens}.")
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "window_size", tuple(self.window_size))

    def _check_ranges(self) -> None:
        for name in ("in_dim", "out_dim", "dim", "ffn_dim", "text_dim", "image_dim"):
            _count(name, getattr(self, name))
        _count("freq_dim", self.freq_dim, 2)
        check(self.freq_dim % 2 == 0, "freq_dim", "an even integer (sines and cosines)", self.freq_dim)
        _count("num_heads", self.num_heads, 1, max(self.dim, 1) if isinstance(self.dim, int) else MAX_WIDTH)
        _count("num_layers", self.num_layers, 1, MAX_LAYERS)
        _count("text_len", self.text_len, 1, 1 << 20)
        _count("image_tokens", self.image_tokens, -1, 514)
        check(len(tuple(self.patch_size)) == 3, "patch_size", "a list of 3 integers (t, h, w)", self.patch_size)
        for i, p in enumerate(self.patch_size):
            _count(f"patch_size.{i}", p, 1, 64)
        check(len(tuple(self.window_size)) == 2, "window_size", "a list of 2 integers", self.window_size)
        for i, w in enumerate(self.window_size):
            _count(f"window_size.{i}", w, -1, 1 << 20)
            check(w != 0, f"window_size.{i}", "-1 (global attention) or a positive width", w)
        _finite("eps", self.eps, positive=True)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @staticmethod
    def kind_of(in_dim: int, out_dim: int, image_tokens: int) -> str:
        """The model_type that a checkpoint's channel counts and CLIP token count imply."""
        if in_dim == out_dim == 48:
            return "ti2v"  # Wan2.2 TI2V: the 48-channel VAE, first frame given clean in the latent
        if image_tokens == 514:
            return "flf2v"
        return "i2v" if in_dim > out_dim else "t2v"

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Channels of head_dim given to the (t, h, w) axes: 44/42/42 for head_dim 128."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    @property
    def has_image_input(self) -> bool:
        return self.image_tokens > 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Release-style config.json contents (``image_tokens`` kept so a round trip is exact)."""
        return {"_class_name": "WanModel", **_to_dict(self)}

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)


_WAN_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

DIT_PRESETS: dict[str, DiTConfig] = {
    "t2v-1.3B": DiTConfig(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "t2v-14B": DiTConfig(model_type="t2v", **_WAN_14B),
    "i2v-14B-480p": DiTConfig(model_type="i2v", in_dim=36, **_WAN_14B),
    "i2v-14B-720p": DiTConfig(model_type="i2v", in_dim=36, **_WAN_14B),
    "flf2v-14B": DiTConfig(model_type="flf2v", in_dim=36, **_WAN_14B),
    "t2v-A14B-high": DiTConfig(model_type="t2v", **_WAN_14B),
    "t2v-A14B-low": DiTConfig(model_type="t2v", **_WAN_14B),
    "i2v-A14B-high": DiTConfig(model_type="i2v", in_dim=36, image_tokens=0, **_WAN_14B),
    "i2v-A14B-low": DiTConfig(model_type="i2v", in_dim=36, image_tokens=0, **_WAN_14B),
    "ti2v-5B": DiTConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24,
                         num_layers=30),
    # Tiny presets: same code paths, sizes that run in milliseconds on a CPU.
    "tiny": DiTConfig(model_type="t2v", dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=2,
                      num_layers=2, text_len=32),
    "tiny-i2v": DiTConfig(model_type="i2v", in_dim=36, dim=64, ffn_dim=128, freq_dim=32, text_dim=32,
                          num_heads=2, num_layers=2, text_len=32, image_dim=32),
    "tiny-flf2v": DiTConfig(model_type="flf2v", in_dim=36, dim=64, ffn_dim=128, freq_dim=32, text_dim=32,
                            num_heads=2, num_layers=2, text_len=32, image_dim=32),
    # The demo models: 64x64, 17-frame shapes videos from the synthetic dataset. Patch 1x1x1: a token is 8x8 pixels,
    # so a moving shape shifts about one token per latent frame (with 2x2 patches the shift is a fraction of a token
    # and the direction words are not learnt). 4 heads so that Ulysses sequence parallelism on 2 ranks can split them.
    "demo": DiTConfig(model_type="t2v", patch_size=(1, 1, 1), dim=192, ffn_dim=768, freq_dim=256, text_dim=64,
                      num_heads=4, num_layers=4, text_len=64),
    # The bundled demo model's (two experts of this preset, as Wan2.2 A14B): two thirds the width of `demo` (4 heads
    # of 32), about half the FLOPs per token, so that the whole recipe runs in 90 minutes on 2 cores
    # (docs/demo_model.md).
    "demo-small": DiTConfig(model_type="t2v", patch_size=(1, 1, 1), dim=128, ffn_dim=512, freq_dim=256, text_dim=64,
                            num_heads=4, num_layers=4, text_len=64),
    "tiny-ti2v": DiTConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=64, ffn_dim=128, freq_dim=32,
                           text_dim=32, num_heads=2, num_layers=2, text_len=32),
}

# -------------------------------------------------------------------------------------------- VACE


@dataclass(frozen=True)
class VaceConfig(DiTConfig):
    """Wan2.1 VACE: a text-to-video DiT plus VACE context blocks, one per entry of ``vace_layers``, whose
    "hints" are added (times a context scale) after those base blocks. Field names are those of the release's
    config.json (``model_type`` "vace")."""

    MODEL_TYPES: ClassVar[tuple[str, ...]] = ("vace",)
    model_type: str = "vace"
    vace_layers: tuple[int, ...] = ()  # (): every second block from 0, the reference's default
    vace_in_dim: int = 96  # 16 inactive + 16 reactive latent channels + 64 mask channels (8x8 pixels per latent)

    def __post_init__(self) -> None:
        super().__post_init__()
        layers = tuple(self.vace_layers) or tuple(range(0, self.num_layers, 2))
        ok = all(isinstance(i, int) and not isinstance(i, bool) for i in layers) and layers[0] == 0
        ok = ok and all(a < b for a, b in zip(layers, layers[1:])) and layers[-1] < self.num_layers
        check(ok, "vace_layers", f"increasing block indices starting at 0, each below num_layers ({self.num_layers})",
              self.vace_layers)
        object.__setattr__(self, "vace_layers", layers)
        _count("vace_in_dim", self.vace_in_dim)
        check(self.in_dim == self.out_dim and self.image_tokens == 0, "in_dim",
              f"out_dim ({self.out_dim}) with no image tokens: VACE extends a text-to-video DiT", self.in_dim)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaceConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Release-style config.json contents (the reference's class name, ``vace_layers`` spelled out)."""
        return {"_class_name": "VaceWanModel", **_to_dict(self)}


VACE_PRESETS: dict[str, VaceConfig] = {
    "vace-1.3B": VaceConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, vace_layers=tuple(range(0, 30, 2))),
    "vace-14B": VaceConfig(**_WAN_14B, vace_layers=tuple(range(0, 40, 5))),
    "tiny-vace": VaceConfig(dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=2, num_layers=4, text_len=32,
                            vace_layers=(0, 2)),
}
