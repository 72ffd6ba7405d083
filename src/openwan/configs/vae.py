"""The Wan 3D causal VAE's config (2.1 and 2.2), the released latent statistics and the VAE presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from openwan.configio import check
from openwan.configs.fields import _count, _finite, _finite_number, _from_dict, _to_dict

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
    # Not architecture: the range (low, high) of flow-matching noise levels, in the normalised latent space, that the
    # decoder was fine-tuned to finish (openwan train-vae --decode-noise); None: trained on clean latents only. The
    # pipeline's decode_sigma warns when it hands the decoder a latent noisier than ``high``.
    decode_noise: tuple[float, float] | None = None

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
        if self.decode_noise is not None:
            object.__setattr__(self, "decode_noise", tuple(self.decode_noise))
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
        if self.decode_noise is not None:
            low_high = len(self.decode_noise) == 2 and all(_finite_number(v) for v in self.decode_noise)
            check(low_high and 0 <= self.decode_noise[0] <= self.decode_noise[1] <= 1 and self.decode_noise[1] > 0,
                  "decode_noise", "null or two noise levels [low, high] with 0 <= low <= high <= 1 and high > 0",
                  self.decode_noise)
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
        for name, plain in (("patch_size", 1), ("residual", False), ("decode_noise", None)):  # likewise for later ones
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
