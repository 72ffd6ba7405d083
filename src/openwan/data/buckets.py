"""Shape buckets and the batch sampler that keeps every batch to one shape.

A bucket is (frames, height, width) in pixels; frames is 4n+1 (the VAE's causal layout) and 1 means an image.
Each clip goes to the bucket of closest aspect ratio that it has enough frames for (``assign_bucket``), and
``BucketBatchSampler`` draws batches of dataset indices from one bucket at a time, optionally by per-clip sampling
weights. The order of an epoch is a pure function of (seed, epoch), so a run resumed from ``state_dict()`` sees
exactly the batches it would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from openwan.data.manifest import ClipRecord

DEFAULT_ASPECT_RATIOS = (1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16)


@dataclass(frozen=True, order=True)
class Bucket:
    """One batch shape in pixels: ``frames`` (4n+1; 1 = image), ``height``, ``width``."""

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"a bucket's frame count must be 4n+1 (1, 5, 9, ...); got {self.frames}.")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"a bucket needs a positive size; got {self.width}x{self.height}.")

    @property
    def aspect(self) -> float:
        """Width / height."""
        return self.width / self.height

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    @property
    def latent_frames(self) -> int:
        """Latent frames of a clip of ``frames`` frames under Wan's causal VAE (1 + 4 per latent frame after it)."""
        return 1 + (self.frames - 1) // 4

    def as_list(self) -> list[int]:
        """[frames, height, width], as cache indices store it."""
        return [self.frames, self.height, self.width]


def buckets_for(area_px: int, frames: Sequence[int] = (1,), aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
                multiple: int = 16) -> list[Bucket]:
    """Buckets of about ``area_px`` pixels per frame, one per (frame count, aspect ratio), sides a multiple of
    ``multiple``; e.g. ``buckets_for(480 * 832, frames=(1, 81), aspect_ratios=(16 / 9, 9 / 16))``.

    Aspect ratios are width / height. Duplicates (ratios that round to the same size) appear once; sorted.
    """
    if multiple < 1 or area_px < multiple * multiple:
        raise ValueError(f"area_px={area_px} is smaller than one {multiple}x{multiple} block; raise area_px.")
    if not frames or not aspect_ratios or min(aspect_ratios) <= 0:
        raise ValueError("buckets_for needs at least one frame count and positive aspect ratios (width/height).")
    out = set()
    for ratio in aspect_ratios:
        height, width = _size_for(area_px, ratio, multiple)
        out.update(Bucket(f, height, width) for f in frames)
    return sorted(out)


def _size_for(area_px: int, ratio: float, multiple: int) -> tuple[int, int]:
    """(height, width), multiples of ``multiple``, closest to ``ratio`` and ``area_px`` together (log error)."""
    ideal = math.sqrt(area_px / ratio) / multiple
    best = None
    for h in {max(1, math.floor(ideal)), max(1, math.ceil(ideal))}:
        w = max(1, round(h * ratio))
        error = abs(math.log(w / h / ratio)) + abs(math.log(h * w * multiple * multiple / area_px))
        best = min(best or (error, h, w), (error, h, w))
    return best[1] * multiple, best[2] * multiple


def clip_frames_at(record: ClipRecord, fps: float) -> int:
    """How many frames the clip gives when sampled at ``fps`` within its [start, end) bounds.

    Matches ``openwan.data.video.iter_video_frames``: output frame k is the first source frame at or after time
    k / fps, for every k from the first at or after ``start``, before ``end``, and not after the source's last
    frame (from the record's frames and fps). Images (and 1-frame records) give 1.
    """
    if record.is_image or record.frames == 1:
        return 1
    eps = 1e-6
    last = (record.frames - 1) / record.fps  # time of the source's last frame
    first_k = math.ceil((record.start or 0.0) * fps - eps)
    last_k = math.floor(last * fps + eps)
    if record.end is not None:
        last_k = min(last_k, math.ceil(record.end * fps - eps) - 1)
    return max(0, last_k - first_k + 1)


def _aspect_distance(a: float, b: float) -> float:
    return round(abs(math.log(a / b)), 9)  # rounded so equal ratios tie exactly


def assign_bucket(record: ClipRecord, buckets: Sequence[Bucket], fps: float = 16) -> Bucket | None:
    """The bucket of closest aspect ratio (ties: more frames) among those whose frame count the clip fills at
    ``fps``; None when the clip is too short for every bucket. The aspect ratio is that of the record's crop box
    when it has one (``ClipRecord.frame_size``)."""
    available = clip_frames_at(record, fps)
    fitting = [b for b in buckets if b.frames <= available]
    if not fitting:
        return None
    width, height = record.frame_size
    aspect = width / height
    return min(fitting, key=lambda b: (_aspect_distance(b.aspect, aspect), -b.frames, b))


def assign_buckets(records: Sequence[ClipRecord], buckets: Sequence[Bucket], fps: float = 16) -> list[Bucket | None]:
    """``assign_bucket`` for every record (the list a dataset and the sampler take)."""
    if not buckets:
        raise ValueError("no buckets given; build some with buckets_for(area_px=..., frames=...).")
    return [assign_bucket(r, buckets, fps) for r in records]


# ------------------------------------------------------------------------------------------ sampler


class BucketBatchSampler:
    """Batches of dataset indices, each from one bucket, in an order fixed by (seed, epoch).

    ``assignments[i]`` is the bucket of dataset index i (None: never drawn). Per epoch, each bucket's indices are
    shuffled and cut into global batches of ``batch_size * world_size``; each global batch is split into one
    batch per rank, so at every step all ranks hold the same shape. Pass the data-parallel rank and size (ranks
    of one context-parallel group share the same data).

    ``image_video_ratio`` r: each step draws from image buckets with probability r, else from video buckets; a
    kind that runs out is reshuffled and drawn again, and the epoch has as many steps as there are global
    batches. None: all batches in one random order.

    ``drop_last`` drops each bucket's incomplete last batch; with False it is kept (world size 1) or filled up
    with items of the same bucket (world size > 1, so every rank gets a full batch).

    ``weights`` (one per dataset index, >= 0; None: every assigned index once per epoch): each epoch draws as many
    indices as there are assigned ones of positive weight, with replacement, index i with probability
    ``weights[i] / sum(weights)``; the draws then go into batches by bucket as above. Weight 0 is never drawn.

    Iterating yields the rest of the current epoch and then moves to the next; ``state_dict()`` holds
    (epoch, position). Behind a prefetching DataLoader the sampler runs ahead of the trainer: pass the number of
    batches the trainer took from the current pass as ``state_dict(consumed=n)``.
    """

    def __init__(self, assignments: Sequence[Bucket | None], batch_size: int, seed: int = 0,
                 image_video_ratio: float | None = None, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, weights: Sequence[float] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}.")
        if image_video_ratio is not None and not 0.0 <= image_video_ratio <= 1.0:
            raise ValueError(f"image_video_ratio is a probability in [0, 1]; got {image_video_ratio}.")
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.image_video_ratio, self.rank, self.world_size = image_video_ratio, rank, world_size
        self.weights = None if weights is None else _checked_weights(weights, assignments)
        if self.weights is not None:  # a weight of 0 is never drawn: as if unassigned
            assignments = [b if w > 0 else None for b, w in zip(assignments, self.weights)]
        self._groups = self._group(assignments)
        self.epoch, self.position = 0, 0
        self._pass = (0, 0)  # (epoch, start position) of the latest __iter__
        self._plan_cache: tuple[int, list[list[int]]] | None = None
        self._check_ratio()
        if not self._plan(0):
            raise ValueError(f"no full batch of {batch_size * world_size} items in any bucket; lower batch_size "
                             "or use drop_last=False.")

    @staticmethod
    def _group(assignments: Sequence[Bucket | None]) -> dict[Bucket, np.ndarray]:
        groups: dict[Bucket, list[int]] = {}
        for index, bucket in enumerate(assignments):
            if bucket is not None:
                groups.setdefault(bucket, []).append(index)
        return {b: np.asarray(groups[b], dtype=np.int64) for b in sorted(groups)}  # sorted: order-independent

    def _check_ratio(self) -> None:
        r = self.image_video_ratio
        if r is None:
            return
        kinds = {b.is_image for b in self._groups}
        if r > 0 and True not in kinds:
            raise ValueError(f"image_video_ratio={r} asks for image batches but no clip is in an image bucket; "
                             "add 1-frame buckets and images, or set image_video_ratio=None.")
        if r < 1 and False not in kinds:
            raise ValueError(f"image_video_ratio={r} asks for video batches but no clip is in a video bucket; "
                             "add video buckets, or set image_video_ratio=1.")

    # ---------------------------------------------------------------------------------- the plan

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, stream])))

    def _global_batches(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        size = self.batch_size * self.world_size
        order = indices[rng.permutation(len(indices))]
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        if batches and len(batches[-1]) < size:
            if self.drop_last:
                batches.pop()
            elif self.world_size > 1:  # fill up from the same bucket so no rank gets a short or empty batch
                batches[-1] = np.resize(np.concatenate([batches[-1], order]), size)
        return batches

    def _drawn(self, epoch: int) -> dict[Bucket, np.ndarray]:
        """The epoch's indices per bucket: each once (no weights), or drawn by weight with replacement."""
        if self.weights is None:
            return self._groups
        buckets = list(self._groups)
        indices = np.concatenate([self._groups[b] for b in buckets])
        owner = np.concatenate([np.full(len(self._groups[b]), k) for k, b in enumerate(buckets)])
        p = self.weights[indices] / self.weights[indices].sum()
        picks = self._rng(epoch, 2).choice(len(indices), size=len(indices), replace=True, p=p)
        return {b: indices[picks[owner[picks] == k]] for k, b in enumerate(buckets)}

    def _global_plan(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of the epoch, in order; the same on every rank."""
        rng = self._rng(epoch, 0)
        per_kind: dict[bool, list[np.ndarray]] = {True: [], False: []}
        for bucket, indices in self._drawn(epoch).items():
            per_kind[bucket.is_image] += self._global_batches(indices, rng)
        everything = per_kind[True] + per_kind[False]
        if self.image_video_ratio is None:
            return [everything[i] for i in rng.permutation(len(everything))]
        return self._mixed(per_kind, len(everything), epoch)

    def _mixed(self, per_kind: dict[bool, list[np.ndarray]], steps: int, epoch: int) -> list[np.ndarray]:
        rng = self._rng(epoch, 1)
        draws = rng.random(steps) < self.image_video_ratio  # True: an image step
        queues: dict[bool, list[np.ndarray]] = {True: [], False: []}
        plan = []
        for is_image in draws.tolist():
            if not queues[is_image]:  # this kind ran out: another shuffled pass over its batches
                pool = per_kind[is_image]
                if not pool:
                    kind = "image" if is_image else "video"
                    raise ValueError(f"image_video_ratio={self.image_video_ratio} needs {kind} batches but no "
                                     f"{kind} bucket fills a batch of {self.batch_size * self.world_size}; lower "
                                     "batch_size or change the ratio.")
                queues[is_image] = [pool[i] for i in rng.permutation(len(pool))][::-1]
            plan.append(queues[is_image].pop())
        return plan

    def _plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            n = self.batch_size
            local = [g[self.rank * n:(self.rank + 1) * n].tolist() for g in self._global_plan(epoch)]
            self._plan_cache = (epoch, local)
        return self._plan_cache[1]

    # ---------------------------------------------------------------------------------- iteration

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._plan(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        self._pass = (self.epoch, self.position)
        return self._batches(self._plan(self.epoch))

    def _batches(self, plan: list[list[int]]) -> Iterator[list[int]]:
        while self.position < len(plan):
            batch = plan[self.position]
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.load_state_dict({"epoch": epoch, "position": 0})

    def state_dict(self, consumed: int | None = None) -> dict:
        """{"epoch", "position"}: where to continue. ``consumed``: batches the trainer took from the latest
        pass over the sampler (needed when a DataLoader prefetches); None: everything yielded so far."""
        epoch, position = self.epoch, self.position
        if consumed is not None:
            epoch, start = self._pass
            position = start + consumed
            if position > len(self._plan(epoch)):
                raise ValueError(f"consumed={consumed} is more than the {len(self._plan(epoch)) - start} batches "
                                 "of this pass; count the batches taken since the last iter().")
        if position == len(self._plan(epoch)):  # an epoch taken to its end continues with the next
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict()``: the next batch is the one that followed when it was taken."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._pass = (self.epoch, self.position)


def _checked_weights(weights: Sequence[float], assignments: Sequence[Bucket | None]) -> np.ndarray:
    """``weights`` as float64, one per assignment, finite and >= 0, some positive among the assigned."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(assignments),):
        raise ValueError(f"weights has {w.size} entries for {len(assignments)} assignments; give one weight per "
                         "dataset index.")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"weights[{bad[0]}] is {w[bad[0]]}; sampling weights must be finite and >= 0.")
    if not any(b is not None and x > 0 for b, x in zip(assignments, w)):
        raise ValueError("every clip in a bucket has weight 0, so nothing can be drawn; give some clips a positive "
                         "weight.")
    return w


__all__ = ["Bucket", "buckets_for", "clip_frames_at", "assign_bucket", "assign_buckets", "BucketBatchSampler",
           "DEFAULT_ASPECT_RATIOS"]
