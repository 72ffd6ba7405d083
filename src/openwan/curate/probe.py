"""What a source video is, read from its container without decoding it, and a content hash to recognise it.

:func:`probe` opens the file with PyAV, reads the video stream's declared codec, pixel format, rate, size and
duration, and demuxes (never decodes) only the last second of packets to see that the data the container
declares is really there: an mp4 cut short with its index at the front opens fine but ends early. Every problem
is a ValueError naming the file, so the pipeline can record it as that source's error and go on.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import av

from openwan.data.video import _check_frame_size, _open_video

TAIL_S = 1.0  # seconds of packets demuxed at the end of the stream to check it is complete


def _data_ends(container, video, declared: float) -> tuple[float | None, float | None]:
    """(end of the last video packet, end of the last packet of any stream) in seconds from each stream's start,
    demuxing only from the video keyframe before ``declared`` - :data:`TAIL_S` seconds (the whole file when the
    container cannot seek). None where no packet is there."""
    try:
        container.seek((video.start_time or 0) + int(max(declared - TAIL_S, 0) / video.time_base), stream=video,
                       backward=True)
    except av.error.FFmpegError:
        container.seek(0)
    video_end = any_end = None
    for packet in container.demux():
        if packet.pts is None or not packet.size:
            continue
        stream = packet.stream
        end = float((packet.pts - (stream.start_time or 0) + (packet.duration or 0)) * stream.time_base)
        any_end = end if any_end is None else max(any_end, end)
        if stream.index == video.index:
            video_end = end if video_end is None else max(video_end, end)
    return video_end, any_end


def _mp4_without_index(path: Path) -> bool:
    """Whether the file opens with an mp4 ``ftyp`` box (so a failed open means a missing or cut index)."""
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == b"ftyp"
    except OSError:
        return False


def probe(path: str | Path) -> dict:
    """A video's container facts: ``codec`` and ``pix_fmt`` (str), ``fps`` (float), ``width`` and ``height``
    (px), ``duration`` (s), ``frames`` (declared count, else duration x fps rounded), ``has_audio`` (bool),
    ``bytes`` (file size) and ``bit_rate`` (bits/s). Decodes nothing.

    ValueError naming the file for a missing file, a folder, an empty file, a file that is not a readable video
    or is truncated, no video stream, zero duration or zero frame size.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-copy or remove it.")
    try:
        container = _open_video(path)  # refuses folders, missing files, unreadable files, no video stream
    except ValueError as err:
        if "not a readable video" in str(err) and _mp4_without_index(path):
            raise ValueError(f"{path} starts as an MP4/QuickTime file but its index (moov box) cannot be read; "
                             "the file is probably truncated, re-copy or remove it.") from None
        raise err from None
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        _check_frame_size(path, width, height)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise ValueError(f"{path} declares no frame rate; the file is probably corrupt.")
        # the video stream's own duration, else the container's (which may be a longer audio track's)
        own = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        declared = own or (container.duration or 0) / av.time_base
        if declared <= 0:
            raise ValueError(f"{path} declares a duration of {declared:g} s; give a video with frames in it.")
        try:
            video_end, any_end = _data_ends(container, stream, declared)
        except av.error.FFmpegError as err:
            raise ValueError(f"{path} cannot be read to its end ({err}); the file is probably truncated.") from None
        # the data must reach the declared end, give or take two frames (edit lists, rounding)
        reached = video_end if own else any_end
        if video_end is None or reached < declared - 2.0 / fps:
            found = "no video data" if video_end is None else f"data up to {reached:.2f} s"
            raise ValueError(f"{path} declares {declared:.2f} s but holds {found}; the file is truncated, "
                             "re-copy or remove it.")
        duration = own or video_end
        frames = int(stream.frames or math.floor(duration * fps + 0.5))
        size = path.stat().st_size
        info = {
            "codec": ctx.name,
            "pix_fmt": ctx.pix_fmt or "",
            "fps": fps,
            "width": width,
            "height": height,
            "duration": duration,
            "frames": frames,
            "has_audio": bool(container.streams.audio),
            "bytes": size,
            "bit_rate": int(container.bit_rate or round(size * 8 / duration)),
        }
    finally:
        container.close()
    return info


def content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes (read ``chunk`` bytes at a time): the same file under any name or time
    stamp gives the same hash, so a source already processed is recognised."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; give a video file.") from None
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; check the video path.") from None
    return digest.hexdigest()


__all__ = ["probe", "content_hash"]
