"""The 2D image VAE of VAE training stage 1: the Wan2.1 VAE with every temporal kernel cut to one frame.

It is built from the Wan VAE's own encoder and decoder (``openwan.models.vae``) at the same widths, with all
resampling spatial only and every causal conv's temporal extent set to 1, so each frame is coded on its own.
Its state dict is ``WanVAE``'s minus the ``time_conv`` keys, with kernels ``[out, in, 1, k, k]`` where WanVAE has
``[out, in, 3, k, k]``. Inflation (``openwan.train.vae_models.inflate_image_vae``) puts each kernel in the
LAST temporal tap — the one that sees the current frame, and the only one the causal VAE applies to a first
frame — so a single image codes exactly as it does here.
"""

from __future__ import annotations

import torch
from torch import nn

from openwan.configs import VAEConfig
from openwan.models.vae import CausalConv3d, Decoder3d, Encoder3d


def _one_frame_kernels(module: nn.Module) -> nn.Module:
    """Replace every causal conv with a temporal kernel by the same conv with temporal extent 1 (fresh init)."""
    for name, child in module.named_children():
        if isinstance(child, CausalConv3d) and child.kernel_size[0] > 1:
            conv = CausalConv3d(child.in_channels, child.out_channels, (1, *child.kernel_size[1:]),
                                stride=(1, *child.stride[1:]), padding=(0, *child.padding[1:]))
            setattr(module, name, conv)
        else:
            _one_frame_kernels(child)
    return module


class ImageVAE(nn.Module):
    """Frames [B, 3, T, H, W] in [-1, 1] -> per-frame posteriors [B, z_dim, T, H/8, W/8], and back.

    ``cfg`` is the target 3D VAE's config (its ``temporal_downsample`` is kept for inflation, unused here).
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        flat = cfg.replace(temporal_downsample=(False,) * len(cfg.temporal_downsample))
        self.encoder = _one_frame_kernels(Encoder3d(flat))
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = _one_frame_kernels(Decoder3d(flat))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw posterior (mu, log_var) of each frame, each [B, z_dim, T, H/8, W/8], in the weights' dtype."""
        self._check(video, "encode_moments", 3, self.cfg.spatial_compression)
        b = video.shape[0]
        # No layer mixes frames or needs a cache, so frames are a batch of one-frame clips (2D convolutions).
        frames = _frames_to_batch(video.to(self.dtype))  # [(B T), 3, 1, H, W]
        h = self.conv1(self.encoder(frames, None))  # [(B T), 2 z_dim, 1, h, w]
        mu, log_var = _batch_to_frames(h, b).chunk(2, dim=1)
        return mu, log_var

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw (not normalised) latents [B, z_dim, T, h, w] -> frames [B, 3, T, 8h, 8w], NOT clamped.

        Training takes its losses on the unclamped output, so values past [-1, 1] still get gradients.
        """
        self._check(latents, "decode_raw", self.cfg.z_dim, 1)
        b = latents.shape[0]
        x = self.conv2(_frames_to_batch(latents.to(self.dtype)))
        return _batch_to_frames(self.decoder(x, None), b)

    def _check(self, x: torch.Tensor, name: str, channels: int, multiple: int) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} takes [B, {channels}, T, H, W]; got {shape} — an image is a 1-frame clip, "
                             "add the time axis with unsqueeze(2).")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}; got {x.shape[-2]}x{x.shape[-1]}.")


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [(B T), C, 1, H, W]."""
    return x.transpose(1, 2).flatten(0, 1).unsqueeze(2)


def _batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[(B T), C, 1, H, W] -> [B, C, T, H, W]."""
    return x.squeeze(2).unflatten(0, (batch, -1)).transpose(1, 2)


__all__ = ["ImageVAE"]
