"""The Wan2.1 3D causal VAE: video [B, 3, 1+4n, H, W] in [-1, 1] <-> latents [B, 16, 1+n, H/8, W/8].

Time runs causally in chunks — encoding takes frame 0 alone, then 4 frames at a time; decoding takes one
latent frame at a time — and every temporal layer keeps the frames it needs from the previous chunk in a
:class:`FeatureCache` that is created per pass and handed down explicitly. A video of any length therefore
needs memory for one chunk only. Spatial tiling (:class:`VAETiling`) bounds memory in H and W the same way,
and the two compose: ``decode_stream(z, tile=...)`` keeps one cache per tile and yields blended chunks.

Module names reproduce the keys of the released ``Wan2.1_VAE.pth``, so it loads without key conversion.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from openwan.configs import WAN21_LATENTS_MEAN, VAEConfig
from openwan.models.loading import finish_loading, load_strict, read_weights

# ------------------------------------------------------------------------------------ feature cache


class FeatureCache:
    """What each temporal layer kept of the previous chunk, for one encode or decode pass (one per tile).

    Layers take slots in the order they run; every chunk visits the same layers in the same order, so the slot
    index is reset at the start of each chunk and nothing outlives the pass that created the cache.
    """

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self.index = 0
        self.chunk = -1

    def next_chunk(self) -> None:
        assert self.chunk < 0 or self.index == len(self.slots), "a chunk skipped temporal layers"
        self.chunk += 1
        self.index = 0

    @property
    def first(self) -> bool:
        return self.chunk == 0

    def read(self) -> torch.Tensor | None:
        """The current layer's frames from the previous chunk (None in the first chunk)."""
        return self.slots[self.index] if self.index < len(self.slots) else None

    def write(self, frames: torch.Tensor | None) -> None:
        """Store the current layer's frames for the next chunk and move on to the next layer."""
        if self.index == len(self.slots):
            assert self.first, "a later chunk visited more temporal layers than the first"
            self.slots.append(frames)
        else:
            self.slots[self.index] = frames
        self.index += 1


def _last_frames(x: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` frames of ``x`` [B, C, T, H, W] for the next chunk.

    A view would keep the whole chunk alive until the next one: copy unless the chunk is barely longer.
    """
    tail = x[:, :, -n:]
    return tail.clone() if x.shape[2] > n + 1 else tail


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [(B T), C, H, W], for layers that work on each frame alone."""
    return x.transpose(1, 2).flatten(0, 1)


def _frames_back(y: torch.Tensor, batch: int) -> torch.Tensor:
    """[(B T), C, H, W] -> [B, C, T, H, W]."""
    return y.unflatten(0, (batch, -1)).transpose(1, 2)


# ------------------------------------------------------------------------------------------- layers


CPU_CHANNELS_LAST = True  # benchmarks/bench_models.py turns it off to time the ordinary layout beside it
CHANNELS_LAST_MAX_IN = 64  # convs with more input channels than this keep the ordinary layout


def cpu_conv_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a conv on ``x`` should take it: on CPU, for convs of at most ``CHANNELS_LAST_MAX_IN`` input
    channels, in channels-last layout, which oneDNN's kernels take without reordering it on every call: faster for
    narrow convs such as the demo VAE's, slower for the released VAE's wide ones (figures in docs/benchmarks.md). A
    copy per call, so parameters, state dicts and gradients keep their ordinary layout; the sums are the same (to
    float32 rounding)."""
    if x.device.type != "cpu" or not CPU_CHANNELS_LAST or weight.shape[1] > CHANNELS_LAST_MAX_IN:
        return weight
    return weight.contiguous(memory_format=torch.channels_last_3d if weight.ndim == 5 else torch.channels_last)


class Conv2d(nn.Conv2d):
    """nn.Conv2d with the CPU weight layout of :func:`cpu_conv_weight` (same parameters and state-dict keys)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, cpu_conv_weight(x, weight), bias)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded on both sides in space and only in front in time (2·p_t frames).

    With a cache, the front padding is the previous chunk's last input frames instead of zeros (zeros in the
    first chunk), so running chunk by chunk computes exactly what one pass over the whole video would.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0) -> None:
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t
        assert self.time_pad in (0, self.kernel_size[0] - 1), "pads kernel_t - 1 frames in front"

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x, weight = self._with_history(x, cache) if self.time_pad else (x, self.weight)
        if x.shape[2] == weight.shape[2]:
            return self._one_frame(x, weight)
        return self._conv_forward(x, weight, self.bias)  # spatial zero padding happens inside the conv

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, cpu_conv_weight(x, weight), bias)

    def _with_history(self, x: torch.Tensor, cache: FeatureCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x preceded by its time_pad history frames (cached, else zeros), and the weight to apply."""
        prev = cache.read() if cache is not None else None
        if prev is not None:
            x = torch.cat([prev, x], dim=2)
            cache.write(_last_frames(x, self.time_pad))
            return x, self.weight
        if cache is not None:  # keep the zero-padded history, so later chunks never pad
            missing = max(0, self.time_pad - x.shape[2])
            cache.write(F.pad(x[:, :, -self.time_pad:], (0, 0, 0, 0, missing, 0)))
        if x.shape[2] == 1:  # one frame after zero history: skip the taps that would see only zeros (exact)
            return x, self.weight[:, :, -1:]
        return F.pad(x, (0, 0, 0, 0, self.time_pad, 0)), self.weight

    def _one_frame(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A conv with one output frame is a 2D conv over (channels x taps): the same sums, faster kernels."""
        b, c, t, h, w = x.shape
        y = F.conv2d(x.reshape(b, c * t, h, w), cpu_conv_weight(x, weight.flatten(1, 2)), self.bias,
                     self.stride[1:], self.padding[1:])
        return y.unsqueeze(2)  # [B, C_out, 1, H', W']


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned gain; computed in float32."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics and scaling whatever the input dtype; the eps is F.normalize's
        norm = channel_norm(x).clamp_min(1e-12)
        return (x / norm * (self.gamma.float() * self.scale)).to(x.dtype)


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """The float32 L2 norm of ``x`` [B, C, ...] over its channels, keeping the channel dim.

    On CPU, ``torch.linalg.vector_norm`` over a dimension that is not the innermost takes a strided path many
    times slower than a sum of squares, so the sum of squares is used there. On GPU ``vector_norm`` is fast and
    never makes a float32 copy of a bfloat16 ``x``."""
    if x.device.type == "cpu":
        xf = x.float()
        return (xf * xf).sum(1, keepdim=True).sqrt()
    return torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Positions 0..6 are those of the reference's nn.Sequential (they name the checkpoint keys).
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        norm1, act, conv1, norm2, _, dropout, conv2 = self.residual
        h = conv1(act(norm1(x)), cache)
        h = conv2(dropout(act(norm2(h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (nothing crosses time, so no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        qkv = self.to_qkv(self.norm(_frames_first(x)))  # [(B T), 3C, H, W]
        qkv = qkv.flatten(2).transpose(1, 2).contiguous()  # [(B T), HW, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # 3 x [(B T), 1, HW, C]
        y = F.scaled_dot_product_attention(q, k, v)  # [(B T), 1, HW, C]
        y = self.proj(y.squeeze(1).transpose(1, 2).unflatten(2, (h, w)))  # [(B T), C, H, W]
        return x + _frames_back(y, b)


class Resample(nn.Module):
    """Spatial ×2 up/down sampling per frame; the 3D modes also resample time through a cached conv.

    downsample3d: a stride-2 temporal conv over (last frame of the previous chunk, this chunk); the first
    chunk has nothing to pair with and passes through. upsample3d: a temporal conv to 2·C channels whose
    halves become two output frames; the first latent frame is not doubled (1 frame out, then 4 per latent
    frame).
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        assert mode in self.MODES, mode
        self.mode = mode
        if mode.startswith("upsample"):
            # nearest-exact at exactly ×2 copies values, so it is exact in any dtype
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "upsample3d" and cache.first:
            cache.write(None)  # the next chunk's time_conv then starts from zero history
            frames = _frames_first(x)
        elif self.mode == "upsample3d":
            x = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            # channel halves are consecutive frames: [B, T, 2, C, H, W] -> [(B T 2), C, H, W]
            frames = x.unflatten(1, (2, -1)).permute(0, 3, 1, 2, 4, 5).flatten(0, 2)
        else:
            frames = _frames_first(x)
        x = _frames_back(self.resample(frames), b)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _downsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if cache.first:
            cache.write(x[:, :, -1:])
            return x
        prev = cache.read()
        cache.write(_last_frames(x, 1))
        return self.time_conv(torch.cat([prev, x], dim=2))


# ----------------------------------------------------------------------------------- encoder, decoder


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                layers.append(Resample(out_dim, mode))
                scale /= 2.0
        self.downsamples = nn.ModuleList(layers)
        top = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(top, top, cfg.dropout), AttentionBlock(top),
                                     ResidualBlock(top, top, cfg.dropout)])
        self.head = nn.Sequential(RMSNorm(top), nn.SiLU(), CausalConv3d(top, cfg.z_dim * 2, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)  # [B, 2 z_dim, T', H/8, W/8]


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        levels = len(cfg.dim_mult)
        dims = [cfg.decoder_width * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0], cfg.dropout), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0], cfg.dropout)])
        layers: list[nn.Module] = []
        scale = 1.0 / 2 ** (levels - 2)
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsample's 2D conv halves the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < levels - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.ModuleList(layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        norm, act, conv = self.head
        return conv(act(norm(x)), cache)  # [B, 3, T', H, W], not yet clamped


# ------------------------------------------------------------------------------------------ tiling


@dataclass(frozen=True)
class VAETiling:
    """Spatial tiling, in pixels: tiles of ``tile_size`` whose neighbours overlap by at least ``overlap``.

    Both must be multiples of the spatial compression (8). Tiles are blended linearly across their overlaps.
    """

    tile_size: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.tile_size, int) and isinstance(self.overlap, int)):
            raise ValueError("VAETiling takes whole pixel counts; give tile_size and overlap as integers.")
        if self.tile_size <= 0 or not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"VAETiling needs tile_size > 0 and 0 <= overlap < tile_size; got tile_size="
                f"{self.tile_size}, overlap={self.overlap} — e.g. use VAETiling(tile_size=256, overlap=64)."
            )


class _Tile(NamedTuple):
    src: tuple[slice, slice]  # rows, cols of the input (latents to decode, pixels to encode)
    dst: tuple[slice, slice]  # rows, cols of the output
    weight: torch.Tensor  # [dst rows, dst cols] float32 blending weight


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal tiles covering [0, size), spread evenly so neighbours overlap by at least ``overlap``."""
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))
    starts = [round(i * (size - tile) / (n - 1)) for i in range(n)]
    return [(s, s + tile) for s in starts]


def _ramps(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Per span, 1D weights in output units (× scale): linear fades across its overlaps with neighbours."""
    out = []
    for i, (start, end) in enumerate(spans):
        w = torch.ones((end - start) * scale, dtype=torch.float64)
        fade_in = (spans[i - 1][1] - start) * scale if i > 0 else 0
        fade_out = (end - spans[i + 1][0]) * scale if i + 1 < len(spans) else 0
        if fade_in > 0:
            w[:fade_in] *= (torch.arange(fade_in, dtype=torch.float64) + 0.5) / fade_in
        if fade_out > 0:
            w[len(w) - fade_out:] *= (torch.arange(fade_out, 0, -1, dtype=torch.float64) - 0.5) / fade_out
        out.append(w)
    return out


# --------------------------------------------------------------------------------------------- VAE


class WanVAE(nn.Module):
    """The Wan2.1 VAE: ``encode`` gives normalised latents, ``decode`` takes them (see the module doc)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        # Constants, not weights: out of the state dict, and real tensors even when built on the meta device.
        self.register_buffer("latents_mean", self._stat(cfg.latents_mean, "cpu"), persistent=False)
        self.register_buffer("latents_std", self._stat(cfg.latents_std, "cpu"), persistent=False)

    @staticmethod
    def _stat(values, device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) would cast the latent statistics too; the scale is applied in float32 always.
        super()._apply(fn, recurse)
        for name, values in (("latents_mean", self.cfg.latents_mean), ("latents_std", self.cfg.latents_std)):
            buf = getattr(self, name)
            if buf.dtype != torch.float32:
                setattr(self, name, self._stat(values, buf.device))
        return self

    @classmethod
    def from_config(cls, config: VAEConfig | dict | None = None) -> WanVAE:
        """Random init; a dict overrides the released 2.1 architecture (``{}`` is the released one)."""
        if config is None:
            config = {}
        if isinstance(config, dict):
            data = dict(config)
            z_dim = data.get("z_dim", len(WAN21_LATENTS_MEAN))
            if z_dim != len(WAN21_LATENTS_MEAN):  # custom latent size: identity scale unless given
                data.setdefault("latents_mean", [0.0] * z_dim)
                data.setdefault("latents_std", [1.0] * z_dim)
            config = VAEConfig.from_dict(data)
        if not isinstance(config, VAEConfig):
            raise ValueError(
                f"from_config takes a VAEConfig or a dict of its fields; got {type(config).__name__}."
            )
        return cls(config)

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanVAE:
        """The VAE stored at ``path`` (the release's ``Wan2.1_VAE.pth``, a folder holding it, or a diffusers
        ``vae/`` folder; the architecture is read off the tensor shapes), in ``dtype`` on ``device``, eval mode.
        :mod:`openwan.checkpoints` reads the file; the model is built here."""
        config, state, source = read_weights("vae", path)
        return cls.from_state(config, state, source=source, dtype=dtype, device=device)

    @classmethod
    def from_state(cls, cfg: VAEConfig, state: Mapping[str, torch.Tensor], *, source: str | Path = "state dict",
                   dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanVAE:
        """Built on the meta device and given ``state`` (official key names) strictly, without a copy."""
        with torch.device("meta"):
            model = cls(cfg)
        load_strict(model, state, source, dtype=dtype)
        return finish_loading(model, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    # ----------------------------------------------------------------------------------- scale

    def _scale_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.latents_mean.to(device=x.device, dtype=torch.float32).view(shape)
        std = self.latents_std.to(device=x.device, dtype=torch.float32).view(shape)
        return mean, std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean -> the latents the DiT works on, (mu - mean) / std, in float32."""
        mean, std = self._scale_stats(mu)
        return (mu.float() - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`, in float32."""
        mean, std = self._scale_stats(z)
        return z.float() * std + mean

    # ---------------------------------------------------------------------------------- encode

    def encode(self, video: torch.Tensor, tile: VAETiling | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1], T = 4n+1 -> normalised float32 latents [B, z, 1+(T-1)//4, H/8, W/8]."""
        mu, _ = self.encode_moments(video, tile)
        return self.normalize(mu)

    def encode_moments(
        self, video: torch.Tensor, tile: VAETiling | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw posterior (mu, log_var), each [B, z_dim, 1+(T-1)//4, H/8, W/8], in the weights' dtype.

        log_var is not clamped; a trainer computing a KL term clamps it as it sees fit.
        """
        self._check_video(video)
        x = video.to(self.dtype)
        tiles = self._tiles(tile, x.shape[-2] // self.cfg.spatial_compression,
                            x.shape[-1] // self.cfg.spatial_compression, to_pixels=False, device=x.device)
        h = self._moments(x) if tiles is None else self._moments_tiled(x, *tiles)
        mu, log_var = h.chunk(2, dim=1)
        return mu, log_var

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """One causal pass over the whole clip: [B, 3, T, H, W] -> [B, 2 z_dim, T', H/8, W/8]."""
        cache = FeatureCache()
        chunks = [x[:, :, :1]]
        if x.shape[2] > 1:
            chunks += x[:, :, 1:].split(self.cfg.temporal_compression, dim=2)
        out = []
        for chunk in chunks:
            cache.next_chunk()
            out.append(self.encoder(chunk, cache))
        return self.conv1(torch.cat(out, dim=2))

    def _moments_tiled(self, x: torch.Tensor, tiles: list[_Tile], total: torch.Tensor) -> torch.Tensor:
        acc = None
        for tile in tiles:  # one tile at a time: peak memory is that of one tile's pass
            h = self._moments(x[(..., *tile.src)])
            if acc is None:
                acc = h.new_zeros(*h.shape[:3], *total.shape, dtype=torch.float32)
            acc[(..., *tile.dst)].addcmul_(h, tile.weight)
        return (acc / total).to(self.dtype)

    # ---------------------------------------------------------------------------------- decode

    def decode(self, z: torch.Tensor, tile: VAETiling | None = None) -> torch.Tensor:
        """Normalised latents [B, z_dim, T', h, w] -> video [B, 3, 1+4(T'-1), 8h, 8w] clamped to [-1, 1]."""
        self._check_latents(z)
        x = self._decoder_input(z)
        tiles = self._tiles(tile, x.shape[-2], x.shape[-1], to_pixels=True, device=x.device)
        if tiles is not None:
            return self._decode_tiled(x, *tiles)
        s = self.cfg.spatial_compression
        out = x.new_empty(x.shape[0], 3, self._frames_out(x.shape[2]), x.shape[3] * s, x.shape[4] * s)
        start = 0
        for chunk in self._stream(x):
            out[:, :, start:start + chunk.shape[2]] = chunk
            start += chunk.shape[2]
        return out

    def decode_stream(self, z: torch.Tensor, tile: VAETiling | None = None) -> Iterator[torch.Tensor]:
        """Decode chunk by chunk: 1 frame for the first latent frame, then 4 per latent frame.

        The chunks, concatenated on dim 2, equal ``decode(z, tile)`` exactly; only one chunk (and, with
        tiling, one cache per tile) is alive at a time, so a video of any length decodes in bounded memory.
        """
        self._check_latents(z)
        x = self._decoder_input(z)
        tiles = self._tiles(tile, x.shape[-2], x.shape[-1], to_pixels=True, device=x.device)
        if tiles is None:
            yield from self._stream(x)
        else:
            yield from self._stream_tiled(x, *tiles)

    def _decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.denormalize(z).to(self.dtype))

    def _frames_out(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.cfg.temporal_compression

    def _decode_pass(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Raw decoder output, one chunk per latent frame, with one cache for the whole pass."""
        cache = FeatureCache()
        for k in range(x.shape[2]):
            cache.next_chunk()
            yield self.decoder(x[:, :, k:k + 1], cache)

    def _stream(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for chunk in self._decode_pass(x):
            yield chunk.clamp(-1.0, 1.0)

    def _finish_blend(self, acc: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return (acc / total).to(self.dtype).clamp(-1.0, 1.0)

    def _decode_tiled(self, x: torch.Tensor, tiles: list[_Tile], total: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], 3, self._frames_out(x.shape[2]), *total.shape, dtype=torch.float32)
        for tile in tiles:  # one tile's whole pass at a time: one cache alive, memory bounded by the tile
            start = 0
            for chunk in self._decode_pass(x[(..., *tile.src)]):
                out[:, :, start:start + chunk.shape[2], tile.dst[0], tile.dst[1]].addcmul_(chunk, tile.weight)
                start += chunk.shape[2]
        return self._finish_blend(out, total)

    def _stream_tiled(
        self, x: torch.Tensor, tiles: list[_Tile], total: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        # The same per-tile passes and the same blending arithmetic as _decode_tiled, interleaved in time.
        passes = [self._decode_pass(x[(..., *tile.src)]) for tile in tiles]
        for _ in range(x.shape[2]):
            acc = None
            for tile, chunks in zip(tiles, passes):
                chunk = next(chunks)
                if acc is None:
                    acc = chunk.new_zeros(*chunk.shape[:3], *total.shape, dtype=torch.float32)
                acc[(..., *tile.dst)].addcmul_(chunk, tile.weight)
            yield self._finish_blend(acc, total)

    # ------------------------------------------------------------------------------ tiles, checks

    def _tiles(self, tile: VAETiling | None, h: int, w: int, *, to_pixels: bool, device):
        """The tile grid over a latent h × w and the weight sum (None if off, or if one tile covers all).

        Decoding maps latent tiles to pixel tiles (``to_pixels``); encoding maps pixel tiles to latent tiles.
        """
        if tile is None:
            return None
        s = self.cfg.spatial_compression
        if not isinstance(tile, VAETiling):
            raise ValueError(f"tile must be None or a VAETiling(tile_size=..., overlap=...); got {tile!r}.")
        if tile.tile_size % s or tile.overlap % s:
            raise ValueError(
                f"VAETiling sizes are in pixels and must be multiples of {s}; got tile_size="
                f"{tile.tile_size}, overlap={tile.overlap}."
            )
        size, overlap = tile.tile_size // s, tile.overlap // s
        rows, cols = _spans(h, size, overlap), _spans(w, size, overlap)
        if len(rows) == len(cols) == 1:
            return None
        src_scale, dst_scale = (1, s) if to_pixels else (s, 1)
        total = torch.zeros(h * dst_scale, w * dst_scale, dtype=torch.float32, device=device)
        tiles = []
        for (r0, r1), wr in zip(rows, _ramps(rows, dst_scale)):
            for (c0, c1), wc in zip(cols, _ramps(cols, dst_scale)):
                weight = (wr[:, None] * wc[None, :]).to(device=device, dtype=torch.float32)
                dst = (slice(r0 * dst_scale, r1 * dst_scale), slice(c0 * dst_scale, c1 * dst_scale))
                src = (slice(r0 * src_scale, r1 * src_scale), slice(c0 * src_scale, c1 * src_scale))
                total[dst] += weight
                tiles.append(_Tile(src, dst, weight))
        return tiles, total

    def _check_video(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"encode takes a video tensor [B, 3, T, H, W]; got {shape} — add the missing "
                             "batch or time axis with unsqueeze.")
        _, channels, frames, height, width = video.shape
        if not video.is_floating_point():
            raise ValueError(f"encode takes float frames in [-1, 1]; got {video.dtype} — convert with "
                             "video.float() / 127.5 - 1.")
        if channels != 3:
            raise ValueError(f"encode takes RGB video [B, 3, T, H, W]; got {channels} channels on dim 1 — "
                             "put the 3 colour channels on dim 1.")
        c, s = self.cfg.temporal_compression, self.cfg.spatial_compression
        if frames < 1 or (frames - 1) % c:
            below = 1 + (frames - 1) // c * c
            nearest = f"{below} or {below + c}" if frames > 1 else "1"
            raise ValueError(f"the VAE takes {c}n+1 frames (1, {1 + c}, {1 + 2 * c}, ...); got {frames} — "
                             f"trim or pad the clip to a valid count: {nearest}.")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}; got {height}x{width} — crop or "
                             f"resize to {height // s * s}x{width // s * s}.")

    def _check_latents(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"decode takes latents [B, {self.cfg.z_dim}, T, h, w]; got {shape} — add the "
                             "missing batch or time axis with unsqueeze.")
        if z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"decode takes latents with {self.cfg.z_dim} channels on dim 1; got "
                             f"{z.shape[1]} — pass latents from this VAE's encode (or the DiT's output).")
        if 0 in z.shape[2:]:
            raise ValueError(f"decode got an empty latent tensor {tuple(z.shape)}; give at least one latent "
                             "frame of at least 1x1.")
