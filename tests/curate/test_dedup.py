"""Deduplication and clusters on real footage: copies, re-encodes, resizes, crops and brightened versions of clips
are found as duplicates of their original; different clips of one source and clips of different sources are not
merged."""

from __future__ import annotations

import numpy as np
import pytest

from curate.embed_corpus import CLEAN, EDITS, QUICK, build, clip_frames
from openwan.curate import dedup
from openwan.curate.dedup import (
    ClusterConfig,
    ClusterStage,
    DedupConfig,
    DedupHashStage,
    DedupStage,
    hash_matches,
    semantic_matches,
)
from openwan.curate.embed import EmbedConfig, EmbedStage


def _rows(folder, clean, originals):
    files = build(folder, clean, originals)
    hasher, embedder = DedupHashStage(DedupConfig()), EmbedStage(EmbedConfig(embedder="pixels"))
    rows = []
    for clip_id, (original, path) in sorted(files.items()):
        frames = clip_frames(path)
        row = {"clip_id": clip_id, "original": original, "duration": len(frames) / frames.fps,
               "quality_score": 1.0 if clip_id == original else 0.5}  # the original is the best copy
        for stage in (hasher, embedder):
            row.update(stage(row, frames).values)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _rows(tmp_path_factory.mktemp("dedup"), QUICK, ("bikes1", "car0"))


def _check(rows, cfg, min_recall=0.9):
    out = DedupStage(cfg)(rows)
    dups = [(r, o) for r, o in zip(rows, out) if r["clip_id"] != r["original"]]
    found = [r["clip_id"] for r, o in dups if o.values["dedup_of"] == r["original"]]
    assert len(found) / len(dups) >= min_recall, (found, [o.reasons for _, o in dups])
    for row, o in zip(rows, out):
        if row["clip_id"] == row["original"]:  # clean clips: none is a duplicate of anything
            assert o.reasons == [] and o.values == {"dedup_group": row["clip_id"], "dedup_of": None}, o
        elif o.values["dedup_of"] is not None:  # never merged with another clip
            assert rows[[r["clip_id"] for r in rows].index(o.values["dedup_of"])]["original"] == row["original"]
    return out, found


def test_copies_and_reencodes_are_near_duplicates(corpus):
    out, found = _check(corpus, DedupConfig(semantic_threshold=None))
    assert len(found) == 2 * len(EDITS)  # every edit of every original, by hashes alone
    reasons = {r["clip_id"]: o.reasons for r, o in zip(corpus, out)}
    assert reasons["bikes1_copy"] == ["near-duplicate of bikes1 (hash distance 0 <= 10 in 3 of 3 key frames)"]
    assert all(reasons[f"car0_{e}"][0].startswith("near-duplicate of car0 (hash distance ") for e in EDITS)


def test_semantic_duplicates_do_not_merge_clean_clips(corpus):
    _, found = _check(corpus, DedupConfig(max_hash_distance=0, min_matching_frames=3))  # embeddings do the work
    assert len(found) >= 0.9 * 2 * len(EDITS)
    out = DedupStage(DedupConfig(max_hash_distance=0, min_matching_frames=3))(corpus)
    semantic = [o.reasons[0] for o in out if o.reasons and o.reasons[0].startswith("semantic")]
    assert semantic and all(" >= 0.97)" in r for r in semantic), semantic


def test_keep_rule_picks_the_survivor(corpus):
    rows = [dict(r) for r in corpus if r["original"] == "bikes1"]
    for r in rows:
        r["quality_score"] = 2.0 if r["clip_id"] == "bikes1_half" else 1.0
    out = DedupStage(DedupConfig())(rows)
    assert {o.values["dedup_group"] for o in out} == {"bikes1_half"}
    assert [r["clip_id"] for r, o in zip(rows, out) if not o.reasons] == ["bikes1_half"]
    first = DedupStage(DedupConfig(keep="first"))(rows)
    assert [r["clip_id"] for r, o in zip(rows, first) if not o.reasons] == ["bikes1"]
    rejected = dict(rows[0], reasons=["too dark"])  # rows an earlier stage rejected take no part
    assert DedupStage(DedupConfig(keep="first"))([rejected, *rows[1:]])[0].values["dedup_group"] is None


def test_hash_index_equals_brute_force(monkeypatch):
    monkeypatch.setattr(dedup, "_BLOCK", 64)  # several row blocks
    n = 300
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64).astype(np.uint64)
    for i in range(0, n, 10):  # plant near copies: 0..10 flipped bits per frame
        hashes[i + 1] = hashes[i]
        flips = rng.integers(0, 11, size=3)
        for f, k in enumerate(flips):
            for bit in rng.choice(64, size=k, replace=False):
                hashes[i + 1, f] ^= np.uint64(1) << np.uint64(int(bit))
    valid = np.ones_like(hashes, dtype=bool)
    valid[7, 2] = False  # a clip with fewer key frames
    found = {(a, b) for a, b, *_ in hash_matches(hashes, valid, 8, 2)}
    expected = set()
    for a in range(n):
        for b in range(a + 1, n):
            both = valid[a] & valid[b]
            d = [bin(int(x ^ y)).count("1") for x, y in zip(hashes[a][both], hashes[b][both])]
            if sum(v <= 8 for v in d) >= min(2, len(d)):
                expected.add((a, b))
    assert found == expected and len(expected) >= 10


def test_semantic_blocks_equal_all_pairs(monkeypatch):
    monkeypatch.setattr(dedup, "_BLOCK", 16)
    rng = np.random.default_rng(1)
    v = rng.normal(size=(100, 6))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cosine = v @ v.T
    expected = {(a, b) for a, b in zip(*np.nonzero(cosine >= 0.9)) if a < b}
    found = semantic_matches(v, 0.9)
    assert {(a, b) for a, b, _ in found} == expected and len(expected) >= 5
    assert all(abs(c - cosine[a, b]) < 1e-6 for a, b, c in found)


def test_clusters_group_sources(corpus):
    clean = [r for r in corpus if r["clip_id"] == r["original"] or r["original"] == "bikes1"]
    out = ClusterStage(ClusterConfig(k=3))(clean)
    ids = {r["clip_id"]: o.values["cluster_id"] for r, o in zip(clean, out)}
    assert len({ids[f"bikes1_{e}"] for e in EDITS} | {ids["bikes1"]}) == 1  # a clip and its copies: one cluster
    assert ids["bikes0"] != ids["car0"]
    sizes = [o.values["cluster_size"] for o in out]
    assert sum(np.bincount(list(ids.values()))) == len(clean) and max(sizes) <= len(clean)
    assert ClusterStage(ClusterConfig(k=100))(clean[:2])[1].values["cluster_id"] in (0, 1)  # k capped by clips
    again = ClusterStage(ClusterConfig(k=3))(clean)
    assert [o.values for o in again] == [o.values for o in out]


def test_config_checks():
    with pytest.raises(ValueError, match="dedup.min_matching_frames"):
        DedupConfig(frames=2, min_matching_frames=3)
    with pytest.raises(ValueError, match="dedup.semantic_threshold"):
        DedupConfig(semantic_threshold=1.5)
    with pytest.raises(ValueError, match="clusters.k"):
        ClusterConfig(k=0)


@pytest.mark.slow
def test_every_clip_edited_on_the_full_corpus(tmp_path):
    rows = _rows(tmp_path, tuple(CLEAN), tuple(CLEAN))
    _, found = _check(rows, DedupConfig())
    assert len(found) / (len(CLEAN) * len(EDITS)) >= 0.9
