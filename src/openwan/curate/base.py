"""What every curation stage shares: the decoded frames of a clip, a stage's output, and the stage protocols.

A *clip* is a time range of a source video: a row (a plain dict) with at least ``source`` (the file path),
``start`` and ``end`` (seconds in the source), ``clip_id`` and the source's probe columns (``fps``, ``width``,
``height``, ...). Per-clip stages read the clip's frames, decoded once per clip at the analysis rate and size,
and return values (columns of the clip's row) and rejection reasons. Global stages (deduplication, clustering)
see every clip's row at once. Stages never decide alone whether a clip is kept: a clip with any reason is rejected,
and the pipeline records every reason, so what was rejected and why is always in the table.

This module imports nothing of openwan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Value = float | int | str | bool | list | None  # a column value: JSON-able, Parquet-able


@dataclass
class ClipFrames:
    """A clip's frames as the stages see them.

    ``frames`` is uint8 ``[T, H, W, 3]`` RGB, sampled at ``fps`` from the clip's start and resized so the short
    side is the analysis size (aspect kept); ``times`` are the frames' times in seconds *in the source*.
    ``source_size`` is the source's (width, height) before that resize; ``crop`` the box (left, top, right,
    bottom) in source pixels that the frames were cut to (the whole frame when no border was found).
    """

    frames: np.ndarray
    times: np.ndarray
    fps: float
    source_size: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"ClipFrames.frames must be uint8 [T, H, W, 3]; got {self.frames.dtype} "
                             f"{tuple(self.frames.shape)}.")
        if len(self.times) != len(self.frames):
            raise ValueError(f"ClipFrames has {len(self.frames)} frames but {len(self.times)} times.")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def scale(self) -> float:
        """Analysis pixels per source pixel (of the cropped region)."""
        width = self.source_size[0] if self.crop is None else self.crop[2] - self.crop[0]
        return self.frames.shape[2] / width

    def cropped(self, box: tuple[int, int, int, int]) -> ClipFrames:
        """These frames cut to ``box`` (left, top, right, bottom) given in *source* pixels."""
        left, top, right, bottom = box
        base = (0, 0) if self.crop is None else self.crop[:2]
        s = self.scale
        x0, y0 = round((left - base[0]) * s), round((top - base[1]) * s)
        x1, y1 = round((right - base[0]) * s), round((bottom - base[1]) * s)
        return ClipFrames(np.ascontiguousarray(self.frames[:, y0:y1, x0:x1]), self.times, self.fps,
                          self.source_size, box)


@dataclass
class StageOutput:
    """What a stage says of one clip: ``values`` (new columns, names prefixed by the stage, e.g.
    ``ocr_text_coverage``), ``reasons`` (empty, or why the clip must go: "text covers 23% of the frame (limit
    10%)"), and for the border stage the ``crop`` box in source pixels that later stages and training use."""

    values: dict[str, Value] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    crop: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Resources:
    """What one copy of a stage needs; the Ray executor reserves it (GPU stages get GPUs), in-process ignores it."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


class ClipStage(Protocol):
    """A per-clip stage. ``setup`` loads models once per worker (not in ``__init__``, so stages pickle cheaply to
    Ray workers); ``__call__`` must be deterministic: the same clip and frames give the same output."""

    name: str
    resources: Resources

    def setup(self) -> None: ...

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput: ...


class GlobalStage(Protocol):
    """A stage over all clips at once (deduplication, clustering): one output per row, in the rows' order."""

    name: str

    def __call__(self, rows: list[dict[str, Any]]) -> list[StageOutput]: ...


__all__ = ["ClipFrames", "StageOutput", "Resources", "ClipStage", "GlobalStage", "Value"]
