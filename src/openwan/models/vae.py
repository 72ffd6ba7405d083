"""The Wan VAEs: video [B, 3, 1+4n, H, W] in [-1, 1] <-> normalised latents [B, z_dim, 1+n, H/s, W/s].

One class serves both releases, built from its :class:`~openwan.configs.VAEConfig`: Wan2.1 (z_dim 16, s = 8) and
Wan2.2 (z_dim 48, s = 16: 2×2 patchify, then residual levels; :mod:`openwan.models.vae22`).

Time runs causally in chunks — encoding takes frame 0 alone, then 4 frames at a time; decoding takes one
latent frame at a time — and every temporal layer keeps the frames it needs from the previous chunk in a
:class:`FeatureCache` that is created per pass and handed down explicitly. A video of any length therefore
needs memory for one chunk only. Spatial tiling (:class:`VAETiling`) bounds memory in H and W the same way,
and the two compose: ``decode_stream(z, tile=...)`` keeps one cache per tile and yields blended chunks.

Module names reproduce the keys of the released ``Wan2.1_VAE.pth`` and ``Wan2.2_VAE.pth``, so they load without
key conversion. The blocks live in :mod:`openwan.models.vae_layers`, the encoder and decoder in
:mod:`openwan.models.vae_coders`, the tiling in :mod:`openwan.models.vae_tiling`; their public names are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from openwan.configs import VAEConfig, default_latent_stats, get_preset
from openwan.models.loading import finish_loading, load_strict, read_weights
from openwan.models.vae22 import ResidualDecoder3d, ResidualEncoder3d, patchify, unpatchify
from openwan.models.vae_coders import Decoder3d, Encoder3d
from openwan.models.vae_layers import (
    AttentionBlock,
    CausalConv3d,
    Conv2d,
    FeatureCache,
    Resample,
    ResidualBlock,
    RMSNorm,
    channel_norm,
    cpu_conv_weight,
)
from openwan.models.vae_tiling import Tile, VAETiling, tile_grid

__all__ = [
    "WanVAE", "VAETiling", "FeatureCache", "CausalConv3d", "Conv2d", "RMSNorm", "ResidualBlock", "AttentionBlock",
    "Resample", "Encoder3d", "Decoder3d", "channel_norm", "cpu_conv_weight",
]

# --------------------------------------------------------------------------------------------- VAE


class WanVAE(nn.Module):
    """The Wan2.1 or Wan2.2 VAE (as ``cfg`` says): ``encode`` gives normalised latents, ``decode`` takes them
    (see the module doc)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = (ResidualEncoder3d if cfg.residual else Encoder3d)(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = (ResidualDecoder3d if cfg.residual else Decoder3d)(cfg)
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
    def from_config(cls, config: VAEConfig | dict | str | None = None) -> WanVAE:
        """Random init. A dict overrides the released 2.1 architecture (``{}`` is the released one); latent
        statistics not given are the published ones for 16 (Wan2.1) and 48 (Wan2.2) channels, identity for other
        sizes. A string names a preset of :data:`openwan.configs.VAE_PRESETS` (``"wan2.2"``, ``"tiny-22"``, ...)."""
        if config is None:
            config = {}
        if isinstance(config, str):
            config = get_preset("vae", config)
        if isinstance(config, dict):
            data = dict(config)
            for name, values in default_latent_stats(int(data.get("z_dim", VAEConfig.z_dim))).items():
                data.setdefault(name, values)
            config = VAEConfig.from_dict(data)
        if not isinstance(config, VAEConfig):
            raise ValueError(
                f"from_config takes a VAEConfig, a dict of its fields or a preset name; got {type(config).__name__}."
            )
        return cls(config)

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanVAE:
        """The VAE stored at ``path`` (the release's ``Wan2.1_VAE.pth`` or ``Wan2.2_VAE.pth``, a folder holding
        it, or a diffusers ``vae/`` folder; the architecture, 2.1 or 2.2, is read off the tensor shapes), in ``dtype``
        on ``device``, eval mode.
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
        """[B, 3, T, H, W] in [-1, 1], T = 4n+1 -> normalised float32 latents [B, z_dim, 1+(T-1)//4, H/s, W/s],
        s = ``cfg.spatial_compression`` (8 for Wan2.1, 16 for Wan2.2)."""
        mu, _ = self.encode_moments(video, tile)
        return self.normalize(mu)

    def encode_moments(
        self, video: torch.Tensor, tile: VAETiling | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw posterior (mu, log_var), each [B, z_dim, 1+(T-1)//4, H/s, W/s], in the weights' dtype.

        log_var is not clamped; a trainer computing a KL term clamps it as it sees fit.
        """
        self._check_video(video)
        x = video.to(self.dtype)
        s = self.cfg.spatial_compression
        tiles = tile_grid(tile, x.shape[-2] // s, x.shape[-1] // s, s, to_pixels=False, device=x.device)
        h = self._moments(x) if tiles is None else self._moments_tiled(x, *tiles)
        mu, log_var = h.chunk(2, dim=1)
        return mu, log_var

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """One causal pass over the whole clip: [B, 3, T, H, W] -> [B, 2 z_dim, T', H/s, W/s]."""
        x = patchify(x, self.cfg.patch_size)  # [B, 3·p², T, H/p, W/p]
        cache = FeatureCache()
        chunks = [x[:, :, :1]]
        if x.shape[2] > 1:
            chunks += x[:, :, 1:].split(self.cfg.temporal_compression, dim=2)
        out = []
        for chunk in chunks:
            cache.next_chunk()
            out.append(self.encoder(chunk, cache))
        return self.conv1(torch.cat(out, dim=2))

    def _moments_tiled(self, x: torch.Tensor, tiles: list[Tile], total: torch.Tensor) -> torch.Tensor:
        acc = None
        for tile in tiles:  # one tile at a time: peak memory is that of one tile's pass
            h = self._moments(x[(..., *tile.src)])
            if acc is None:
                acc = h.new_zeros(*h.shape[:3], *total.shape, dtype=torch.float32)
            acc[(..., *tile.dst)].addcmul_(h, tile.weight)
        return (acc / total).to(self.dtype)

    # ---------------------------------------------------------------------------------- decode

    def decode(self, z: torch.Tensor, tile: VAETiling | None = None) -> torch.Tensor:
        """Normalised latents [B, z_dim, T', h, w] -> video [B, 3, 1+4(T'-1), s·h, s·w] clamped to [-1, 1]."""
        self._check_latents(z)
        x = self.decoder_input(z)
        tiles = tile_grid(tile, x.shape[-2], x.shape[-1], self.cfg.spatial_compression, to_pixels=True,
                          device=x.device)
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
        x = self.decoder_input(z)
        tiles = tile_grid(tile, x.shape[-2], x.shape[-1], self.cfg.spatial_compression, to_pixels=True,
                          device=x.device)
        if tiles is None:
            yield from self._stream(x)
        else:
            yield from self._stream_tiled(x, *tiles)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> what :meth:`decode_chunk` takes, frame by frame (a per-frame 1x1x1 conv)."""
        return self.conv2(self.denormalize(z).to(self.dtype))

    def _frames_out(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.cfg.temporal_compression

    def _decode_pass(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Raw decoder output [B, 3, T_k, H, W], one chunk per latent frame, with one cache for the whole pass."""
        cache = FeatureCache()
        for k in range(x.shape[2]):
            cache.next_chunk()
            yield self.decode_chunk(x[:, :, k:k + 1], cache)

    def decode_chunk(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """One latent frame of decoder input [B, z_dim, 1, h, w] (``conv2`` of denormalised latents), continuing
        the causal pass that ``cache`` holds (call ``cache.next_chunk()`` first) -> raw frames [B, 3, t, s·h, s·w],
        t = 1 for the pass's first latent frame, else ``temporal_compression``; not clamped. What streaming
        decoders that keep their own cache call, so a patchified (Wan2.2) VAE's output is put back into pixels."""
        return unpatchify(self.decoder(x, cache), self.cfg.patch_size)

    def _stream(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for chunk in self._decode_pass(x):
            yield chunk.clamp(-1.0, 1.0)

    def _finish_blend(self, acc: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return (acc / total).to(self.dtype).clamp(-1.0, 1.0)

    def _decode_tiled(self, x: torch.Tensor, tiles: list[Tile], total: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], 3, self._frames_out(x.shape[2]), *total.shape, dtype=torch.float32)
        for tile in tiles:  # one tile's whole pass at a time: one cache alive, memory bounded by the tile
            start = 0
            for chunk in self._decode_pass(x[(..., *tile.src)]):
                out[:, :, start:start + chunk.shape[2], tile.dst[0], tile.dst[1]].addcmul_(chunk, tile.weight)
                start += chunk.shape[2]
        return self._finish_blend(out, total)

    def _stream_tiled(
        self, x: torch.Tensor, tiles: list[Tile], total: torch.Tensor
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
