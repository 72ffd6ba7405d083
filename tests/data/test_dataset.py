"""The raw-video dataset on real files: fps sampling, clip bounds, resize + center crop, images, bad files."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets, clip_frames_at
from openwan.data.dataset import VideoClipDataset, collate, load_clip, scan_manifest
from openwan.data.manifest import ClipRecord
from openwan.data.video import read_image, read_video, save_video


def _levels_video(path, frames, fps, height=32, width=32):
    """Frame i is a flat grey of level (i + 1) / (frames + 1), so a decoded frame tells which one it is."""
    levels = (torch.arange(frames) + 1) / (frames + 1)
    save_video(levels[:, None, None, None].expand(frames, height, width, 3).clone(), path, fps=fps)
    return ClipRecord(str(path), f"clip {path.stem}", frames, float(fps), width, height)


def _source_frames(video, frames):
    """Which source frame each output frame of ``video`` [3, T, H, W] in [-1, 1] is."""
    level = (video.mean(dim=(0, 2, 3)) + 1) / 2
    return (level * (frames + 1) - 1).round().int().tolist()


def _stripes(height=32, width=64):
    """Red | green | blue vertical stripes, the green one the middle half."""
    image = torch.zeros(height, width, 3)
    image[:, : width // 4, 0] = 1
    image[:, width // 4: 3 * width // 4, 1] = 1
    image[:, 3 * width // 4:, 2] = 1
    return image


def test_fps_sampling_and_shapes(tmp_path):
    # Output frame k is the first source frame at or after time k / fps (openwan.data.video's resampling).
    record = _levels_video(tmp_path / "a.mp4", frames=9, fps=8)
    video = load_clip(record, Bucket(9, 32, 32), fps=16)  # twice the source rate: frames repeat
    assert video.shape == (3, 9, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert _source_frames(video, 9) == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert _source_frames(load_clip(record, Bucket(5, 32, 32), fps=4), 9) == [0, 2, 4, 6, 8]  # every other frame
    assert _source_frames(load_clip(record, Bucket(5, 32, 32), fps=8), 9) == [0, 1, 2, 3, 4]


def test_clip_start_and_end(tmp_path):
    record = _levels_video(tmp_path / "a.mp4", frames=17, fps=16)
    later = ClipRecord(record.path, "c", 17, 16.0, 32, 32, start=0.25)
    assert _source_frames(load_clip(later, Bucket(5, 32, 32), fps=16), 17) == [4, 5, 6, 7, 8]
    half = ClipRecord(record.path, "c", 17, 16.0, 32, 32, start=0.5)
    assert _source_frames(load_clip(half, Bucket(5, 32, 32), fps=8), 17) == [8, 10, 12, 14, 16]
    bounded = ClipRecord(record.path, "c", 17, 16.0, 32, 32, start=0.25, end=0.5)  # 4 frames at 16 fps
    with pytest.raises(ValueError, match="bounds hold 4 frames"):
        load_clip(bounded, Bucket(5, 32, 32), fps=16)
    assert _source_frames(load_clip(bounded, Bucket(1, 32, 32), fps=16), 17) == [4]


@pytest.mark.parametrize("fps, start, end", [(16, None, None), (5, None, None), (24, 0.3, None), (16, 0.2, 0.7),
                                             (7, 0.4, 0.9)])
def test_clip_frames_at_counts_what_decoding_gives(tmp_path, fps, start, end):
    record = _levels_video(tmp_path / "a.mp4", frames=11, fps=10)
    clip = ClipRecord(record.path, "c", 11, 10.0, 32, 32, start=start, end=end)
    start_k = math.ceil((start or 0) * fps - 1e-6)  # the first output time k / fps at or after the start
    first = _source_frames(load_clip(clip, Bucket(1, 32, 32), fps=fps), 11)[0]
    assert first == math.ceil(start_k / fps * 10 - 1e-6) and first / 10 >= (start or 0) - 1e-6
    decoded = read_video(record.path, fps=fps).shape[0]  # the whole file at fps: the clip is a window of it
    expected = sum(1 for k in range(start_k, decoded) if end is None or k / fps < end)
    assert clip_frames_at(clip, fps) == expected >= 1
    assert load_clip(clip, Bucket(1 + (expected - 1) // 4 * 4, 32, 32), fps=fps).shape[1] == 1 + (expected - 1) // 4 * 4


def test_resize_and_center_crop(tmp_path):
    save_video(_stripes()[None], tmp_path / "s.png")
    image = ClipRecord(str(tmp_path / "s.png"), "c", 1, 0.0, 64, 32)
    video = load_clip(image, Bucket(1, 32, 32))  # same height: no resize, the crop keeps the green half exactly
    assert video.shape == (3, 1, 32, 32)
    assert torch.equal(video[:, 0], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 32, 32))
    expected = read_image(image.path, (16, 16)).permute(3, 0, 1, 2) * 2 - 1
    assert torch.equal(load_clip(image, Bucket(1, 16, 16)), expected)
    save_video(_stripes(32, 64)[None].repeat(5, 1, 1, 1), tmp_path / "s.mp4", fps=16)
    clip = ClipRecord(str(tmp_path / "s.mp4"), "c", 5, 16.0, 64, 32)
    video = load_clip(clip, Bucket(5, 16, 16))  # half size, then the middle 16 columns: green
    assert video.shape == (3, 5, 16, 16)
    inner = (video[:, :, :, 2:-2] + 1) / 2  # away from the stripe edges that chroma subsampling blurs
    assert inner[1].min() > 0.85 and inner[0].max() < 0.15 and inner[2].max() < 0.15


def test_images_are_one_frame_clips(tmp_path):
    frame = torch.rand(1, 24, 40, 3)
    save_video(frame, tmp_path / "i.png")
    record = ClipRecord(str(tmp_path / "i.png"), "an image", 1, 0.0, 40, 24)
    (bucket,) = assign_buckets([record], [Bucket(1, 16, 32), Bucket(5, 16, 32)])
    assert bucket == Bucket(1, 16, 32)
    item = VideoClipDataset([record], [bucket])[0]
    assert item["key"] == record.id and item["caption"] == "an image"
    assert torch.equal(item["video"], read_image(record.path, (32, 16)).permute(3, 0, 1, 2) * 2 - 1)


def _manifest_with_bad_files(folder):
    good = [_levels_video(folder / f"v{i}.mp4", frames=9, fps=16) for i in range(3)]
    save_video(torch.rand(1, 32, 32, 3), folder / "img.png")
    good.append(ClipRecord(str(folder / "img.png"), "img", 1, 0.0, 32, 32))
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    data = (folder / "v0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    bad = [ClipRecord(str(folder / name), name, 9, 16.0, 32, 32) for name in
           ("corrupt.mp4", "truncated.mp4", "missing.mp4")]
    return good, bad


def test_bad_files_are_skipped_with_workers_and_named_by_the_scan(tmp_path, caplog):
    good, bad = _manifest_with_bad_files(tmp_path)
    records = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    buckets = [Bucket(1, 32, 32), Bucket(9, 32, 32)]
    dataset = VideoClipDataset(records, assign_buckets(records, buckets))
    sampler = BucketBatchSampler(dataset.buckets, batch_size=2, seed=0, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    batches = [b for b in loader if b is not None]
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(r.id for r in good)
    for batch in batches:
        assert batch["video"].shape[0] == len(batch["key"]) == len(batch["caption"])

    kept, reasons = scan_manifest(records)
    assert kept == [good[0], good[1], good[2], good[3]]
    assert set(reasons) == {r.path for r in bad}
    assert "does not exist" in reasons[bad[2].path]
    assert "unreadable" in reasons[bad[0].path] and "unreadable" in reasons[bad[1].path]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="openwan.data.dataset"):  # in-process: counted, logged once
        assert dataset[1] is None and dataset[1] is None and dataset[3] is None
    assert set(dataset.bad_files) == {bad[0].path, bad[1].path}
    assert sum(bad[0].path in m for m in caplog.messages) == 1


def test_a_file_shorter_than_its_record_is_bad(tmp_path):
    record = _levels_video(tmp_path / "a.mp4", frames=5, fps=16)
    liar = ClipRecord(record.path, "c", 17, 16.0, 32, 32)  # the manifest claims 17 frames
    dataset = VideoClipDataset([liar], [Bucket(9, 32, 32)])
    assert dataset[0] is None
    assert "gives 5 frames" in dataset.bad_files[record.path]


def test_collate():
    item = {"key": "a", "video": torch.zeros(3, 1, 8, 8), "caption": "x", "context_empty": torch.ones(4, 2)}
    other = {**item, "key": "b", "video": torch.ones(3, 1, 8, 8)}
    batch = collate([None, item, other, None])
    assert batch["key"] == ["a", "b"] and batch["caption"] == ["x", "x"]
    assert batch["video"].shape == (2, 3, 1, 8, 8) and torch.equal(batch["video"][1], other["video"])
    assert batch["context_empty"].shape == (4, 2)  # shared, not stacked
    assert collate([None, None]) is None
    with pytest.raises(ValueError, match="different 'video' shapes"):
        collate([item, {**item, "video": torch.zeros(3, 5, 8, 8)}])


def test_a_crop_cuts_the_letterbox_before_the_resize(tmp_path):
    from curate.footage import footage, write_video

    clip = footage("bikes", count=9)  # real footage, 640x272
    boxed = np.zeros((9, 400, 640, 3), np.uint8)
    boxed[:, 32:304] = clip  # black bars of 32 rows above and 96 below
    write_video(clip, tmp_path / "clean.mp4")
    write_video(boxed, tmp_path / "boxed.mp4")
    clean = ClipRecord(str(tmp_path / "clean.mp4"), "c", 9, 25.0, 640, 272)
    cropped = ClipRecord(str(tmp_path / "boxed.mp4"), "c", 9, 25.0, 640, 400, crop=(0, 32, 640, 304))
    bucket = Bucket(5, 128, 304)
    buckets = [bucket, Bucket(5, 208, 208)]
    assert assign_buckets([clean, cropped], buckets, fps=25) == [bucket, bucket]  # the crop's aspect ratio
    want, got = load_clip(clean, bucket, fps=25), load_clip(cropped, bucket, fps=25)
    assert got.shape == want.shape == (3, 5, 128, 304)
    assert (got - want).abs().mean() < 0.01  # the same frames up to the codec (values in [-1, 1])
    uncropped = load_clip(ClipRecord(cropped.path, "c", 9, 25.0, 640, 400), bucket, fps=25)
    assert (uncropped - want).abs().mean() > 0.1  # without the crop the picture is shifted and has a bar
    # A crop that reaches outside the decoded frames (a manifest whose width/height are wrong) is a bad file.
    wrong = ClipRecord(cropped.path, "c", 9, 25.0, 640, 480, crop=(0, 32, 640, 440))
    dataset = VideoClipDataset([wrong], [bucket], fps=25)
    assert dataset[0] is None and "reaches outside the file's 640x400 frames" in dataset.bad_files[wrong.path]


def test_a_crop_applies_to_images(tmp_path):
    image = _stripes(height=32, width=64)
    save_video(image[None], tmp_path / "s.png")
    record = ClipRecord(str(tmp_path / "s.png"), "c", 1, 0.0, 64, 32, crop=(16, 0, 48, 32))  # the green half
    frame = load_clip(record, Bucket(1, 16, 16))
    assert frame.shape == (3, 1, 16, 16)
    assert torch.allclose(frame[:, 0].mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.02)
