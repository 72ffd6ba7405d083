"""Wan2.2 TI2V: one model for text-to-video and image-to-video, told apart by the conditioning alone.

Without an image, ti2v is text-to-video: an empty :class:`Conditioning`, the plain loop. With one, the image becomes
the first latent frame, held clean: the video size is the one nearest the image's aspect ratio with about the
asked-for area (:func:`best_output_size`), the image is scaled to cover it and center-cropped, encoded on its own
(the causal VAE's first latent frame depends on the first frame only), and handed to the loop as clean latents —
their tokens get timestep 0 and the loop puts them back after every solver step (``Conditioning.timesteps``,
``Conditioning.restore``).
"""

from __future__ import annotations

import torch

from openwan.data.video import resize_crop
from openwan.pipelines.conditioning import Conditioning, latent_frames, to_model_range


def best_output_size(image_wh: tuple[int, int], max_area: int, multiple: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels for an image of ``image_wh``: multiples of ``multiple`` = (w, h), at most
    ``max_area`` pixels, nearest the image's aspect ratio.

    Two candidates, as the Wan2.2 reference chooses: the ideal width rounded down to its multiple and the height
    that then fits the area, or the ideal height rounded first; the one whose aspect ratio is closer wins (the
    width-first one on a tie).
    """
    (iw, ih), (mw, mh) = image_wh, multiple
    ratio = iw / ih
    ideal_w = (max_area * ratio) ** 0.5
    ideal_h = max_area / ideal_w
    w1 = int(ideal_w // mw * mw)
    h2 = int(ideal_h // mh * mh)
    width_first = (w1, int(max_area / w1 // mh * mh)) if w1 else (0, 0)
    height_first = (int(max_area / h2 // mw * mw), h2) if h2 else (0, 0)
    if min(width_first + height_first) < min(mw, mh):
        raise ValueError(f"a size of {max_area} pixels is too small for a {iw}x{ih} image at multiples of "
                         f"{mw}x{mh}; use a larger --size.")

    def error(size: tuple[int, int]) -> float:
        r = size[0] / size[1]
        return max(ratio / r, r / ratio)

    return width_first if error(width_first) < error(height_first) else height_first


def encode_first_frame(vae, image: torch.Tensor, width: int, height: int, device: torch.device | str
                       ) -> torch.Tensor:
    """``image`` [1, H, W, 3] in [0, 1] scaled to cover (width, height), center-cropped and encoded as a video's
    first frame: normalised latents [1, C, 1, h, w], float32."""
    pixels = to_model_range(resize_crop(image[:1].float(), (width, height)))  # [1, 3, 1, H, W] in [-1, 1]
    return vae.encode(pixels.to(device, next(vae.parameters()).dtype)).float()


def first_frame_conditioning(vae, image: torch.Tensor, width: int, height: int, frame_num: int,
                             device: torch.device | str) -> Conditioning:
    """The conditioning of image-to-video: ``image`` [1, H, W, 3] in [0, 1] encoded by :func:`encode_first_frame`
    and held clean as the first of the video's latent frames."""
    z = encode_first_frame(vae, image, width, height, device)  # [1, C, 1, h, w]
    frames = latent_frames(frame_num, vae.cfg.temporal_compression)
    clean = z.new_zeros(1, z.shape[1], frames, *z.shape[-2:])
    clean[:, :, :1] = z
    mask = torch.zeros(1, 1, frames, *z.shape[-2:], dtype=torch.bool, device=z.device)
    mask[:, :, 0] = True
    return Conditioning(clean_latents=clean, clean_mask=mask)
