"""A synthetic captioned video dataset: one coloured shape moving over a muted background.

It is what the bundled tiny model learns from, and its held-out combinations are what ``openwan eval prompts``
measures prompt following on. Everything is deterministic from a seed.

- colours: red, green, blue, yellow, white, purple (:data:`COLOURS`)
- shapes: circle ("ball", "disc"), square ("box"), triangle (:data:`SHAPES`)
- motions: left, right, up, down, still (:data:`MOTIONS`)

Captions come from templates or, ``captions="varied"``, also from a richer grammar; the attributes, the
vocabulary, the grammar and the caption reader live in :mod:`openwan.data.synthetic_captions` (re-exported here).

Backgrounds are dark-to-mid grey tones with a faint tint and a gentle linear gradient, never close to an object
colour; the object's size, start position and exact speed vary and are not named. The object stays fully in frame
and keeps one orientation (squares axis-aligned, triangles pointing up). ``make_dataset`` writes
``videos/NNNNNN.mp4`` (H.264, lossless 4:4:4: :data:`MP4_OPTIONS`) and a manifest in the training schema.

Held-out split (:func:`is_held_out`): with colour, shape and motion indices c, s, m in the order of the lists
above, a combination is held out when ``(c + 2 s + m) % 5 == 0`` — 18 of 90 combinations (20%). Each
(colour, shape) pair loses exactly one motion, and every (colour, motion), (shape, motion) pair still appears
in training, so the held-out prompts test composition of things the model has seen.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from openwan.data.manifest import MANIFEST_SUFFIXES, ClipRecord, write_manifest
from openwan.data.synthetic_captions import (
    CAPTION_KINDS,
    COLOURS,
    DIRECTED_VERBS,
    DIRECTION_FORMS,
    DIRECTION_PHRASES,
    MAX_CAPTION_CHARS,
    MOTION_VERBS,
    MOTIONS,
    SHAPE_NOUNS,
    SHAPES,
    UNWRITTEN_PAIRS,
    VARIED_GRAMMAR,
    VERBS,
    _check_attributes,
    _check_captions,
    can_generate,
    make_caption,
    normalize_caption,
    parse_caption,
)
from openwan.data.video import save_video

SPLITS = ("train", "heldout")
# How the dataset's files are encoded. ultrafast: x264's slower presets (mb-tree, adaptive quantisation) do not give
# the same bytes from run to run. Lossless 4:4:4: with 4:2:0 chroma the files themselves sit at ~34 dB PSNR from the
# rendered frames (coloured edges at 64 px), a ceiling no VAE trained or measured on them could pass.
MP4_OPTIONS = {"preset": "ultrafast", "crf": 0, "pix_fmt": "yuv444p"}
# Path kinds (:func:`sample_layout`) and the range their travel fraction is drawn from.
# "wrap": the travel of a reversible path over WRAP_REFERENCE_FRAMES frames sets the speed, which clips of any length
# keep: the object runs on and wraps around the frame's edges.
PATHS = {"long": (0.40, 0.60), "reversible": (0.35, 0.50), "wrap": (0.35, 0.50)}
WRAP_REFERENCE_FRAMES = 17


# --------------------------------------------------------------------------------------------- split


def combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion), in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def is_held_out(colour: str, shape: str, motion: str) -> bool:
    """True for the 18 of 90 combinations kept out of training (see the module doc for the rule)."""
    c, s, m = list(COLOURS).index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (c + 2 * s + m) % 5 == 0


def split_combinations(split: str) -> list[tuple[str, str, str]]:
    """The combinations of ``split`` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'.")
    return [combo for combo in combinations() if is_held_out(*combo) == (split == "heldout")]


def canonical_caption(colour: str, shape: str, motion: str) -> str:
    """The plain phrasing used for evaluation prompts: "a red circle moving to the left"."""
    if motion == "still":
        return f"a {colour} {shape} that stays still"
    return f"a {colour} {shape} moving {DIRECTION_PHRASES[motion][0]}"


def heldout_prompts() -> list[str]:
    """One evaluation prompt per held-out combination, in a fixed order (parse them with :func:`parse_caption`)."""
    return [canonical_caption(*combo) for combo in split_combinations("heldout")]




# ------------------------------------------------------------------------------------------- rendering


def _check_paths(paths: str) -> None:
    if paths not in PATHS:
        raise ValueError(f"paths must be one of {', '.join(PATHS)}; got {paths!r}.")


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from an int (square) or a (width, height) pair, checked."""
    width, height = (size, size) if isinstance(size, int) else size
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"size must be even and at least 32 pixels per side; got {width}x{height}.")
    return width, height


@dataclass(frozen=True)
class ClipLayout:
    """Everything random about one clip (drawn by :func:`sample_layout`; drawn on screen by
    :func:`render_layout`). Positions are the centre of the shape's bounding box, in pixels."""

    shape: str
    width: int
    height: int
    frames: int
    rgb: tuple[float, float, float]  # object colour: the named colour, jittered slightly
    radius: float  # shapes of one radius have equal areas
    start: tuple[float, float]
    end: tuple[float, float]
    background: tuple[float, float, float]  # mean background colour
    gradient: tuple[float, float]  # (angle in radians, amplitude) of the background's linear ramp
    wrap: bool = False  # the frame is a torus: positions are taken modulo the width and height

    def centre(self, t: int) -> tuple[float, float]:
        """The shape's centre at frame ``t`` (wrapped into the frame when ``wrap``; ``end`` is then unwrapped)."""
        f = t / (self.frames - 1)
        x, y = self.start[0] + f * (self.end[0] - self.start[0]), self.start[1] + f * (self.end[1] - self.start[1])
        return (x % self.width, y % self.height) if self.wrap else (x, y)

    def box(self, t: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the shape at frame ``t``."""
        (cx, cy), (hx, hy) = self.centre(t), half_extent(self.shape, self.radius)
        return cx - hx, cy - hy, cx + hx, cy + hy


def half_extent(shape: str, radius: float) -> tuple[float, float]:
    """Half width and half height of the shape's bounding box; shapes of one radius have equal areas."""
    if shape == "circle":
        return radius, radius
    if shape == "square":
        side = radius * math.sqrt(math.pi)
        return side / 2, side / 2
    circumradius = radius * math.sqrt(4 * math.pi / (3 * math.sqrt(3)))  # equilateral, pointing up
    return circumradius * math.sqrt(3) / 2, circumradius * 0.75


def sample_layout(colour: str, shape: str, motion: str, seed: int, size: int | tuple[int, int] = 64,
                  frames: int = 17, paths: str = "long") -> ClipLayout:
    """The random choices of one clip, from ``seed``: background tone and ramp, object colour jitter, size,
    and a path that keeps the whole object in frame, at constant speed. ``paths`` (:data:`PATHS`):

    - ``"long"``: moving objects travel 40-60% of the frame along their axis (less when a large shape has no room
      for it): about one latent pixel per latent frame, but a path that long gives its direction away by where it
      starts (a left mover starts in the right half).
    - ``"reversible"``: 35-50% of the room the object has, from a start the reverse path would also fit from
      (near the middle of the axis): where the object starts says nothing of which way it goes.
    - ``"wrap"``: the speed of a reversible path over :data:`WRAP_REFERENCE_FRAMES` frames, kept for all
      ``frames``, from anywhere in the frame; the object leaves by one edge and comes back by the other (drawn on a
      torus, so near an edge it shows in part on both sides). Long clips of it never stop moving, as an endless
      stream must not."""
    _check_attributes(colour, shape, motion)
    _check_paths(paths)
    width, height = _size(size)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames; got {frames}.")
    rng = np.random.default_rng(seed)
    # Muted grey tones with a faint tint: far from every object colour.
    base = rng.uniform(0.12, 0.42) + rng.uniform(-0.04, 0.04, size=3)
    gradient = (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.0, 0.15)))
    radius = float(rng.uniform(0.12, 0.19) * min(width, height))
    hx, hy = half_extent(shape, radius)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[motion]
    travel = rng.uniform(*PATHS[paths])
    margin = 1.0
    room_x, room_y = width - 2 * (margin + hx), height - 2 * (margin + hy)  # the farthest a path can go, pixels
    if paths == "wrap":  # constant speed for any length, from anywhere
        steps = (frames - 1) / (WRAP_REFERENCE_FRAMES - 1)
        shift_x, shift_y = dx * travel * room_x * steps, dy * travel * room_y * steps
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    else:
        if paths == "long":  # a fraction of the frame, capped by the room
            shift_x, shift_y = dx * min(travel * width, room_x), dy * min(travel * height, room_y)
            # Start positions that keep the whole bounding box in frame at both ends of the (straight) path.
            reach_x, reach_y = (max(0.0, -shift_x), max(0.0, shift_x)), (max(0.0, -shift_y), max(0.0, shift_y))
        else:  # a fraction of the room; the reverse path from the same start would fit too
            shift_x, shift_y = dx * travel * room_x, dy * travel * room_y
            reach_x, reach_y = (abs(shift_x),) * 2, (abs(shift_y),) * 2
        x0 = _between(rng, margin + hx + reach_x[0], width - margin - hx - reach_x[1])
        y0 = _between(rng, margin + hy + reach_y[0], height - margin - hy - reach_y[1])
    rgb = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.03, 0.03, size=3), 0, 1)
    return ClipLayout(shape=shape, width=width, height=height, frames=frames, rgb=tuple(map(float, rgb)),
                      radius=radius, start=(float(x0), float(y0)), end=(float(x0 + shift_x), float(y0 + shift_y)),
                      background=tuple(map(float, base)), gradient=gradient, wrap=paths == "wrap")


def _between(rng: np.random.Generator, low: float, high: float) -> float:
    """A uniform draw in [low, high]; a path that uses all the room leaves ``high`` a rounding error below ``low``."""
    return low + max(0.0, high - low) * rng.random()


def shape_coverage(layout: ClipLayout, t: int) -> torch.Tensor:
    """Anti-aliased coverage [H, W] in [0, 1] of the shape at frame ``t`` (a one-pixel linear edge ramp)."""
    y, x = torch.meshgrid(torch.arange(layout.height, dtype=torch.float64) + 0.5,
                          torch.arange(layout.width, dtype=torch.float64) + 0.5, indexing="ij")
    cx, cy = layout.centre(t)
    dx, dy = x - cx, y - cy
    if layout.wrap:  # the nearest copy of the centre on the torus
        dx = dx - layout.width * torch.round(dx / layout.width)
        dy = dy - layout.height * torch.round(dy / layout.height)
    hx, hy = half_extent(layout.shape, layout.radius)
    if layout.shape == "circle":
        dist = torch.sqrt(dx * dx + dy * dy) - layout.radius  # signed distance to the edge, pixels
    elif layout.shape == "square":
        dist = torch.maximum(dx.abs() - hx, dy.abs() - hy)
    else:  # the triangle is the intersection of three half-planes: its base and two sides
        slope = math.hypot(hx, 2 * hy)
        sides = (2 * hy * dx.abs() - hx * (dy + hy)) / slope  # signed distance to the slanted sides
        dist = torch.maximum(dy - hy, sides)
    return (0.5 - dist).clamp(0, 1).float()


def render_layout(layout: ClipLayout) -> torch.Tensor:
    """The clip ``[T, H, W, 3]`` in [0, 1] of ``layout``."""
    h, w = layout.height, layout.width
    y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    angle, amplitude = layout.gradient
    ramp = amplitude * (math.cos(angle) * x + math.sin(angle) * y)  # [H, W]
    background = (torch.tensor(layout.background) + ramp[..., None]).clamp(0.05, 0.6)  # [H, W, 3]
    rgb = torch.tensor(layout.rgb)
    out = torch.empty(layout.frames, h, w, 3)
    for t in range(layout.frames):
        alpha = shape_coverage(layout, t)[..., None]  # [H, W, 1]
        out[t] = background * (1 - alpha) + rgb * alpha
    return out


def render_clip(colour: str, shape: str, motion: str, seed: int, size: int | tuple[int, int] = 64,
                frames: int = 17, paths: str = "long") -> torch.Tensor:
    """One clip ``[T, H, W, 3]`` in [0, 1], deterministic from ``seed``; ``size`` is an int or (width, height)."""
    return render_layout(sample_layout(colour, shape, motion, seed, size, frames, paths))


# --------------------------------------------------------------------------------------------- dataset


def _clip_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def dataset_combinations(num: int, seed: int, split: str = "train") -> list[tuple[str, str, str]]:
    """The combination of each of ``num`` clips: every combination of the split equally often (±1), shuffled."""
    combos = split_combinations(split)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1]))
    out: list[tuple[str, str, str]] = []
    while len(out) < num:
        out += [combos[i] for i in rng.permutation(len(combos))]
    return out[:num]


def make_dataset(out_dir: str | Path, num: int, seed: int = 0, split: str = "train",
                 size: int | tuple[int, int] = 64, frames: int = 17, fps: float = 16,
                 manifest: str = "manifest.jsonl", paths: str = "long", captions: str = "templates") -> Path:
    """Write ``num`` clips of ``split`` as ``out_dir/videos/NNNNNN.mp4`` plus a manifest in the training schema
    (``.jsonl`` or ``.parquet``, by the name's suffix); returns the manifest's path. ``paths``: see
    :func:`sample_layout`. ``captions``: ``"templates"`` or ``"varied"`` (:func:`make_caption`); the clips are the
    same either way, only their captions differ."""
    if num < 1:
        raise ValueError(f"the number of clips must be at least 1; got {num}.")
    width, height = _size(size)
    if fps <= 0:
        raise ValueError(f"fps must be positive; got {fps}.")
    _check_paths(paths)  # fail before rendering anything
    _check_captions(captions)
    if Path(manifest).suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(f"manifest {manifest!r} must be named *.jsonl or *.parquet.")
    out_dir = Path(out_dir)
    records = []
    for index, (colour, shape, motion) in enumerate(dataset_combinations(num, seed, split)):
        rng = _clip_rng(seed, index)
        caption = make_caption(colour, shape, motion, rng)  # drawn either way, so the clip's seed stays the same
        clip = render_clip(colour, shape, motion, int(rng.integers(2**63 - 1)), (width, height), frames, paths)
        if captions != "templates":
            caption = make_caption(colour, shape, motion, np.random.default_rng(np.random.SeedSequence(
                [seed, index, 1])), captions)
        path = save_video(clip, out_dir / "videos" / f"{index:06d}.mp4", fps=fps, **MP4_OPTIONS).absolute()
        records.append(ClipRecord(path=str(path), caption=caption, frames=frames, fps=float(fps), width=width,
                                  height=height, id=f"synthetic-{split}-{seed}-{index:06d}"))
    return write_manifest(records, out_dir / manifest)


__all__ = ["COLOURS", "SHAPES", "MOTIONS", "SHAPE_NOUNS", "VERBS", "combinations", "is_held_out",
           "split_combinations", "canonical_caption", "heldout_prompts", "make_caption", "parse_caption",
           "CAPTION_KINDS", "VARIED_GRAMMAR", "UNWRITTEN_PAIRS", "can_generate", "normalize_caption",
           "PATHS", "ClipLayout", "sample_layout", "render_layout", "shape_coverage", "half_extent", "render_clip",
           "dataset_combinations", "make_dataset", "DIRECTED_VERBS", "DIRECTION_FORMS", "DIRECTION_PHRASES",
           "MAX_CAPTION_CHARS", "MOTION_VERBS", "MP4_OPTIONS", "SPLITS"]
