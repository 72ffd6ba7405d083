"""Where a stream's frames go while it runs: a growing mp4, raw frames on a pipe, an MJPEG server on localhost.

:class:`GrowingVideo` writes a fragmented mp4 (H.264, x264's zero-latency tuning, one fragment per frame) straight
to its path, flushed after every frame: a player can open the file while it grows, and a killed process leaves a
valid file holding every frame written before the kill but the last one (the muxer writes a frame's fragment when
the next frame's time is known). This is the one writer in openwan that does not go through a temporary file: the
file is meant to be read while it is written. Opened with ``keep=N`` on an existing file, it first copies that
file's first N - len(tail) frames into the new one (decoded and re-encoded), then ``tail`` (the last frames the
stream handed out, kept in its state), so a resumed stream continues the same file.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import torch

from openwan.data.video import iter_video_frames
from openwan.fileio import forget_temp, make_temp, publish

FRAME_BOUNDARY = "openwanframe"


def to_rgb24(frames: torch.Tensor) -> np.ndarray:
    """[T, H, W, 3] in [0, 1] -> uint8 [T, H, W, 3]."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class GrowingVideo:
    """An mp4 that is valid at every frame (see the module doc); ``write`` chunks, ``close`` at the end."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], keep: int = 0,
                 tail: torch.Tensor | None = None, crf: int = 18):
        self.path, self.fps = Path(path), fps
        width, height = size
        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sizes; got {width}x{height}.")
        old = None
        if keep:
            if not self.path.is_file():
                raise ValueError(f"the saved stream has {keep} frames out but {self.path} is missing; give the "
                                 "--save-file the stream wrote before, or start a new --state file.")
            old = make_temp(self.path, suffix=self.path.suffix)
            publish(self.path, old)  # the old file moves aside until its frames are copied
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_every_frame", "flush_packets": "1"})
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.codec_context.time_base = 1 / rate
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency",
                                "g": str(max(1, round(fps)))}
        self.frames_written = 0
        if old is not None:
            tail = tail[-keep:] if tail is not None else torch.zeros(0, height, width, 3)
            self._copy(old, keep - len(tail), tail)

    def _copy(self, old: str, keep: int, tail: torch.Tensor) -> None:
        try:
            for frame in iter_video_frames(old):
                if self.frames_written == keep:
                    break
                self.write(frame[None].float() / 255)
            if self.frames_written < keep:
                raise ValueError(f"{self.path} holds {self.frames_written} frames but the saved stream has "
                                 f"{keep + len(tail)} out; give the --save-file the stream wrote, or start a new "
                                 "--state file.")
            self.write(tail)
        except BaseException:
            self._container.close()
            publish(old, self.path)  # put the old file back
            raise
        forget_temp(old)

    def write(self, frames: torch.Tensor) -> None:
        """Append frames [T, H, W, 3] in [0, 1]; each is in the file when this returns."""
        for image in to_rgb24(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames_written
            self._container.mux(self._stream.encode(frame))
            self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder and finish the file."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self.path


class RawPreview:
    """rgb24 frames to a binary stream (stdout) for ``ffplay -f rawvideo ...`` (see :meth:`command`)."""

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stdout.buffer

    @staticmethod
    def command(size: tuple[int, int], fps: float) -> str:
        """The ffplay command line that shows this stream when it is piped in."""
        return f"ffplay -f rawvideo -pixel_format rgb24 -video_size {size[0]}x{size[1]} -framerate {fps:g} -i -"

    def write(self, frames: torch.Tensor) -> None:
        self.out.write(to_rgb24(frames).tobytes())
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class MJPEGServer:
    """An MJPEG stream (multipart/x-mixed-replace) at http://127.0.0.1:PORT/ showing the newest frame; port 0 takes a
    free one (see :attr:`url`). Viewers join and leave at any time; frames are JPEG-encoded once each."""

    def __init__(self, port: int, scale: int = 1):
        if not 0 <= port <= 65535:
            raise ValueError(f"--port {port} is not a TCP port; give one from 1024 to 65535 (0: any free port).")
        self.scale = scale
        self._jpeg: bytes | None = None
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={FRAME_BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                seen = 0
                try:
                    while True:
                        jpeg, seen = server._next(seen)
                        if jpeg is None:
                            return
                        self.wfile.write(f"--{FRAME_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         f"{len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args):  # no request log on stderr
                pass

        try:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as err:
            raise ValueError(f"--port {port}: cannot serve there ({err.strerror}); pick another port.") from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def _next(self, seen: int) -> tuple[bytes | None, int]:
        with self._cond:
            self._cond.wait_for(lambda: self._count > seen or self._closed)
            return (None, seen) if self._closed else (self._jpeg, self._count)

    def write(self, frames: torch.Tensor) -> None:
        """Publish frames [T, H, W, 3] in [0, 1]; viewers get the newest."""
        from PIL import Image

        for image in to_rgb24(frames):
            pil = Image.fromarray(image)
            if self.scale > 1:
                pil = pil.resize((pil.width * self.scale, pil.height * self.scale), Image.NEAREST)
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=90)
            with self._cond:
                self._jpeg, self._count = buf.getvalue(), self._count + 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()


def fsync_path(path: str | Path) -> None:
    """Push a file's written bytes to disk (the growing video, before its state is saved)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
