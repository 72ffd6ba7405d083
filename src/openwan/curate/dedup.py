"""Deduplication and clusters: perceptual hashes of key frames per clip, then two global stages over all clips.

- :class:`DedupHashStage` (per clip, section ``dedup``): ``dedup_phash``, the 64-bit DCT perceptual hash
  (``imagehash.phash``) of each key frame, as hex strings.
- :class:`DedupStage` (global, section ``dedup``): two clips are *near-duplicates* when at least
  ``min_matching_frames`` of their key frames (taken at the same relative positions) are within
  ``max_hash_distance`` bits of each other, and *semantic duplicates* when the cosine of their ``embed_vector``
  (same ``embed_model``) is at least ``semantic_threshold``. Clips are visited best first (``keep``); a clip that
  matches an earlier survivor is rejected as its duplicate, every other clip survives. So the reason always
  names a survivor the clip matches directly, and a chain of small differences never merges distinct clips.
- :class:`ClusterStage` (global, section ``clusters``): k-means on ``embed_vector`` (the paper uses 100 clusters)
  -> ``cluster_id`` and ``cluster_size``, so sampling can balance the long tail.

Cost: both comparisons are exact and vectorised in row blocks, each pair once. Hashes: XOR and popcount of uint64
words, O(n² F / 2) for n clips of F key frames. Embeddings: float32 matrix products, O(n² D / 2) for D numbers.
Memory O(block x n). An index of hash bands (the pigeonhole bound) does not help at this radius: 10 bits of 64
need 11 bands of about 6 bits, and a 6-bit band collides for 1 in 64 random pairs, so its candidates are still a
fixed share of all n² pairs. Measured numbers are in docs/curation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.embed import key_frame_indices

HASH_BITS = 64
_BLOCK = 512  # rows compared at once


def _rejected(row: dict[str, Any]) -> bool:
    """A row already rejected by an earlier stage (its ``reasons`` list is not empty) takes no part: it can neither
    survive nor be a duplicate of a kept clip."""
    return bool(row.get("reasons"))


@dataclass(frozen=True)
class DedupConfig:
    """Section ``dedup``. ``frames``: key frames hashed per clip. ``max_hash_distance``: bits (of 64) two key frames
    may differ by and still match. ``min_matching_frames``: matching key frames needed for a near-duplicate (capped by
    the shorter clip's key frames). ``semantic_threshold``: cosine of ``embed_vector`` at or above which two clips are
    semantic duplicates (None: skip). ``keep``: which clip of a duplicate group survives: the highest
    ``quality_score`` (then the longest, then the first clip_id), the longest (then the first), or the first clip_id.
    """

    enabled: bool = True
    frames: int = 3
    max_hash_distance: int = 10
    min_matching_frames: int = 2
    semantic_threshold: float | None = 0.97
    keep: Literal["quality", "longest", "first"] = "quality"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"dedup.frames must be >= 1 (key frames hashed per clip); got {self.frames}.")
        if not 0 <= self.max_hash_distance < HASH_BITS:
            raise ValueError(f"dedup.max_hash_distance must be in [0, {HASH_BITS - 1}] bits; "
                             f"got {self.max_hash_distance}.")
        if not 1 <= self.min_matching_frames <= self.frames:
            raise ValueError(f"dedup.min_matching_frames must be in [1, dedup.frames = {self.frames}]; "
                             f"got {self.min_matching_frames}.")
        if self.semantic_threshold is not None and not 0 < self.semantic_threshold <= 1:
            raise ValueError(f"dedup.semantic_threshold must be in (0, 1] or null; got {self.semantic_threshold}.")


class DedupHashStage:
    """Per-clip part of ``dedup``: ``dedup_phash``, the key frames' perceptual hashes (16 hex digits each)."""

    name = "dedup"
    resources = Resources(num_cpus=1.0)

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        import imagehash
        from PIL import Image

        picks = key_frame_indices(len(frames), self.cfg.frames)
        hashes = [str(imagehash.phash(Image.fromarray(frames.frames[i]))) for i in picks]
        return StageOutput(values={"dedup_phash": hashes})


def _hash_matrix(rows: list[dict[str, Any]], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hashes [n, frames] and a mask [n, frames] of the positions a clip has."""
    hashes = np.zeros((len(rows), frames), dtype=np.uint64)
    valid = np.zeros((len(rows), frames), dtype=bool)
    for i, row in enumerate(rows):
        values = list(row["dedup_phash"])[:frames]
        try:
            hashes[i, :len(values)] = [int(h, 16) for h in values]
        except (TypeError, ValueError):
            raise ValueError(f"clip {row.get('clip_id')} has dedup_phash {values!r}; expected hex strings "
                             f"(re-run the dedup hash stage).") from None
        valid[i, :len(values)] = True
    return hashes, valid


def hash_matches(hashes: np.ndarray, valid: np.ndarray, max_distance: int, min_frames: int
                 ) -> list[tuple[int, int, int, int, int]]:
    """Pairs of near-duplicate clips: (i, j, worst distance among the matching key frames, matching frames,
    compared frames), i < j. Key frames are compared position by position; a pair needs
    ``min(min_frames, compared frames)`` matches."""
    n, frames = hashes.shape
    out = []
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        cols = slice(start, n)  # each pair once: the block's rows against themselves and every later row
        count = np.zeros((stop - start, n - start), dtype=np.uint8)
        compared = np.zeros_like(count)
        for f in range(frames):
            both = valid[start:stop, f, None] & valid[None, cols, f]  # [b, m]
            close = np.bitwise_count(hashes[start:stop, f, None] ^ hashes[None, cols, f]) <= max_distance
            count += close & both
            compared += both
        ok = (count >= np.minimum(min_frames, compared)) & (compared > 0)
        ok &= np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]  # never a clip with itself
        for bi, bj in zip(*np.nonzero(ok)):
            i, j = start + int(bi), start + int(bj)
            dist = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
            matched = valid[i] & valid[j] & (dist <= max_distance)
            out.append((i, j, int(dist[matched].max()), int(count[bi, bj]), int(compared[bi, bj])))
    return out


def semantic_matches(vectors: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, cosine), i < j, of unit vectors [n, D] whose cosine is at least ``threshold`` (float32
    products in row blocks)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    out = []
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        cosine = vectors[start:stop] @ vectors[start:].T  # [b, n - start]
        ok = (cosine >= threshold) & (np.arange(start, n)[None, :] > np.arange(start, stop)[:, None])
        out += [(start + int(bi), start + int(bj), float(cosine[bi, bj])) for bi, bj in zip(*np.nonzero(ok))]
    return out


def _priority(row: dict[str, Any], keep: str) -> tuple:
    duration = float(row.get("duration") or 0.0)
    clip_id = str(row.get("clip_id"))
    if keep == "first":
        return (clip_id,)
    if keep == "longest":
        return (-duration, clip_id)
    quality = row.get("quality_score")
    return (-(float(quality) if quality is not None else -np.inf), -duration, clip_id)


class DedupStage:
    """Global part of ``dedup``: for each row ``dedup_group`` (the clip_id of its group's survivor; None for rows
    not compared) and ``dedup_of`` (the survivor a duplicate copies; None otherwise), and for each duplicate a
    reason naming the survivor and the measured distance or cosine."""

    name = "dedup"

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def __call__(self, rows: list[dict[str, Any]]) -> list[StageOutput]:
        cfg = self.cfg
        live = [i for i, r in enumerate(rows) if not _rejected(r) and r.get("dedup_phash")]
        edges: dict[tuple[int, int], str] = {}
        hashes, valid = _hash_matrix([rows[i] for i in live], cfg.frames)
        for a, b, worst, count, compared in hash_matches(hashes, valid, cfg.max_hash_distance,
                                                         cfg.min_matching_frames):
            edges[live[a], live[b]] = (f"hash distance {worst} <= {cfg.max_hash_distance} in {count} of {compared} "
                                       f"key frames")
        if cfg.semantic_threshold is not None:
            for model in sorted({str(rows[i].get("embed_model")) for i in live if rows[i].get("embed_vector")}):
                members = [i for i in live if rows[i].get("embed_vector") and str(rows[i].get("embed_model")) == model]
                vectors = np.asarray([rows[i]["embed_vector"] for i in members], dtype=np.float64)
                for a, b, cos in semantic_matches(vectors, cfg.semantic_threshold):
                    edges.setdefault((members[a], members[b]), f"cosine {cos:.3f} >= {cfg.semantic_threshold}")
        neighbours: dict[int, dict[int, str]] = {}
        for (a, b), why in edges.items():
            neighbours.setdefault(a, {})[b] = why
            neighbours.setdefault(b, {})[a] = why
        order = sorted(live, key=lambda i: _priority(rows[i], cfg.keep))
        rank = {i: r for r, i in enumerate(order)}
        survivor_of: dict[int, int] = {}
        for i in order:
            earlier = [j for j in neighbours.get(i, {}) if rank[j] < rank[i] and survivor_of[j] == j]
            survivor_of[i] = min(earlier, key=rank.__getitem__) if earlier else i
        out = []
        for i in range(len(rows)):
            if i not in survivor_of:
                out.append(StageOutput(values={"dedup_group": None, "dedup_of": None}))
                continue
            keep_id = str(rows[survivor_of[i]].get("clip_id"))
            if survivor_of[i] == i:
                out.append(StageOutput(values={"dedup_group": keep_id, "dedup_of": None}))
                continue
            why = neighbours[i][survivor_of[i]]
            kind = "near-duplicate" if why.startswith("hash") else "semantic duplicate"
            out.append(StageOutput(values={"dedup_group": keep_id, "dedup_of": keep_id},
                                   reasons=[f"{kind} of {keep_id} ({why})"]))
        return out


@dataclass(frozen=True)
class ClusterConfig:
    """Section ``clusters``: k-means on ``embed_vector`` with ``k`` clusters (capped by the number of clips) and a
    fixed ``seed``."""

    enabled: bool = True
    k: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"clusters.k must be >= 1; got {self.k}.")


class ClusterStage:
    """Global stage ``clusters``: ``cluster_id`` (0..k-1) and ``cluster_size`` (clips in that cluster) for each row
    with an ``embed_vector`` that no earlier stage rejected; None for the others."""

    name = "clusters"

    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg

    def __call__(self, rows: list[dict[str, Any]]) -> list[StageOutput]:
        from openwan.curate.scorer import cluster_embeddings

        live = [i for i, r in enumerate(rows) if not _rejected(r) and r.get("embed_vector")]
        models = sorted({str(rows[i].get("embed_model")) for i in live})
        if len(models) > 1:
            raise ValueError(f"clusters needs embeddings of one model; the rows hold {', '.join(models)}. "
                             f"Re-run embed with one embed.embedder.")
        labels = cluster_embeddings(np.asarray([rows[i]["embed_vector"] for i in live], dtype=np.float64),
                                    self.cfg.k, self.cfg.seed) if live else np.zeros(0, dtype=np.int64)
        sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
        out = [StageOutput(values={"cluster_id": None, "cluster_size": None}) for _ in rows]
        for i, label in zip(live, labels):
            out[i] = StageOutput(values={"cluster_id": int(label), "cluster_size": int(sizes[label])})
        return out


__all__ = ["DedupConfig", "DedupHashStage", "DedupStage", "ClusterConfig", "ClusterStage", "hash_matches",
           "semantic_matches", "HASH_BITS"]
