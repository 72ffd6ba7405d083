"""Video and image files through PyAV and Pillow.

Frames are float tensors ``[T, H, W, 3]`` in ``[0, 1]`` (channels last, as they are on disk). Writers stream:
frames go to the encoder as they arrive, so a video decoded chunk by chunk never sits in memory whole. Files
are written under a temporary name and renamed when complete, so an interrupted run leaves no half-written file.
Readers are bounded: a header that declares frames larger than :data:`MAX_FRAME_PIXELS` is refused, frames are
resized as they are decoded, and decoding stops at the frames asked for or at a pixel budget.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from openwan.fileio import atomic_write, forget_temp, make_temp, publish

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_WRITE_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi")  # containers that take H.264 (webm does not)
MAX_FRAME_PIXELS = 4096 * 2304  # a decoded source frame: 4K UHD and DCI 4K fit
MAX_READ_PIXELS = 2**28  # kept pixels of one read (3 GiB as float32 RGB): 291 frames at 1280x720


def check_writable(path: str | Path, create: bool = True, flag: str | None = None) -> Path:
    """Fail before any compute if ``path`` cannot be written. ``create`` makes a missing folder now; without it
    the nearest existing folder above must be writable (nothing is created). ``flag`` names the option in errors."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise ValueError(f"{name} is a folder; give a file name such as {path / ('out' + (path.suffix or '.mp4'))}.")
    folder = path.parent
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not folder.is_dir():
                raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write {name} ({err.strerror}); choose a writable location.") from None
    return path


def check_output(path: str | Path, suffixes: tuple[str, ...], flag: str) -> Path:
    """Fail before any compute if ``path`` has a suffix other than ``suffixes`` or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: openwan cannot write {path.suffix or 'a file without an extension'} "
                         f"here; use one of {', '.join(suffixes)}.")
    return check_writable(path, create=False, flag=flag)


PIX_FMTS = ("yuv420p", "yuv444p")


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] in [0, 1]; got shape {tuple(frames.shape)}.")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class VideoWriter:
    """Streams frames into an H.264 mp4; use as a context manager and call ``write`` per chunk.

    ``pix_fmt`` "yuv420p" (the default) plays everywhere; "yuv444p" keeps full-resolution colour (x264's High
    4:4:4 profile) for files that are training data rather than viewing copies: at 64×64, 4:2:0 chroma alone
    costs a coloured shape's edges ~34 dB PSNR.
    """

    def __init__(self, path: str | Path, fps: float = 16, crf: int = 18, preset: str = "medium",
                 pix_fmt: str = "yuv420p"):
        if pix_fmt not in PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {', '.join(PIX_FMTS)}; got {pix_fmt!r}.")
        self.path = check_writable(path)
        self.fps, self.crf, self.preset, self.pix_fmt = fps, crf, preset, pix_fmt
        self._tmp = make_temp(self.path, suffix=self.path.suffix or ".mp4")
        try:
            self._container = av.open(self._tmp, mode="w")
        except (av.error.FFmpegError, ValueError) as err:
            forget_temp(self._tmp)
            raise ValueError(f"cannot write a video to {self.path} ({err}); use one of "
                             f"{', '.join(VIDEO_WRITE_SUFFIXES)}.") from None
        self._stream = None
        self.frames_written = 0

    def _open_stream(self, height: int, width: int) -> None:
        if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"H.264 yuv420p needs even frame sizes; got {width}x{height}.")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.codec_context.time_base = 1 / rate
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._stream = stream

    def write(self, frames: torch.Tensor) -> None:
        array = _to_uint8(frames)
        if self._stream is None:
            self._open_stream(array.shape[1], array.shape[2])
        for i, image in enumerate(array):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames_written + i  # explicit timestamps: without them x264's output is not reproducible
            self._container.mux(self._stream.encode(frame))
        self.frames_written += len(array)

    def close(self) -> Path:
        published = False
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))  # flush delayed frames
            self._container.close()
            if self.frames_written == 0:
                raise ValueError(f"no frames were given for {self.path}; nothing was written.")
            publish(self._tmp, self.path)
            published = True
        finally:
            forget_temp(self._tmp, remove=not published)
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            forget_temp(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_image(frame: torch.Tensor, path: str | Path) -> Path:
    """One frame ``[H, W, 3]`` (or ``[1, H, W, 3]``) in [0, 1] to a PNG/JPEG, atomically."""
    path = check_writable(path)
    if frame.ndim == 3:
        frame = frame[None]
    image = Image.fromarray(_to_uint8(frame)[0])
    atomic_write(path, image.save, suffix=path.suffix or ".png")
    return path


def save_video(frames: torch.Tensor | Iterable[torch.Tensor], path: str | Path, fps: float = 16, **kw) -> Path:
    """Write ``[T, H, W, 3]`` frames in [0, 1] (or an iterable of such chunks) to an mp4; a 1-frame ``.png`` path
    writes an image instead."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not isinstance(frames, torch.Tensor):
            frames = torch.cat(list(frames))
        if frames.shape[0] != 1:
            raise ValueError(f"{path} is an image file but {frames.shape[0]} frames were given; use a .mp4 name.")
        return save_image(frames[0], path)
    chunks = [frames] if isinstance(frames, torch.Tensor) else frames
    with VideoWriter(path, fps=fps, **kw) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return writer.path


# -------------------------------------------------------------------------------------------- reading


def resize_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale ``[T, H, W, 3]`` frames to cover ``size`` = (width, height), then center-crop to it."""
    width, height = size
    t, h, w, _ = frames.shape
    scale = max(width / w, height / h)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = frames.permute(0, 3, 1, 2)  # [T, 3, H, W]
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1).contiguous()


def cut_frames(frames: torch.Tensor, crop: tuple[int, int, int, int], path: str | Path) -> torch.Tensor:
    """``[T, H, W, 3]`` frames cut to ``crop`` (left, top, right, bottom, in pixels); refuses a box outside them."""
    left, top, right, bottom = crop
    height, width = frames.shape[1:3]
    if right > width or bottom > height:
        raise ValueError(f"{path}: the crop {list(crop)} reaches outside the file's {width}x{height} frames; fix the "
                         "manifest's crop or its width/height.")
    return frames[:, top:bottom, left:right]


def read_image(path: str | Path, size: tuple[int, int] | None = None,
               crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """An image as ``[1, H, W, 3]`` in [0, 1]: cut to ``crop`` (left, top, right, bottom) when given, then
    optionally resized and center-cropped to ``size`` = (width, height)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give an image file (e.g. {path / 'first.png'}).")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; check the image path.") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); give a PNG or JPEG file.") from None
    frames = torch.from_numpy(array.copy()).float().div(255)[None]
    if crop is not None:
        frames = cut_frames(frames, crop, path)
    return resize_crop(frames, size) if size else frames


def _open_video(path: Path):
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a video file (e.g. {path / 'input.mp4'}).")
    if not path.is_file():
        raise ValueError(f"{path} does not exist; check the video path.")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable video ({err}); give an mp4 or similar file.") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream; give a video file.")
    return container


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"{path} declares {width}x{height} frames; the file is probably corrupt.")
    if width * height > MAX_FRAME_PIXELS:
        raise ValueError(f"{path} has {width}x{height} frames, more than the {MAX_FRAME_PIXELS} pixels a frame "
                         "openwan decodes; downscale it first (e.g. ffmpeg -i IN -vf scale=1280:-2 OUT).")


def read_header(path: str | Path) -> dict:
    """What a video's container declares, without decoding a frame: ``frames`` (0 when it does not say), ``fps``,
    ``width`` and ``height``. Refuses folders, unreadable files and frames above :data:`MAX_FRAME_PIXELS`."""
    path = Path(path)
    with _open_video(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames
        if not frames and rate:
            if stream.duration and stream.time_base:
                frames = math.floor(float(stream.duration * stream.time_base) * rate + 0.5)
            elif container.duration:
                frames = math.floor(container.duration / av.time_base * rate + 0.5)
        width, height = stream.codec_context.width, stream.codec_context.height
    _check_frame_size(path, width, height)
    return {"frames": int(frames or 0), "fps": rate, "width": width, "height": height}


def frames_at_fps(header: dict, fps: float | None) -> int:
    """How many frames :func:`iter_video_frames` yields for a video with this header at ``fps`` (0: unknown)."""
    frames, rate = header["frames"], header["fps"]
    if not frames or fps is None or not rate:
        return frames
    return math.floor((frames - 1) * fps / rate + 1e-6) + 1


def iter_video_frames(path: str | Path, fps: float | None = None) -> Iterator[torch.Tensor]:
    """Decoded frames ``[H, W, 3]`` (uint8 tensors), resampled to ``fps`` by nearest timestamp when given."""
    path = Path(path)
    container = _open_video(path)
    with container:
        stream = container.streams.video[0]
        _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                _check_frame_size(path, frame.width, frame.height)  # a stream may change size midway
                if fps is not None:
                    time = float(frame.time if frame.time is not None else 0.0)
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time:  # source slower than the target: repeat frames
                        yield torch.from_numpy(frame.to_ndarray(format="rgb24"))
                        next_time += 1.0 / fps
                yield torch.from_numpy(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as err:
            raise ValueError(f"{path} could not be decoded ({err}); the file is probably corrupt.") from None


def _over_budget(path: Path, frames: int, pixels: int, max_pixels: int) -> ValueError:
    gib = frames * pixels * 3 * 4 / 2**30
    return ValueError(f"{path}: reading {frames} frames of {pixels} pixels needs about {gib:.1f} GiB, more than "
                      f"the {max_pixels} pixel budget ({max_pixels * 12 / 2**30:.0f} GiB); use a shorter or "
                      "smaller video, fewer frames or a smaller size.")


def read_video(path: str | Path, *, fps: float | None = None, size: tuple[int, int] | None = None,
               max_frames: int | None = None, start_frame: int = 0, crop: tuple[int, int, int, int] | None = None,
               max_pixels: int = MAX_READ_PIXELS) -> torch.Tensor:
    """A video as ``[T, H, W, 3]`` float in [0, 1]: sampled at ``fps``, each frame cut to ``crop`` (left, top, right,
    bottom in source pixels) when given, then resized/cropped to ``size`` = (width, height).

    Decoding stops after ``max_frames``; each frame is resized as it is decoded (the same bicubic resize and crop
    as :func:`resize_crop` on the whole clip), so memory holds the kept frames at their final size. A read whose
    kept pixels would exceed ``max_pixels`` is refused from the header, before decoding, or as soon as it is.
    """
    path = Path(path)
    header = read_header(path)
    width, height = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (header["width"], header["height"])
    pixels = size[0] * size[1] if size else width * height
    expected = max(0, frames_at_fps(header, fps) - start_frame)
    if max_frames is not None:
        expected = min(expected, max_frames)
    if expected * pixels > max_pixels:
        raise _over_budget(path, expected, pixels, max_pixels)
    frames = []
    for i, frame in enumerate(iter_video_frames(path, fps)):
        if i < start_frame:
            continue
        frame = frame[None] if crop is None else cut_frames(frame[None], crop, path)  # uint8 [1, H, W, 3]
        frame = frame.float().div(255)
        frames.append(resize_crop(frame, size) if size else frame)
        if len(frames) * frames[-1][0].numel() // 3 > max_pixels:  # a header that undercounts its frames
            raise _over_budget(path, len(frames), frames[-1][0].numel() // 3, max_pixels)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise ValueError(f"{path} has no frames to read (from frame {start_frame}); give a longer video.")
    return torch.cat(frames)


def probe_video(path: str | Path) -> dict:
    """Frame count, fps, width and height of a video file, from its container (decoding only when the container
    does not count its frames)."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            return {"frames": frames, "fps": float(stream.average_rate or 0), "width": stream.width,
                    "height": stream.height}
    except (av.error.FFmpegError, OSError, IndexError) as err:
        raise ValueError(f"{path} is not a readable video ({err}).") from None
