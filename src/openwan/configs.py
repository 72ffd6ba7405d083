"""Typed, frozen configs for every Wan network, and the preset registry.

Each config mirrors the keys of the release's own ``config.json`` (DiT) or the constructor arguments of
the reference (VAE, umT5, CLIP), so ``from_dict`` reads a release file as is. Every model kind has a
``tiny`` preset that runs in milliseconds on a CPU; tests and the bundled demo model use it.

This module imports only :mod:`openwan.configio` (the dict -> dataclass parser).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from openwan.configio import check, parse

C = TypeVar("C")

# Keys a release config.json carries that describe the file, not the network.
_METADATA_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "architectures"}


def _from_dict(cls: type[C], data: dict[str, Any], aliases: dict[str, str] | None = None) -> C:
    """Build ``cls`` from a plain dict with :func:`openwan.configio.parse`: each value checked against its field's
    type; an unknown key is an error that lists the allowed ones; file metadata keys are skipped."""
    return parse(cls, data, aliases=aliases, ignore=tuple(_METADATA_KEYS))


# Generous upper bounds (the largest release is 40 layers of width 5120): a value past them is a typo, and refusing
# it here saves building a network that could never be loaded.
MAX_LAYERS = 1000
MAX_WIDTH = 1 << 17


def _count(name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> None:
    """``value`` is an integer in [low, high] (bool is not a count)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    check(ok, name, f"an integer from {low} to {high}", value)


def _finite(name: str, value: Any, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 or not positive)
    check(ok, name, "a finite number above 0" if positive else "a finite number", value)


def _to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


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

# --------------------------------------------------------------------------------------------- VAE

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# The Wan2.2 VAE's 48 latent channels (Wan2.2_VAE.pth; the same values as diffusers' Wan2.2 vae/config.json).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


@dataclass(frozen=True)
class VAEConfig:
    """The Wan 3D causal VAE (the release files ship no config; these are the reference's constructor arguments).

    The defaults are the Wan2.1 VAE; ``patch_size=2, residual=True`` (with ``dim=160, decoder_dim=256, z_dim=48``)
    is the Wan2.2 VAE, preset ``wan2.2``.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    # Base width of the decoder when it differs from the encoder's ``dim`` (diffusers: decoder_base_dim; Wan2.2's
    # VAE decodes wider than it encodes). None: the same as ``dim``, as in Wan2.1.
    decoder_dim: int | None = None
    # Wan2.2: frames are cut into patch_size x patch_size pixel patches (3 -> 3·p² channels) before the encoder and
    # put back after the decoder, so the spatial compression is patch_size · 2^(levels - 1) (diffusers: patch_size).
    patch_size: int = 1
    # Wan2.2: every down/up level adds a parameter-free shortcut (channel-averaged space-to-depth going down,
    # channel-duplicated depth-to-space going up) around its blocks (diffusers: is_residual).
    residual: bool = False

    def __post_init__(self) -> None:
        if self.decoder_dim is not None and (isinstance(self.decoder_dim, bool) or not isinstance(self.decoder_dim, int)
                                             or self.decoder_dim < 1):
            raise ValueError(f"decoder_dim is a positive channel count (or None for dim); got {self.decoder_dim!r}.")
        for name in ("dim_mult", "attn_scales", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one entry per downsampling level ({len(self.dim_mult) - 1}); "
                f"got {len(self.temporal_downsample)}."
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim = {self.z_dim} entries each.")
        self._check_ranges()

    def _check_ranges(self) -> None:
        _count("dim", self.dim)
        _count("z_dim", self.z_dim)
        _count("num_res_blocks", self.num_res_blocks, 1, 64)
        check(1 <= len(self.dim_mult) <= 8, "dim_mult", "a list of 1 to 8 width multipliers", self.dim_mult)
        for i, m in enumerate(self.dim_mult):
            _count(f"dim_mult.{i}", m, 1, 64)
        check(0 <= self.dropout < 1 if isinstance(self.dropout, (int, float)) else False, "dropout",
              "a number in [0, 1)", self.dropout)
        # The latents are normalised by (z - mean) / std: a zero or non-finite std turns every video into NaN.
        for i, v in enumerate(self.latents_mean):
            _finite(f"latents_mean.{i}", v)
        for i, v in enumerate(self.latents_std):
            _finite(f"latents_std.{i}", v, positive=True)
        _count("patch_size", self.patch_size, 1, 16)
        check(isinstance(self.residual, bool), "residual", "true or false", self.residual)
        if self.residual:
            check(not self.attn_scales, "attn_scales", "empty for a residual (Wan2.2) VAE, whose levels have no "
                  "attention", self.attn_scales)
            self._check_shortcut_widths()

    def _check_shortcut_widths(self) -> None:
        """The residual shortcuts regroup channels: each level's widths must divide as its pixel regrouping needs."""
        enc = [self.dim * m for m in (1, *self.dim_mult)]
        dec = [self.decoder_width * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]
        last = len(self.dim_mult) - 1
        for i in range(last + 1):  # the last encoder level keeps its size: its shortcut only averages channels
            down = 1 if i == last else 4 * (2 if self.temporal_downsample[i] else 1)
            check(enc[i] * down % enc[i + 1] == 0, "dim_mult",
                  f"widths whose encoder level {i} regroups {enc[i]}x{down} channels into {enc[i + 1]}", self.dim_mult)
        for i in range(last):  # the last decoder level has no shortcut
            up = 4 * (2 if self.temporal_downsample[::-1][i] else 1)
            check(dec[i + 1] * up % dec[i] == 0, "dim_mult",
                  f"widths whose decoder level {i} regroups {dec[i + 1]}x{up} channels from {dec[i]}", self.dim_mult)

    @property
    def decoder_width(self) -> int:
        """The decoder's base width: ``decoder_dim`` when set, else ``dim``."""
        return self.dim if self.decoder_dim is None else self.decoder_dim

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along H and W (8 for Wan2.1, 16 for Wan2.2)."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        # "temperal_downsample" is the reference's spelling; "base_dim" and "decoder_base_dim" those of diffusers.
        return _from_dict(cls, data, aliases={"temperal_downsample": "temporal_downsample", "base_dim": "dim",
                                              "decoder_base_dim": "decoder_dim", "is_residual": "residual"})

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self)
        if out["decoder_dim"] is None:  # the Wan2.1 layout: configs written before the field existed read the same
            del out["decoder_dim"]
        for name, plain in (("patch_size", 1), ("residual", False)):  # likewise for the Wan2.2 fields
            if out[name] == plain:
                del out[name]
        return out

    def replace(self, **changes: Any) -> VAEConfig:
        return dataclasses.replace(self, **changes)


def default_latent_stats(z_dim: int) -> dict[str, tuple[float, ...]]:
    """``latents_mean`` / ``latents_std`` for a VAE whose file carries none: the published Wan2.1 values for 16
    channels, the Wan2.2 values for 48, identity (0, 1) for any other size."""
    if z_dim == len(WAN21_LATENTS_MEAN):
        return {"latents_mean": WAN21_LATENTS_MEAN, "latents_std": WAN21_LATENTS_STD}
    if z_dim == len(WAN22_LATENTS_MEAN):
        return {"latents_mean": WAN22_LATENTS_MEAN, "latents_std": WAN22_LATENTS_STD}
    return {"latents_mean": (0.0,) * z_dim, "latents_std": (1.0,) * z_dim}


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    "tiny": VAEConfig(dim=8, z_dim=16),
    "demo": VAEConfig(dim=16, z_dim=16),
    "wan2.2": VAEConfig(dim=160, decoder_dim=256, z_dim=48, patch_size=2, residual=True,
                        latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD),
    "tiny-22": VAEConfig(dim=8, decoder_dim=16, z_dim=48, patch_size=2, residual=True,
                         latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD),
}

# ------------------------------------------------------------------------------------- text encoder


@dataclass(frozen=True)
class TextEncoderConfig:
    """umT5 encoder. ``to_hf`` gives the transformers ``UMT5Config`` that computes the same maths."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_hf(self):  # -> transformers.UMT5Config
        from transformers import UMT5Config

        return UMT5Config(
            vocab_size=self.vocab_size,
            d_model=self.dim,
            d_kv=self.dim_attn // self.num_heads,
            d_ff=self.ffn_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance,
            layer_norm_epsilon=self.eps,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
        )


TEXT_ENCODER_PRESETS: dict[str, TextEncoderConfig] = {
    "umt5-xxl": TextEncoderConfig(),
    # Byte-level vocabulary (ByT5's 384 ids) so a tokenizer that ships with transformers serves it.
    "tiny": TextEncoderConfig(vocab_size=384, dim=32, dim_attn=32, ffn_dim=64, num_heads=4, num_layers=2,
                              text_len=32),
    "demo": TextEncoderConfig(vocab_size=384, dim=64, dim_attn=64, ffn_dim=128, num_heads=4, num_layers=2,
                              text_len=64),
}

# ------------------------------------------------------------------------------------ image encoder


@dataclass(frozen=True)
class ImageEncoderConfig:
    """The vision tower of open-clip XLM-RoBERTa-large ViT-H/14, as used by Wan i2v/flf2v.

    Only ``num_layers - 1`` blocks are run (features after the penultimate block, no final norm).
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    eps: float = 1e-5
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageEncoderConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_hf(self):  # -> transformers.CLIPVisionConfig (only the blocks that are used)
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.width,
            intermediate_size=int(self.width * self.mlp_ratio),
            num_hidden_layers=self.num_layers - 1,
            num_attention_heads=self.num_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.eps,
            num_channels=3,
        )


IMAGE_ENCODER_PRESETS: dict[str, ImageEncoderConfig] = {
    "clip-vit-h-14": ImageEncoderConfig(),
    # 224 px / 14 = 257 tokens like the release, so it feeds the tiny i2v DiT (image_dim 32).
    "tiny": ImageEncoderConfig(image_size=224, patch_size=14, width=32, num_layers=3, num_heads=2),
}


# ------------------------------------------------------------------------------------------ lookup

_REGISTRIES: dict[str, dict[str, Any]] = {
    "dit": DIT_PRESETS,
    "vace": VACE_PRESETS,
    "vae": VAE_PRESETS,
    "text_encoder": TEXT_ENCODER_PRESETS,
    "image_encoder": IMAGE_ENCODER_PRESETS,
}


class CheckpointError(ValueError):
    """A weights file or folder cannot be used; the message names the file and the fix.

    It lives here, beside the configs both sides share, because two layers raise it: ``openwan.checkpoints``
    (a file absent, unreadable, in no known layout) and ``openwan.models`` (tensors that do not fit the network
    built from the file's config), and neither imports the other.
    """


def get_preset(kind: str, name: str) -> Any:
    """Look up a preset, e.g. ``get_preset("dit", "t2v-1.3B")``; an unknown name lists the known ones."""
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown model kind {kind!r}; use one of: {', '.join(_REGISTRIES)}.")
    registry = _REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} preset {name!r}; use one of: {', '.join(registry)}.")
    return registry[name]


__all__ = [
    "CheckpointError",
    "DiTConfig",
    "VAEConfig",
    "TextEncoderConfig",
    "ImageEncoderConfig",
    "DIT_PRESETS",
    "VaceConfig",
    "VACE_PRESETS",
    "VAE_PRESETS",
    "TEXT_ENCODER_PRESETS",
    "IMAGE_ENCODER_PRESETS",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "WAN22_LATENTS_MEAN",
    "WAN22_LATENTS_STD",
    "default_latent_stats",
    "get_preset",
]
