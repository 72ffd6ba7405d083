"""Per-task conditioning builders. Each turns the user's inputs into what the shared denoising loop needs.

A builder returns a :class:`Conditioning`: the DiT's extra inputs (``y``: 4 mask + 16 latent channels, and CLIP
image tokens), for video-to-video the clean latents to start from and the strength, and for Wan2.2 TI2V the latents
held clean (their tokens get timestep 0, and the loop puts them back after every step). The loop itself never
looks at the task name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASKS = ("t2v", "t2i", "i2v", "flf2v", "v2v", "extend", "ti2v", "vace")


@dataclass
class Conditioning:
    y: torch.Tensor | None = None  # [1, 20, F_lat, h, w]  mask(4) + VAE latents(16)
    clip_fea: torch.Tensor | None = None  # [1, 257 | 514, 1280]
    init_latents: torch.Tensor | None = None  # [1, 16, F_lat, h, w] clean latents to noise (v2v)
    strength: float | None = None
    # Latents held clean through the loop (ti2v: the image as the first latent frame): the values and where.
    clean_latents: torch.Tensor | None = None  # [1, C, F_lat, h, w]
    clean_mask: torch.Tensor | None = None  # [1, 1, F_lat, h, w] bool, True where clean_latents hold
    # Wan2.1-VACE (pipelines/vace.py): the DiT's vace_context, its scale, and the latent frames in front of the video
    # (one per reference image) that the noise carries too and the output drops.
    vace_context: torch.Tensor | None = None  # [1, 96, prefix_frames + F_lat, h, w]
    vace_scale: float = 1.0
    prefix_frames: int = 0

    def timesteps(self, t: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
        """The DiT's t for one batch row: [1], or per token [1, L] (0 on the tokens of clean latents, L = the
        latent grid in ``patch``-sized tokens, each token judged by its first latent as the reference does)."""
        t = t.reshape(1).float()
        if self.clean_mask is None:
            return t
        pt, ph, pw = patch
        clean = self.clean_mask[:, 0, ::pt, ::ph, ::pw].flatten(1).to(t.device)  # [1, L]
        return torch.where(clean, torch.zeros_like(t), t)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [1, C, F_lat, h, w] with the clean latents put back where they hold (x itself without any)."""
        if self.clean_mask is None:
            return x
        return torch.where(self.clean_mask.to(x.device), self.clean_latents.to(x), x)


def latent_frames(frame_num: int, temporal: int = 4) -> int:
    return (frame_num - 1) // temporal + 1


def check_frame_num(frame_num: int, temporal: int = 4) -> None:
    if frame_num < 1 or (frame_num - 1) % temporal:
        lower = max(1, (frame_num - 1) // temporal * temporal + 1)
        upper = lower + temporal
        raise ValueError(
            f"frame_num must be {temporal}n+1 (1, 5, 9, ..., 81); {frame_num} is not — the nearest valid counts "
            f"are {lower} and {upper}."
        )


def check_size(width: int, height: int, multiple: int = 16) -> None:
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(
            f"size {width}*{height} is not possible: width and height must be positive multiples of {multiple} "
            f"(e.g. {max(multiple, width // multiple * multiple)}*{max(multiple, height // multiple * multiple)})."
        )


def size_for_image(image_hw: tuple[int, int], max_area: int, stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """(width, height) for an image's aspect ratio with about ``max_area`` pixels, as the reference i2v chooses it."""
    h, w = image_hw
    aspect = h / w
    lat_h = round(math.sqrt(max_area * aspect) // stride // patch * patch)
    lat_w = round(math.sqrt(max_area / aspect) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise ValueError(f"size area {max_area} is too small for a {w}x{h} image; use a larger --size.")
    return lat_w * stride, lat_h * stride


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[T, H, W, 3] in [0, 1] -> [1, 3, T, H, W] in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).unsqueeze(0).mul(2).sub(1)


def resize_frame(frame: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1] bicubic-resized (no crop) to (height, width), as the reference does for i2v."""
    return F.interpolate(frame, size=(height, width), mode="bicubic", align_corners=False)


def frame_mask(frame_num: int, keep: list[int], lat_h: int, lat_w: int, temporal: int = 4) -> torch.Tensor:
    """The reference's 4-channel mask: 1 on given frames; frame 0 repeated ``temporal``x so T=4n+1 folds to
    (n+1) latent frames x 4 channels. Returns [1, 4, F_lat, lat_h, lat_w]."""
    mask = torch.zeros(1, frame_num, lat_h, lat_w)
    mask[:, keep] = 1
    mask = torch.cat([mask[:, :1].repeat(1, temporal, 1, 1), mask[:, 1:]], dim=1)  # [1, 4*F_lat, h, w]
    mask = mask.view(1, mask.shape[1] // temporal, temporal, lat_h, lat_w).transpose(1, 2)
    return mask  # [1, 4, F_lat, h, w]


def image_conditioning(vae, frames: list[torch.Tensor], positions: list[int], frame_num: int, width: int,
                       height: int) -> torch.Tensor:
    """``y`` for i2v / flf2v: the given frames at ``positions`` (others zero) through the VAE, plus the mask.

    ``frames`` are [1, 3, H, W] in [-1, 1], already at (height, width).
    """
    first = next(vae.parameters())
    video = torch.zeros(1, 3, frame_num, height, width, device=first.device, dtype=first.dtype)
    for frame, pos in zip(frames, positions):
        video[:, :, pos] = frame.to(video)
    latents = vae.encode(video)  # [1, 16, F_lat, h, w] normalised
    mask = frame_mask(frame_num, positions, *latents.shape[-2:], vae.cfg.temporal_compression).to(latents)
    return torch.cat([mask, latents], dim=1)


def activation_bytes(width: int, height: int, frame_num: int, *, dim: int, ffn_dim: int,
                     patch: tuple[int, int, int] = (1, 2, 2), elem_bytes: int = 2, batch: int = 2,
                     stride: int = 8) -> int:
    """A rough lower estimate of the working memory one generation needs beyond the weights: the DiT's widest
    activations over all tokens (the FFN's hidden layer beside the residual stream and q, k, v) for ``batch``
    guidance branches, plus the VAE decoder's full-resolution feature maps over one 4-frame chunk (float32).
    ``stride``: the VAE's spatial compression (8 for Wan2.1's, 16 for Wan2.2's)."""
    tokens = (latent_frames(frame_num) // patch[0]) * (height // stride // patch[1]) * (width // stride // patch[2])
    dit = batch * tokens * (ffn_dim + 4 * dim) * elem_bytes
    vae = 4 * height * width * 96 * 4 * 4  # 96 channels at full resolution, a few live buffers
    return dit + vae
