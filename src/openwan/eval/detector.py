"""A detector for the synthetic shapes data: the moving object's colour, shape and motion in a video.

Each frame's background is modelled as a linear colour gradient (a plane per channel), fitted first to the
frame's border and then refitted to every pixel that agrees with it, so the object may touch the border and the
background may be tinted or shaded. The object is what lies far from that model:

- colour: the mean colour of the object's core pixels, named by the nearest of the six dataset colours;
- shape: a triangle (pointing up) has more of its mass low than high: its vertical profile is skewed (ideal
  skewness -0.57, circles and squares 0). Otherwise how much of its bounding box the object fills tells a square
  (~1) from a circle (~pi/4). Both measures are sums over a soft coverage, so the blur of anti-aliasing and of
  the codec's half-resolution chroma barely moves them;
- motion: the centroid's displacement over the clip (a least-squares line through the per-frame centroids):
  "still" below ``still_threshold`` (a fraction of the frame side), else its dominant direction.

``wrap=True`` reads videos whose object wraps around the frame's edges (``openwan data synth --paths wrap``, and
the long streams trained on it): the frame is a torus, each centroid a circular mean (so an object split across
an edge has one centre), the path is unwrapped step by step (each step the shortest way round), and fill and
skewness are measured with each frame rolled to put the object in the middle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from openwan.data.synthetic import COLOURS

MIN_CONTRAST = 0.1  # an object must differ from the background by this much (RGB distance) to be seen
CIRCLE_FILL, SQUARE_FILL = math.pi / 4, 1.0
TRIANGLE_SKEW = -0.5657  # skewness of a density growing linearly from 0: -2 sqrt(2) / 5


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` saw; attributes are None when no object stands out from the background."""

    colour: str | None
    shape: str | None
    motion: str | None
    rgb: tuple[float, float, float] | None = None  # mean colour of the object's core
    fill_ratio: float | None = None  # object area / bounding-box area (median over frames)
    skewness: float | None = None  # of the object's vertical profile (median over frames); < 0: wider below
    displacement: tuple[float, float] | None = None  # (dx, dy) over the clip, fractions of width and height
    contrast: float = 0.0  # the object's RGB distance from the background

    def matches(self, colour: str, shape: str, motion: str) -> dict[str, bool]:
        """Which attributes agree with the target, and whether all three do."""
        hits = {"colour": self.colour == colour, "shape": self.shape == shape, "motion": self.motion == motion}
        return {**hits, "all": all(hits.values())}

    def to_dict(self) -> dict:
        """JSON-shaped: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def detect(video: torch.Tensor, still_threshold: float = 0.1, wrap: bool = False) -> Detection:
    """Detect the object in ``video`` [T, H, W, 3] in [0, 1] (a single frame [H, W, 3] gives motion None);
    ``wrap``: the object may wrap around the frame's edges (see the module's docstring)."""
    frames = video.detach().float().cpu()
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video must be [T, H, W, 3] in [0, 1]; got shape {tuple(video.shape)}.")
    dist = (frames - fit_background(frames)).norm(dim=-1)  # [T, H, W]
    contrast = _quantile(dist, 0.99)
    # Soft coverage: sums over it survive the blur of anti-aliasing and of the codec's half-resolution chroma,
    # where a hard threshold would not. Faint residuals are background noise, not object.
    alpha = (dist / max(contrast, 1e-6)).clamp(0, 1) * (dist > 0.25 * contrast)  # [T, H, W]
    seen = (dist > 0.5 * contrast).flatten(1).any(1)  # [T]
    if contrast < MIN_CONTRAST or not bool(seen.any()):
        return Detection(None, None, None, contrast=round(contrast, 4))
    core = dist > 0.75 * contrast
    rgb = frames[core].mean(0)  # [3]
    centroids = _torus_centroids(alpha) if wrap else _centroids(alpha)  # [T, 2], fractions of the frame
    shapes = _centred(alpha, centroids) if wrap else alpha
    fill = _median([_fill_ratio(a) for a, s in zip(shapes, seen) if s])
    skew = _median([_vertical_skewness(a) for a, s in zip(shapes, seen) if s])
    displacement = _displacement(centroids, seen, wrap) if frames.shape[0] > 1 else None
    return Detection(colour=nearest_colour(rgb), shape=classify_shape(fill, skew),
                     motion=None if displacement is None else motion_from_displacement(displacement, still_threshold),
                     rgb=tuple(round(float(v), 4) for v in rgb), fill_ratio=round(fill, 4), skewness=round(skew, 4),
                     displacement=None if displacement is None else tuple(round(v, 4) for v in displacement),
                     contrast=round(contrast, 4))


# ------------------------------------------------------------------------------------------ background


def fit_background(frames: torch.Tensor, iterations: int = 3, border: int = 2) -> torch.Tensor:
    """A per-frame linear colour gradient [T, H, W, 3] fitted to the background of ``frames`` [T, H, W, 3]."""
    t, h, w, _ = frames.shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    design = torch.stack([torch.ones_like(x), x, y], -1).reshape(h * w, 3)  # [P, 3]
    pixels = frames.reshape(t, h * w, 3)  # [T, P, 3]
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[border:h - border, border:w - border] = False
    weights = ring.reshape(1, h * w).expand(t, -1).float()  # [T, P]
    for _ in range(iterations):
        plane = _weighted_plane(design, pixels, weights)  # [T, P, 3]
        residual = (pixels - plane).norm(dim=-1)  # [T, P]
        # Keep pixels that agree with the fit: a tolerance from the typical residual of the current background.
        typical = (residual * weights).sum(1) / weights.sum(1).clamp(min=1)  # [T]
        weights = (residual < (3 * typical).clamp(min=0.04)[:, None]).float()
    return _weighted_plane(design, pixels, weights).reshape(t, h, w, 3)


def _weighted_plane(design: torch.Tensor, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted least squares of ``pixels`` [T, P, 3] on ``design`` [P, K], per frame and channel."""
    gram = torch.einsum("tp,pi,pj->tij", weights, design, design)  # [T, K, K]
    gram = gram + 1e-6 * torch.eye(design.shape[1])  # a frame with almost no background still solves
    rhs = torch.einsum("tp,pi,tpc->tic", weights, design, pixels)  # [T, K, 3]
    coeffs = torch.linalg.solve(gram, rhs)  # [T, K, 3]
    return torch.einsum("pi,tic->tpc", design, coeffs)


# ------------------------------------------------------------------------------------------ attributes


def nearest_colour(rgb: torch.Tensor) -> str:
    """The dataset colour nearest to ``rgb`` [3] (Euclidean distance in RGB)."""
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names])  # [6, 3]
    return names[int((palette - rgb.float()).norm(dim=1).argmin())]


def classify_shape(fill: float, skewness: float) -> str:
    """Triangle when the vertical profile is skewed past half the ideal triangle's; else square or circle by the
    fill ratio, with the boundary halfway between their ideal ratios."""
    if skewness <= TRIANGLE_SKEW / 2:
        return "triangle"
    return "square" if fill >= (SQUARE_FILL + CIRCLE_FILL) / 2 else "circle"


def motion_from_displacement(displacement: tuple[float, float], still_threshold: float = 0.1) -> str:
    """left/right/up/down by the dominant axis of (dx, dy) (fractions of the frame; y points down), or still."""
    dx, dy = displacement
    if (dx * dx + dy * dy) ** 0.5 < still_threshold:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _fill_ratio(alpha: torch.Tensor) -> float:
    """Object area over its bounding box's area, from one frame's coverage [H, W].

    The box's height is the longest column of coverage and its width the longest row: for a square, circle or
    upward triangle these are the box's sides. Sums, unlike thresholded extents, are unchanged by blur.
    """
    area = float(alpha.sum())
    box = float(alpha.sum(0).max()) * float(alpha.sum(1).max())
    return area / max(box, 1e-6)


def _vertical_skewness(alpha: torch.Tensor) -> float:
    """Skewness of the coverage's row sums [H] about their mean (y pointing down)."""
    profile = alpha.sum(1).double()  # [H]
    y = torch.arange(len(profile), dtype=torch.float64)
    mass = profile.sum().clamp(min=1e-9)
    mean = (profile * y).sum() / mass
    var = (profile * (y - mean) ** 2).sum() / mass
    third = (profile * (y - mean) ** 3).sum() / mass
    return float(third / var.clamp(min=1e-9) ** 1.5)


def _centroids(alpha: torch.Tensor) -> torch.Tensor:
    """Each frame's coverage-weighted centre [T, 2] as (x / W, y / H), from coverage [T, H, W]."""
    t, h, w = alpha.shape
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    area = alpha.sum((1, 2)).clamp(min=1e-6)
    return torch.stack([(alpha * x).sum((1, 2)) / area / w, (alpha * y).sum((1, 2)) / area / h], -1)


def _torus_centroids(alpha: torch.Tensor) -> torch.Tensor:
    """Each frame's centre [T, 2] in [0, 1) on the torus: the circular mean of each axis's coverage profile."""
    centres = []
    for profile in (alpha.sum(1), alpha.sum(2)):  # [T, W]: mass per column (x); [T, H]: per row (y)
        angle = 2 * math.pi * torch.arange(profile.shape[1], dtype=torch.float32) / profile.shape[1]
        mean = torch.atan2((profile * angle.sin()).sum(1), (profile * angle.cos()).sum(1))
        centres.append((mean / (2 * math.pi)) % 1.0)
    return torch.stack(centres, -1)


def _centred(alpha: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Coverage [T, H, W] with each frame rolled (on the torus) to put its centroid in the middle."""
    t, h, w = alpha.shape
    out = torch.empty_like(alpha)
    for i in range(t):
        shift_x = w // 2 - int(round(float(centroids[i, 0]) * w))
        shift_y = h // 2 - int(round(float(centroids[i, 1]) * h))
        out[i] = alpha[i].roll((shift_y, shift_x), (0, 1))
    return out


def _displacement(centroids: torch.Tensor, seen: torch.Tensor, wrap: bool = False) -> tuple[float, float]:
    """The centroid's motion over the clip as (dx / W, dy / H): the slope of a line fitted to the centroids
    [T, 2] of the frames ``seen``; with ``wrap``, fitted to the path unwrapped step by step (each step between
    seen frames taken the shortest way round the torus)."""
    t = centroids.shape[0]
    times = torch.arange(t, dtype=torch.float32)[seen]
    points = centroids[seen]
    if len(times) < 2:
        return 0.0, 0.0
    if wrap:
        steps = points.diff(dim=0)
        points = torch.cat([points[:1], points[:1] + (steps - steps.round()).cumsum(0)])
    tc = times - times.mean()
    slope = (tc[:, None] * (points - points.mean(0))).sum(0) / (tc * tc).sum()  # [2], per frame
    dx, dy = (slope * (t - 1)).tolist()
    return dx, dy


def _quantile(values: torch.Tensor, q: float) -> float:
    flat = values.flatten()
    k = min(flat.numel(), max(1, round(q * flat.numel())))
    return float(flat.kthvalue(k).values)  # kthvalue has no size limit, unlike torch.quantile


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


__all__ = ["Detection", "detect", "fit_background", "nearest_colour", "classify_shape", "motion_from_displacement"]
