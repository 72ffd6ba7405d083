"""Spatial tiling of the Wan VAEs: the tile grid over a frame and the linear blending weights across overlaps.

A tile is coded on its own (with its own feature cache) and the tiles are blended back with weights that fade
linearly across each overlap and sum to one, so peak memory is that of one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class VAETiling:
    """Spatial tiling, in pixels: tiles of ``tile_size`` whose neighbours overlap by at least ``overlap``.

    Both must be multiples of the spatial compression (8 for Wan2.1, 16 for Wan2.2). Tiles are blended linearly
    across their overlaps.
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


class Tile(NamedTuple):
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


def tile_grid(tile: VAETiling | None, h: int, w: int, scale: int, *, to_pixels: bool, device):
    """The tiles over a latent ``h`` × ``w`` and the sum of their weights (None if off, or if one tile covers all).

    ``scale`` is the spatial compression (pixels per latent). Decoding maps latent tiles to pixel tiles
    (``to_pixels``); encoding maps pixel tiles to latent tiles. Returns (list of :class:`Tile`, total weight
    [output rows, output cols] float32).
    """
    if tile is None:
        return None
    s = scale
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
            tiles.append(Tile(src, dst, weight))
    return tiles, total
