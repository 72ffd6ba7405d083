"""Buckets and the bucket batch sampler: assignment, determinism, disjoint ranks, exact resume, image ratio."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from openwan.data.buckets import (
    Bucket,
    BucketBatchSampler,
    assign_bucket,
    assign_buckets,
    buckets_for,
    clip_frames_at,
)
from openwan.data.manifest import ClipRecord


def _video(frames=81, fps=16.0, width=832, height=480, **kw):
    return ClipRecord("v.mp4", "c", frames, fps, width, height, **kw)


def test_bucket_checks():
    assert Bucket(5, 32, 48).aspect == 1.5 and not Bucket(5, 32, 48).is_image and Bucket(1, 8, 8).is_image
    assert Bucket(9, 16, 32).as_list() == [9, 16, 32]
    for bad in ((4, 32, 32), (0, 32, 32), (5, 0, 32)):
        with pytest.raises(ValueError):
            Bucket(*bad)


def test_buckets_for():
    buckets = buckets_for(area_px=480 * 832, frames=(1, 81), aspect_ratios=(16 / 9, 9 / 16, 1.0))
    assert len(buckets) == 6 and buckets == sorted(buckets)
    for b in buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0
        assert abs(b.height * b.width / (480 * 832) - 1) < 0.05
    assert Bucket(81, 480, 848) in buckets and Bucket(1, 848, 480) in buckets and Bucket(1, 640, 640) in buckets
    # ratios that round to one size give one bucket
    assert buckets_for(area_px=256, frames=(1,), aspect_ratios=(1.0, 1.01), multiple=16) == [Bucket(1, 16, 16)]
    with pytest.raises(ValueError, match="smaller than one 16x16 block"):
        buckets_for(area_px=100)


def test_clip_frames_at():
    assert clip_frames_at(_video(frames=9, fps=8), 16) == 17  # last frame at 1.0 s: grid 0, 1/16, ..., 16/16
    assert clip_frames_at(_video(frames=9, fps=8), 4) == 5
    assert clip_frames_at(_video(frames=17, fps=16, start=0.25), 16) == 13
    assert clip_frames_at(_video(frames=17, fps=16, start=0.25, end=0.5), 16) == 4  # frames 4..7, end exclusive
    assert clip_frames_at(_video(frames=17, fps=16, start=0.26), 16) == 12  # starts at the next grid point
    assert clip_frames_at(ClipRecord("a.png", "c", 1, 0.0, 32, 32), 16) == 1


def test_assign_bucket():
    buckets = buckets_for(area_px=48 * 48, frames=(1, 5, 9), aspect_ratios=(1.0, 2.0, 0.5))
    wide, tall = Bucket(9, 32, 64), Bucket(9, 64, 32)
    assert set(buckets) == {Bucket(f, h, w) for f in (1, 5, 9) for h, w in ((48, 48), (32, 64), (64, 32))}
    assert assign_bucket(_video(frames=33, width=200, height=100), buckets) == wide
    assert assign_bucket(_video(frames=33, width=100, height=190), buckets) == tall
    assert assign_bucket(_video(frames=7, width=100, height=100), buckets) == Bucket(5, 48, 48)  # can't fill 9
    assert assign_bucket(_video(frames=33, start=1.6, width=120, height=100), buckets) == Bucket(5, 48, 48)
    assert assign_bucket(ClipRecord("x.jpg", "c", 1, 0.0, 300, 100), buckets) == Bucket(1, 32, 64)
    assert assign_bucket(_video(frames=3), [Bucket(5, 32, 32)]) is None
    assert assign_buckets([_video(frames=3), _video(frames=9)], [Bucket(5, 32, 32)]) == [None, Bucket(5, 32, 32)]


# ----------------------------------------------------------------------------------------------- sampler

A, B, IMG = Bucket(5, 32, 32), Bucket(9, 32, 64), Bucket(1, 32, 32)


def _assignments():
    return [A] * 23 + [B] * 17 + [None] * 3 + [IMG] * 30


def _epoch(sampler):
    return list(sampler)


def test_batches_are_one_bucket_and_cover_the_epoch():
    assignments = _assignments()
    sampler = BucketBatchSampler(assignments, batch_size=4, seed=3, drop_last=False)
    batches = _epoch(sampler)
    assert len(batches) == len(sampler) == 6 + 5 + 8
    for batch in batches:
        assert len({assignments[i] for i in batch}) == 1
    seen = sorted(itertools.chain.from_iterable(batches))
    assert seen == [i for i, b in enumerate(assignments) if b is not None]  # each index once, None never
    dropped = _epoch(BucketBatchSampler(assignments, batch_size=4, seed=3))
    assert len(dropped) == 5 + 4 + 7 and all(len(b) == 4 for b in dropped)


def test_order_depends_only_on_seed_and_epoch():
    a = BucketBatchSampler(_assignments(), batch_size=4, seed=1)
    b = BucketBatchSampler(_assignments(), batch_size=4, seed=1)
    first, second = _epoch(a), _epoch(a)
    assert a.state_dict() == {"epoch": 2, "position": 0}
    assert first != second and first == _epoch(b) and second == _epoch(b)
    assert first != _epoch(BucketBatchSampler(_assignments(), batch_size=4, seed=2))
    b.set_epoch(1)
    assert _epoch(b) == second


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_slices_with_one_shape_per_step(world_size, drop_last):
    assignments = _assignments()
    ranks = [BucketBatchSampler(assignments, batch_size=2, seed=5, drop_last=drop_last, rank=r,
                                world_size=world_size) for r in range(world_size)]
    for _ in range(2):
        epochs = [_epoch(s) for s in ranks]
        assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) > 0
        for step in zip(*epochs):
            assert len({assignments[i] for batch in step for i in batch}) == 1  # all ranks: one bucket per step
            assert all(len(batch) == 2 for batch in step)
        if drop_last:
            items = [i for e in epochs for batch in e for i in batch]
            assert len(items) == len(set(items))
        else:  # a bucket's last batch is filled up from that bucket: every index is still drawn
            assert {i for e in epochs for batch in e for i in batch} == {i for i, b in enumerate(assignments) if b}
    with pytest.raises(ValueError, match="rank must be in"):
        BucketBatchSampler(assignments, batch_size=2, rank=2, world_size=2)


def test_resume_continues_the_uninterrupted_sequence():
    assignments = _assignments()
    reference = BucketBatchSampler(assignments, batch_size=3, seed=7)
    full = _epoch(reference) + _epoch(reference) + _epoch(reference)
    for stop in (0, 5, len(reference), len(reference) + 9):
        run = BucketBatchSampler(assignments, batch_size=3, seed=7)
        taken = []
        while len(taken) < stop:
            for batch in run:
                taken.append(batch)
                if len(taken) == stop:
                    break
        state = run.state_dict()
        assert state["position"] < len(run)  # an epoch taken to its end reads as the start of the next
        resumed = BucketBatchSampler(assignments, batch_size=3, seed=7)
        resumed.load_state_dict(state)
        rest = []
        while len(taken) + len(rest) < len(full):
            rest += _epoch(resumed)
        assert taken + rest == full, stop


def test_state_with_a_prefetching_consumer():
    sampler = BucketBatchSampler(_assignments(), batch_size=3, seed=7)
    batches = iter(sampler)
    for _ in range(6):  # a DataLoader has fetched 6 batches, the trainer took 4
        next(batches)
    assert sampler.state_dict() == {"epoch": 0, "position": 6}
    assert sampler.state_dict(consumed=4) == {"epoch": 0, "position": 4}
    list(batches)  # the loader drained the epoch before the trainer finished it
    assert sampler.state_dict(consumed=len(sampler)) == {"epoch": 1, "position": 0}
    assert sampler.state_dict(consumed=len(sampler) - 1) == {"epoch": 0, "position": len(sampler) - 1}
    sampler.load_state_dict({"epoch": 0, "position": 4})
    assert sampler.state_dict(consumed=0) == {"epoch": 0, "position": 4}
    it = iter(sampler)
    next(it)
    assert sampler.state_dict(consumed=1) == {"epoch": 0, "position": 5}
    with pytest.raises(ValueError, match="consumed"):
        sampler.state_dict(consumed=len(sampler))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.8, 1.0])
def test_image_video_ratio(ratio):
    assignments = _assignments()
    sampler = BucketBatchSampler(assignments, batch_size=2, seed=11, image_video_ratio=ratio)
    batches = [b for _ in range(30) for b in _epoch(sampler)]
    assert len(batches) == 30 * len(sampler)
    images = sum(assignments[b[0]].is_image for b in batches) / len(batches)
    assert abs(images - ratio) < 0.04  # 1140 draws: 4 standard deviations at worst
    again = BucketBatchSampler(assignments, batch_size=2, seed=11, image_video_ratio=ratio)
    assert [b for _ in range(30) for b in _epoch(again)] == batches


def test_ratio_needs_both_kinds():
    with pytest.raises(ValueError, match="no clip is in an image bucket"):
        BucketBatchSampler([A] * 8, batch_size=2, image_video_ratio=0.5)
    with pytest.raises(ValueError, match="no clip is in a video bucket"):
        BucketBatchSampler([IMG] * 8, batch_size=2, image_video_ratio=0.5)
    with pytest.raises(ValueError, match="no image bucket fills a batch"):
        BucketBatchSampler([A] * 8 + [IMG], batch_size=2, image_video_ratio=0.5)
    with pytest.raises(ValueError, match="no full batch"):
        BucketBatchSampler([A] * 3, batch_size=4)


# ------------------------------------------------------------------------------------------- weights


def _weights():
    """Weights 0..3 cycling over the assignments (index i has weight i % 4): a quarter are never to be drawn."""
    return [float(i % 4) for i in range(len(_assignments()))]


def test_weighted_draws_follow_the_weights():
    assignments, weights = _assignments(), _weights()
    sampler = BucketBatchSampler(assignments, batch_size=2, seed=3, drop_last=False, weights=weights)
    counts = np.zeros(len(assignments))
    epochs = 200
    for _ in range(epochs):
        batches = _epoch(sampler)
        for batch in batches:
            assert len({assignments[i] for i in batch}) == 1
        drawn = [i for b in batches for i in b]
        assert len(drawn) == sum(1 for a, w in zip(assignments, weights) if a is not None and w > 0)
        np.add.at(counts, drawn, 1)
    positive = [i for i, (a, w) in enumerate(zip(assignments, weights)) if a is not None and w > 0]
    assert counts[[i for i in range(len(assignments)) if i not in positive]].sum() == 0  # weight 0 / no bucket
    total = counts.sum()
    w = np.array(weights)[positive]
    expected = total * w / w.sum()
    chi2 = (((counts[positive] - expected) ** 2) / expected).sum()
    # 54 categories, 53 degrees of freedom: mean 53, sd ~10.3; 100 is beyond 4.5 sd, and a flat draw gives ~2000+
    assert chi2 < 100, chi2
    flat = total / len(positive)
    assert (((counts[positive] - flat) ** 2) / flat).sum() > 500  # the weights really changed the draw


def test_weighted_order_depends_only_on_seed_and_epoch_and_resumes():
    assignments, weights = _assignments(), _weights()
    a = BucketBatchSampler(assignments, batch_size=3, seed=7, weights=weights)
    b = BucketBatchSampler(assignments, batch_size=3, seed=7, weights=weights)
    first, second = _epoch(a), _epoch(a)
    assert first != second and first == _epoch(b) and second == _epoch(b)
    assert first != _epoch(BucketBatchSampler(assignments, batch_size=3, seed=8, weights=weights))
    reference = BucketBatchSampler(assignments, batch_size=3, seed=7, weights=weights)
    full = _epoch(reference) + _epoch(reference)
    run = BucketBatchSampler(assignments, batch_size=3, seed=7, weights=weights)
    taken = [batch for _, batch in zip(range(len(run) + 4), itertools.chain(run, run))]
    resumed = BucketBatchSampler(assignments, batch_size=3, seed=7, weights=weights)
    resumed.load_state_dict(json.loads(json.dumps(run.state_dict())))
    assert taken + _epoch(resumed) == full


def test_without_weights_nothing_changes_and_bad_weights_are_refused():
    assignments = _assignments()
    # The unweighted plan is the one the sampler always had: each assigned index exactly once per epoch.
    plain = BucketBatchSampler(assignments, batch_size=4, seed=3, drop_last=False)
    assert sorted(itertools.chain.from_iterable(_epoch(plain))) == [i for i, b in enumerate(assignments) if b]
    with pytest.raises(ValueError, match="weights has 2 entries for 73 assignments"):
        BucketBatchSampler(assignments, batch_size=2, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"weights\[5\] is -1.0; sampling weights must be finite and >= 0"):
        BucketBatchSampler(assignments, batch_size=2, weights=[1.0] * 5 + [-1.0] + [1.0] * 67)
    with pytest.raises(ValueError, match="every clip in a bucket has weight 0"):
        BucketBatchSampler(assignments, batch_size=2, weights=[0.0] * 40 + [1.0] * 3 + [0.0] * 30)
    # Image-only weights leave no video bucket to draw from.
    with pytest.raises(ValueError, match="no clip is in a video bucket"):
        BucketBatchSampler(assignments, batch_size=2, image_video_ratio=0.5, weights=[0.0] * 43 + [1.0] * 30)


def test_buckets_follow_the_crop():
    buckets = [Bucket(5, 32, 64), Bucket(5, 48, 48)]
    letterboxed = _video(frames=33, width=640, height=640)
    assert assign_bucket(letterboxed, buckets) == Bucket(5, 48, 48)
    inner = ClipRecord("v.mp4", "c", 33, 16.0, 640, 640, crop=(0, 160, 640, 480))  # 640x320 inside
    assert assign_bucket(inner, buckets) == Bucket(5, 32, 64)
