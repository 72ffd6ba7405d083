"""The raw-video dataset, the up-front file scan, and the collate function shared with the cached dataset.

A clip is decoded with PyAV at the target fps from its start, cut to its bucket's frame count, cut to the record's
crop box (source pixels) when it has one, resized to cover the bucket and center-cropped. A file that cannot be
read never stops training: the item comes back as None, the path is logged once with the reason and kept in
``bad_files``, and ``collate`` drops it. DataLoader workers each hold their own ``bad_files``; call
``scan_manifest`` in the main process to name every bad file up front.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import torch
from PIL import Image
from torch.utils.data import Dataset

from openwan.data.buckets import Bucket, clip_frames_at
from openwan.data.manifest import ClipRecord
from openwan.data.video import IMAGE_SUFFIXES, read_image, read_video

logger = logging.getLogger(__name__)

SHARED_KEYS = ("context_empty",)  # the same tensor for every item: collate keeps one, not a stack


def load_clip(record: ClipRecord, bucket: Bucket, fps: float = 16) -> torch.Tensor:
    """The clip as ``[3, T, H, W]`` in [-1, 1] for ``bucket``: sampled at ``fps`` from ``record.start``, its
    first ``bucket.frames`` frames, cut to ``record.crop`` (left, top, right, bottom in source pixels) when set,
    resized to cover the bucket and center-cropped.

    Raises ValueError with the reason when the file is missing, unreadable, or too short for the bucket (by
    the record's bounds, or by what the file really holds).
    """
    size = (bucket.width, bucket.height)
    if record.is_image:
        if bucket.frames != 1:
            raise ValueError(f"{record.path} is an image but its bucket has {bucket.frames} frames.")
        frames = read_image(record.path, size=size, crop=record.crop)  # [1, H, W, 3]
    else:
        if clip_frames_at(record, fps) < bucket.frames:
            raise ValueError(f"{record.path}: the clip's bounds hold {clip_frames_at(record, fps)} frames at {fps} "
                             f"fps; its bucket needs {bucket.frames} (assign buckets with assign_bucket).")
        start = math.ceil((record.start or 0.0) * fps - 1e-6)  # output frame k is at time k / fps
        frames = read_video(record.path, fps=fps, size=size, max_frames=bucket.frames, start_frame=start,
                            crop=record.crop)
        if frames.shape[0] < bucket.frames:
            raise ValueError(f"{record.path} gives {frames.shape[0]} frames at {fps} fps from "
                             f"{record.start or 0.0:.3f} s; its bucket needs {bucket.frames}.")
    return frames.permute(3, 0, 1, 2).mul(2).sub(1).contiguous()  # [3, T, H, W] in [-1, 1]


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


class VideoClipDataset(Dataset):
    """Raw clips as ``{"key", "video" [3, T, H, W] in [-1, 1], "caption"}``, or None for an unreadable file.

    ``bucket_of_index[i]`` is the bucket of ``records[i]`` (e.g. from ``assign_buckets``); indices with None
    are not drawn by ``BucketBatchSampler``. ``bad_files`` maps path -> reason for the files this process failed
    to read (each is logged once).
    """

    def __init__(self, records: Sequence[ClipRecord], bucket_of_index: Sequence[Bucket | None] | Mapping,
                 fps: float = 16) -> None:
        if len(bucket_of_index) != len(records):
            raise ValueError(f"bucket_of_index has {len(bucket_of_index)} entries for {len(records)} records; "
                             "give one bucket (or None) per record, e.g. from assign_buckets(records, buckets).")
        self.records = list(records)
        self.buckets = bucket_of_index
        self.fps = fps
        self.bad_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[dict | None, str | None]:
        """(item, None), or (None, reason) when the file cannot be used; no logging, no bookkeeping."""
        record, bucket = self.records[index], self.buckets[index]
        if bucket is None:
            raise ValueError(f"record {index} ({record.path}) has no bucket; draw indices with BucketBatchSampler, "
                             "which skips unassigned clips.")
        try:
            video = load_clip(record, bucket, self.fps)
        except Exception as err:  # any decoder failure means a bad file, never a stopped run
            return None, _reason(err)
        return {"key": record.id, "video": video, "caption": record.caption}, None

    def __getitem__(self, index: int) -> dict | None:
        item, reason = self.load(index)
        if reason is not None:
            self._report(self.records[index].path, reason)
        return item

    def _report(self, path: str, reason: str) -> None:
        if path not in self.bad_files:
            logger.warning("skipping unreadable file %s: %s", path, reason)
        self.bad_files[path] = reason


def collate(items: Sequence[dict | None]) -> dict | None:
    """Stack dataset items into a batch dict, dropping None (unreadable) items; None when none is left.

    Tensors are stacked on a new batch dim, other values are listed, and ``context_empty`` (the same for every
    item) is kept once.
    """
    items = [item for item in items if item is not None]
    if not items:
        return None
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in SHARED_KEYS:
            batch[key] = values[0]
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"items of one batch have different '{key}' shapes {sorted(shapes)}; draw batches "
                                 "with BucketBatchSampler so each batch has one bucket.")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


# ------------------------------------------------------------------------------------------- scan


def probe_file(path: str | Path) -> str | None:
    """Why the file cannot be used (None: it opens and its first frame decodes). Cheap: headers plus one frame."""
    path = Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                image.verify()  # checks structure and checksums without a full decode
            return None
        with av.open(str(path)) as container:
            if not container.streams.video:
                return f"{path} has no video stream"
            next(container.decode(container.streams.video[0]))
    except StopIteration:
        return f"{path} has no decodable frame"
    except Exception as err:  # PyAV and Pillow raise many kinds for damaged files
        return f"{path} is unreadable ({type(err).__name__}: {err})"
    return None


def scan_manifest(records: Sequence[ClipRecord], workers: int = 4) -> tuple[list[ClipRecord], dict[str, str]]:
    """Probe every record's file up front: (usable records, {path: reason} for the others), each bad one logged.

    Finds missing, corrupt and truncated files (an mp4 cut short loses its index and fails to open); damage
    past the first frame of a file that opens is caught later by the dataset.
    """
    paths = sorted({r.path for r in records})
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = dict(zip(paths, pool.map(probe_file, paths)))
    bad = {path: reason for path, reason in reasons.items() if reason is not None}
    for reason in bad.values():
        logger.warning("bad file: %s", reason)
    return [r for r in records if r.path not in bad], bad


__all__ = ["VideoClipDataset", "collate", "load_clip", "scan_manifest", "probe_file", "SHARED_KEYS"]
