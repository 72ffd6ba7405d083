"""Latent and text caches with a tiny random VAE and umT5: exact contents, resumable builds, cached batches equal
raw batches passed through the same models."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import ByT5Tokenizer, UMT5EncoderModel

from openwan.configs import TEXT_ENCODER_PRESETS, VAE_PRESETS
from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets
from openwan.data.cache import CachedDataset, build_latent_cache, build_text_cache
from openwan.data.dataset import VideoClipDataset, collate, load_clip
from openwan.data.manifest import ClipRecord
from openwan.data.video import save_video
from openwan.models import WanVAE
from openwan.models.text_encoder import encode_prompts, pad_context
from tiny import randomize

TEXT_LEN = 32
BUCKETS = [Bucket(1, 32, 32), Bucket(5, 32, 32), Bucket(9, 32, 32)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    vae = randomize(WanVAE(VAE_PRESETS["tiny"]), std=0.1, seed=1)
    encoder = randomize(UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()), std=0.1, seed=2)
    return vae, encoder, ByT5Tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 9-frame clips, a 6-frame clip, two images and a corrupt file."""
    folder = tmp_path_factory.mktemp("clips")
    g = torch.Generator().manual_seed(0)
    records = []
    for name, frames in (("v0", 9), ("v1", 9), ("v2", 6)):
        save_video(torch.rand(frames, 32, 40, 3, generator=g), folder / f"{name}.mp4", fps=16)
        records.append(ClipRecord(str(folder / f"{name}.mp4"), f"a clip called {name}", frames, 16.0, 40, 32))
    for name in ("i0", "i1"):
        save_video(torch.rand(1, 32, 32, 3, generator=g), folder / f"{name}.png")
        records.append(ClipRecord(str(folder / f"{name}.png"), f"an image {name} of a cat", 1, 0.0, 32, 32))
    (folder / "bad.mp4").write_bytes(b"not a video" * 50)
    bad = ClipRecord(str(folder / "bad.mp4"), "broken", 9, 16.0, 32, 32)
    return records, bad


@pytest.fixture(scope="module")
def cache(tmp_path_factory, models, data):
    vae, encoder, tokenizer = models
    records, bad = data
    out = tmp_path_factory.mktemp("cache")
    latent_report = build_latent_cache([*records[:2], bad, *records[2:]], vae, BUCKETS, out, shard_size=2)
    text_report = build_text_cache(records, encoder, tokenizer, out, TEXT_LEN, batch_size=3)
    return out, latent_report, text_report


def _stored(folder, index_name, key):
    index = json.loads((folder / index_name).read_text())
    entry = (index["items"] if "items" in index else index)[key]
    with safe_open(str(folder / entry["shard"]), framework="pt") as f:
        return f.get_tensor(key)


def test_latent_cache_is_the_vae_encoding(cache, models, data):
    out, report, _ = cache
    vae, _, _ = models
    records, bad = data
    assert sorted(report.cached) == sorted(r.id for r in records) and report.skipped == []
    assert list(report.bad) == [bad.path] and "not a readable video" in report.bad[bad.path]
    index = json.loads((out / "index.json").read_text())
    assert set(index) == {r.id for r in records}
    assert len({e["shard"] for e in index.values()}) == 3  # 5 clips, 2 per shard
    for record, bucket in zip(records, assign_buckets(records, BUCKETS)):
        assert index[record.id]["bucket"] == bucket.as_list() and index[record.id]["caption"] == record.caption
        with torch.no_grad():
            expected = vae.encode(load_clip(record, bucket)[None])[0]  # [16, F, h, w]
        got = _stored(out, "index.json", record.id)
        assert got.shape == (16, 1 + (bucket.frames - 1) // 4, 4, 4)
        assert torch.equal(got, expected)


def test_cached_clips_serve_shorter_buckets_as_their_first_frames(cache, models, data):
    out, _, _ = cache
    vae, _, _ = models
    records, _ = data
    dataset = CachedDataset(out)
    nine, five, image = Bucket(9, 32, 32), Bucket(5, 32, 32), Bucket(1, 32, 32)
    cached = dict(zip(dataset.keys, dataset.buckets))
    assert sorted(b.frames for b in cached.values()) == [1, 1, 5, 9, 9]
    served = dict(zip(dataset.keys, dataset.fit_buckets([image, five])))
    assert served == {k: five if b.frames > 1 else image for k, b in cached.items()}
    for record in records:
        if cached[record.id] != nine:
            continue
        clip = load_clip(record, nine)[None]  # [1, 3, 9, H, W]
        item = dataset[dataset.keys.index(record.id)]
        assert item["latents"].shape == (16, 2, 4, 4)
        with torch.no_grad():  # the causal VAE: the first 5 frames alone encode to the first 2 latent frames
            expected = vae.encode(clip[:, :, :5])[0]
        torch.testing.assert_close(item["latents"], expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(item["latents"], _stored(out, "index.json", record.id)[:, :2])
    images_only = dict(zip(dataset.keys, dataset.fit_buckets([image])))
    for record in records:
        if cached[record.id] == nine:
            with torch.no_grad():
                expected = vae.encode(load_clip(record, nine)[None][:, :, :1])[0]
            torch.testing.assert_close(dataset[dataset.keys.index(record.id)]["latents"], expected, rtol=1e-4,
                                       atol=1e-5)
    assert all(b == image for b in images_only.values())
    assert dataset.fit_buckets([Bucket(5, 64, 64)]) == [None] * len(dataset)  # another size: nothing fits


def test_text_cache_is_encode_prompts(cache, models, data):
    out, _, report = cache
    _, encoder, tokenizer = models
    records, _ = data
    assert sorted(report.cached) == sorted(r.id for r in records)
    for record in records:
        assert torch.equal(_stored(out, "text_index.json", record.id),
                           encode_prompts(encoder, tokenizer, [record.caption], TEXT_LEN)[0])
    with safe_open(str(out / "text_empty.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("empty"), encode_prompts(encoder, tokenizer, [""], TEXT_LEN)[0])


def test_latent_cache_build_resumes_after_a_crash(tmp_path, models, data, cache, monkeypatch):
    vae, _, _ = models
    records, _ = data
    calls = {"n": 0}
    encode = vae.encode

    def failing_encode(video):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return encode(video)

    monkeypatch.setattr(vae, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="killed"):
        build_latent_cache(records, vae, BUCKETS, tmp_path, shard_size=2)
    monkeypatch.undo()
    assert vae.training is False
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index) == 2  # the first shard was written, the half-full second one was lost
    first_shard = (tmp_path / index[next(iter(index))]["shard"]).read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    report = build_latent_cache(records, vae, BUCKETS, tmp_path, shard_size=2, num_workers=2)
    assert sorted(report.skipped) == sorted(index) and len(report.cached) == len(records) - 2
    assert (tmp_path / index[next(iter(index))]["shard"]).read_bytes() == first_shard
    full, _, _ = cache
    for record in records:
        assert torch.equal(_stored(tmp_path, "index.json", record.id), _stored(full, "index.json", record.id))
    again = build_latent_cache(records, vae, BUCKETS, tmp_path, shard_size=2)
    assert again.cached == [] and len(again.skipped) == len(records)


def test_text_cache_resume_reencodes_changed_captions_only(tmp_path, models, data):
    _, encoder, tokenizer = models
    records, _ = data
    build_text_cache(records, encoder, tokenizer, tmp_path, TEXT_LEN, shard_size=2)
    changed = [*records[:-1], replace(records[-1], caption="a new caption")]
    report = build_text_cache(changed, encoder, tokenizer, tmp_path, TEXT_LEN, shard_size=2)
    assert report.cached == [records[-1].id] and len(report.skipped) == len(records) - 1
    assert torch.equal(_stored(tmp_path, "text_index.json", records[-1].id),
                       encode_prompts(encoder, tokenizer, ["a new caption"], TEXT_LEN)[0])
    with pytest.raises(ValueError, match="text_len=32, not 16"):
        build_text_cache(records, encoder, tokenizer, tmp_path, 16)


def test_cached_batches_equal_raw_batches_through_the_models(cache, models, data):
    out, _, _ = cache
    vae, encoder, tokenizer = models
    records, bad = data
    records = [*records, bad]  # the bad clip is not cached: it keeps its index but is never drawn
    cached = CachedDataset(out, records=records)
    raw = VideoClipDataset(records, assign_buckets(records, BUCKETS))
    assert cached.buckets[:-1] == raw.buckets[:-1] and cached.buckets[-1] is None
    raw_buckets = [*raw.buckets[:-1], None]
    sampler = dict(batch_size=2, seed=4, drop_last=False)
    cached_loader = DataLoader(cached, batch_sampler=cached.batch_sampler(**sampler), collate_fn=collate,
                               num_workers=2)
    raw_loader = DataLoader(raw, batch_sampler=BucketBatchSampler(raw_buckets, **sampler), collate_fn=collate)
    empty = pad_context(encode_prompts(encoder, tokenizer, [""], TEXT_LEN), TEXT_LEN)[0]
    n = worst = 0
    for c, r in zip(cached_loader, raw_loader, strict=True):
        assert c["key"] == r["key"] and set(c) == {"key", "latents", "context", "context_empty"}
        with torch.no_grad():
            latents = vae.encode(r["video"])  # the whole batch at once, as a trainer encodes it
            one_by_one = torch.cat([vae.encode(v[None]) for v in r["video"]])
        assert torch.equal(c["latents"], one_by_one)
        worst = max(worst, ((c["latents"] - latents).abs().max() / latents.abs().max()).item())
        assert torch.equal(c["context"], pad_context(encode_prompts(encoder, tokenizer, r["caption"], TEXT_LEN),
                                                     TEXT_LEN))
        assert torch.equal(c["context_empty"], empty)
        n += len(c["key"])
    assert n == len(records) - 1
    assert worst <= 1e-5  # batched convolution sums in another order than one clip at a time


def test_cached_dataset_keeps_few_shards_open_and_pickles_without_them(cache, monkeypatch):
    out, _, _ = cache
    monkeypatch.setattr("openwan.data.cache.OPEN_SHARDS", 2)
    dataset = CachedDataset(out)
    for _ in range(2):  # every item twice, through a window of two open shards (latent and text shards alternate)
        for i, key in enumerate(dataset.keys):
            item = dataset[i]
            assert torch.equal(item["latents"], _stored(out, "index.json", key))
            assert len(dataset._shards) <= 2
    copy = pickle.loads(pickle.dumps(dataset))
    assert not copy._shards and torch.equal(copy[0]["latents"], dataset[0]["latents"])


def test_cached_dataset_without_text_cache_gives_captions(tmp_path, cache, data):
    out, _, _ = cache
    records, bad = data
    for name in os.listdir(out):
        if not name.startswith("text"):
            os.link(out / name, tmp_path / name)
    dataset = CachedDataset(tmp_path)
    assert dataset.keys == list(json.loads((out / "index.json").read_text()))
    item = dataset[0]
    assert set(item) == {"key", "latents", "caption"}
    assert item["caption"] == next(r.caption for r in records if r.id == item["key"])
    with pytest.raises(ValueError, match="not in the cache"):
        CachedDataset(tmp_path, records=[bad])[0]
    with pytest.raises(ValueError, match="build_latent_cache first"):
        CachedDataset(tmp_path / "nothing")
