"""Decoding a time range of a source video: every frame in it (:func:`iter_frames`), or the clip's analysis frames
sampled at a fixed rate and size (:func:`read_clip_frames`).

Times are *source seconds*: a frame's presentation time less the video stream's start time, so the first frame
is at 0 whatever the container's clock. Decoding seeks to the keyframe at or before the range's start and
decodes forward, so the same call always yields the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from openwan.curate.base import ClipFrames
from openwan.data.video import _check_frame_size, _open_video

EPS = 1e-6  # seconds: timestamps this close count as equal (rational time bases print as 0.0399999...)


def _check_range(path: Path, start: float, end: float) -> None:
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"{path}: a clip must start at a time >= 0 s; got start={start}.")
    if not end > start:
        raise ValueError(f"{path}: a clip must end after it starts; got start={start} s, end={end} s.")


def _decode_from(container, stream, start: float) -> Iterator[av.VideoFrame]:
    """Decoded frames from the keyframe at or before ``start`` seconds on. Where a container's seek lands after
    ``start`` (MPEG-TS seeks by bytes), it seeks again further back (1 s, 4 s, 16 s ... before), down to the
    first frame."""
    origin, base = stream.start_time or 0, stream.time_base
    back = 0.0
    while True:
        target = max(0.0, start - back)
        if target > 0:
            container.seek(origin + int(target / base), stream=stream, backward=True)
        elif back > 0:
            container.seek(0)  # the file's beginning, in the container's clock
        frames = container.decode(stream)
        first = next(frames, None)
        landed = None if first is None or first.pts is None else float((first.pts - origin) * base)
        if target == 0 or (landed is not None and landed <= start + EPS):
            if first is not None:
                yield first
                yield from frames
            return
        back = 1.0 if back == 0 else back * 4


def iter_frames(path: str | Path, start: float = 0.0, end: float = math.inf) -> Iterator[tuple[float, av.VideoFrame]]:
    """Every decoded frame of ``path`` whose time is in ``[start, end)`` (source seconds), in order, as
    ``(time, frame)``. ValueError naming the file when it cannot be opened or decoded."""
    path = Path(path)
    _check_range(path, start, end)
    container = _open_video(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: the output is the same, only faster
        _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)
        origin = stream.start_time or 0
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            frames = _decode_from(container, stream, start)
            previous = None
            for frame in frames:
                if frame.pts is not None:
                    time = float((frame.pts - origin) * stream.time_base)
                else:  # a frame without a timestamp follows the one before it
                    time = 0.0 if previous is None else previous + 1.0 / rate
                previous = time
                if time < start - EPS:
                    continue
                if time >= end - EPS:
                    break
                _check_frame_size(path, frame.width, frame.height)  # a stream may change size midway
                yield time, frame
        except av.error.FFmpegError as err:
            raise ValueError(f"{path} could not be decoded ({err}); the file is probably corrupt.") from None


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` px and the aspect kept; never larger than the input."""
    scale = min(1.0, short_side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(frame: av.VideoFrame, short_side: int) -> np.ndarray:
    import cv2

    image = frame.to_ndarray(format="rgb24")
    size = analysis_size(image.shape[1], image.shape[0], short_side)
    if size != (image.shape[1], image.shape[0]):
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def read_clip_frames(source: str | Path, start: float, end: float, *, fps: float = 8.0, short_side: int = 256,
                     max_frames: int | None = None) -> ClipFrames:
    """The frames of ``source`` in ``[start, end)`` seconds sampled at ``fps``: for each target time
    ``start + k / fps`` before ``end``, the decoded frame nearest to it (the earlier one on a tie), resized with
    area averaging so the short side is ``short_side`` px (never upscaled). ``times`` are those frames' source
    times (s). At most ``max_frames`` frames are kept. ValueError when the file cannot be read or the range holds
    no frame."""
    path = Path(source)
    if not fps > 0:
        raise ValueError(f"the analysis fps must be > 0; got {fps}.")
    if short_side < 1:
        raise ValueError(f"the analysis short side must be >= 1 px; got {short_side}.")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None; got {max_frames}.")
    _check_range(path, start, end)
    targets = math.ceil((end - start) * fps - EPS)
    if max_frames is not None:
        targets = min(targets, max_frames)
    frames: list[np.ndarray] = []
    times: list[float] = []
    size = None
    previous: tuple[float, av.VideoFrame] | None = None
    for time, frame in iter_frames(path, start, end):
        size = (frame.width, frame.height)
        while len(frames) < targets:
            target = start + len(frames) / fps
            if target > time + EPS:
                break  # a later frame may be nearer
            chosen = previous if previous is not None and target - previous[0] <= time - target + EPS else (time, frame)
            frames.append(_to_rgb(chosen[1], short_side))
            times.append(chosen[0])
        if len(frames) >= targets:
            break
        previous = (time, frame)
    if previous is not None:
        while len(frames) < targets:  # targets after the last frame in range take that frame
            frames.append(_to_rgb(previous[1], short_side))
            times.append(previous[0])
    if not frames:
        raise ValueError(f"{path} has no frames between {start:.3f} s and {end:.3f} s; check the clip's range "
                         "against the video's duration.")
    return ClipFrames(np.stack(frames), np.asarray(times, dtype=np.float64), float(fps), size)


__all__ = ["iter_frames", "read_clip_frames", "analysis_size"]
