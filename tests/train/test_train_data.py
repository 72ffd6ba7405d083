"""Training from config through the data layer: a manifest of raw clips (with bad files) read by DataLoader workers,
resumed exactly through the bucket sampler's state, and a latent + text cache; via the `openwan train` command."""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import ByT5Tokenizer, UMT5EncoderModel

from openwan.cli import train as train_cmd
from openwan.configs import TEXT_ENCODER_PRESETS, VAE_PRESETS
from openwan.data.buckets import Bucket
from openwan.data.cache import CachedDataset, build_latent_cache, build_text_cache
from openwan.data.manifest import ClipRecord, read_manifest, write_manifest
from openwan.data.video import save_video
from openwan.models import WanVAE
from openwan.train import Trainer, list_checkpoints, load_config, read_metrics


def _manifest(folder, bad: bool = True):
    g = torch.Generator().manual_seed(0)
    records = []
    for i in range(4):
        path = save_video(torch.rand(5, 32, 32, 3, generator=g), folder / f"clip{i}.mp4", fps=16)
        records.append(ClipRecord(path=path.name, caption=f"clip number {i}", frames=5, fps=16, width=32, height=32))
    for i in range(4):
        path = save_video(torch.rand(1, 32, 32, 3, generator=g), folder / f"image{i}.png")
        records.append(ClipRecord(path=path.name, caption=f"image number {i}", frames=1, fps=16, width=32, height=32))
    if bad:
        (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 200)
        records += [ClipRecord(path=name, caption="bad", frames=5, fps=16, width=32, height=32)
                    for name in ("corrupt.mp4", "missing.mp4")]
    return write_manifest(records, folder / "manifest.jsonl")


CONFIG = """
model: {preset: tiny, vae: tiny, text_encoder: tiny, tokenizer: byt5}
data: {num_workers: 2}
stages:
  - {name: joint, steps: 6, batch_size: 2, buckets: [[1, 32, 32], [5, 32, 32]], image_video_ratio: 0.5}
optim: {lr: 1.0e-3}
schedule: {kind: constant}
checkpoint: {every: 3, keep_last: 2}
log: {progress: false}
"""


def _cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="openwan")
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *argv])
    return args.run(args)


def test_manifest_training_with_workers_and_bad_files_resumes_exactly(tmp_path):
    manifest = _manifest(tmp_path)
    config = tmp_path / "train.yaml"
    config.write_text(CONFIG)
    common = ["--config", str(config), f"data.manifest={manifest}"]
    assert _cli(*common, f"output_dir={tmp_path / 'a'}") == 0
    # The same run in two parts: 3 steps, then (a new process would do the same) resume to 6.
    assert _cli(*common, f"output_dir={tmp_path / 'b'}", "stages.0.steps=3") == 0
    assert _cli(*common, f"output_dir={tmp_path / 'b'}") == 0
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("a", "b"))
    assert [r["step"] for r in a] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["latent_shape"] for r in a] == [r["latent_shape"] for r in b]
    shapes = {tuple(r["latent_shape"]) for r in a}
    assert shapes == {(1, 4, 4), (2, 4, 4)}  # images and videos both trained (image_video_ratio 0.5)
    state = list_checkpoints(tmp_path / "a")[-1][1] / "trainer_state.json"
    assert "epoch" in state.read_text() and "position" in state.read_text()  # the sampler's position is saved


def test_cache_training_and_bucket_mismatch(tmp_path):
    manifest = _manifest(tmp_path, bad=False)
    records = read_manifest(manifest)
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    encoder = UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()).eval()
    tokenizer = ByT5Tokenizer()
    cache = tmp_path / "cache"
    build_latent_cache(records, vae, [Bucket(1, 32, 32), Bucket(5, 32, 32)], cache)
    build_text_cache(records, encoder, tokenizer, cache, text_len=32)
    cfg = load_config(None, ["model.preset=tiny", f"data.cache_dir={cache}", f"output_dir={tmp_path / 'run'}",
                             "stages.0.steps=3", "stages.0.batch_size=2", "stages.0.buckets=[[5, 32, 32]]",
                             "log.progress=false"])
    metrics = Trainer(cfg).fit()  # no VAE or text encoder needed: the cache holds latents and text states
    assert metrics["latent_shape"] == [2, 4, 4]
    # A stage on shorter clips than the cache holds trains on their first latent frames.
    short = cfg.replace(output_dir=str(tmp_path / "short"), stages=[{"steps": 1, "batch_size": 2,
                                                                      "buckets": [[1, 32, 32]]}])
    assert Trainer(short).fit()["latent_shape"] == [1, 4, 4]
    wrong = cfg.replace(output_dir=str(tmp_path / "wrong"), stages=[{"steps": 1, "buckets": [[1, 64, 64]]}])
    with pytest.raises(ValueError, match=r"no clip of the cache .* is in the buckets.*fewer frames at the "
                                         r"same height"):
        Trainer(wrong).fit()


def test_random_windows_cut_long_cached_clips_anywhere_and_resume_exactly(tmp_path):
    """window: random: a stage of 5-frame buckets (2 latent frames) on clips cached at 17 frames (5 latent frames)
    trains on windows at every latent offset, each exactly a slice of its clip's cached latents, and a run resumed
    half way draws the same windows (the same losses)."""
    g = torch.Generator().manual_seed(1)
    records = [ClipRecord(path=save_video(torch.rand(17, 32, 32, 3, generator=g), tmp_path / f"long{i}.mp4",
                                          fps=16).name, caption=f"long clip {i}", frames=17, fps=16, width=32,
                          height=32) for i in range(4)]
    records = read_manifest(write_manifest(records, tmp_path / "manifest.jsonl"))
    torch.manual_seed(0)
    cache = tmp_path / "cache"
    build_latent_cache(records, WanVAE(VAE_PRESETS["tiny"]).eval(), [Bucket(17, 32, 32)], cache)
    build_text_cache(records, UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()).eval(), ByT5Tokenizer(), cache,
                     text_len=32)
    overrides = ["model.preset=tiny", f"data.cache_dir={cache}", "stages.0.steps=6", "stages.0.batch_size=2",
                 "stages.0.buckets=[[5, 32, 32]]", "stages.0.window=random", "checkpoint.every=3",
                 "schedule.kind=constant", "log.progress=false", "log.every=1"]
    seen = []

    class Spy(Trainer):
        def prepare_batch(self, batch):
            x0, context = super().prepare_batch(batch)
            seen.extend(zip(batch["key"], x0))
            return x0, context

    Spy(load_config(None, [*overrides, f"output_dir={tmp_path / 'a'}"])).fit()
    whole = CachedDataset(cache)
    starts = []
    for key, window in seen:
        clip = whole[whole.keys.index(key)]["latents"]  # [C, 5, h, w]
        assert window.shape[1] == 2
        starts += [s for s in range(4) if torch.equal(clip[:, s:s + 2], window)][:1]
    assert len(starts) == len(seen) == 12 and set(starts) == {0, 1, 2, 3}
    Trainer(load_config(None, [*overrides, f"output_dir={tmp_path / 'b'}", "stages.0.steps=3"])).fit()
    Trainer(load_config(None, [*overrides, f"output_dir={tmp_path / 'b'}"])).fit()
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("a", "b"))
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(a) == 6


def test_random_windows_need_a_cache_and_one_window_length(tmp_path):
    manifest = _manifest(tmp_path, bad=False)
    with pytest.raises(ValueError, match=r"stages.0.window"):
        load_config(None, ["stages.0.window=middle"])
    with pytest.raises(ValueError, match=r"stages.0.buckets.*one frame count"):
        load_config(None, ["stages.0.window=random", "stages.0.buckets=[[1, 32, 32], [5, 32, 32]]"])
    cfg = load_config(None, ["model.preset=tiny", "model.vae=tiny", "model.text_encoder=tiny", "model.tokenizer=byt5",
                             f"data.manifest={manifest}", "stages.0.window=random", "stages.0.buckets=[[5, 32, 32]]",
                             f"output_dir={tmp_path / 'run'}", "log.progress=false"])
    with pytest.raises(ValueError, match=r"window: random cuts windows from a latent cache"):
        Trainer(cfg).fit()
    assert not list((tmp_path / "run").glob("step-*"))


def test_workers_that_decode_video_are_spawned(tmp_path, monkeypatch):
    """A manifest source's workers decode video: they start as fresh processes, since a worker forked after the
    process has used FFmpeg can hang in it (PyAV 18.1.1). Their batches are the ones the same source gives without
    workers."""
    from openwan.data import sources

    contexts = []

    class Recorded(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            contexts.append(kwargs.get("multiprocessing_context"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sources, "DataLoader", Recorded)
    manifest = _manifest(tmp_path, bad=False)

    def first_batches(workers: int) -> list[torch.Tensor]:
        source = sources.bucket_source(manifest=str(manifest), cache_dir=None, buckets=[[5, 32, 32]], batch_size=2,
                                       seed=0, num_workers=workers)
        return [batch["video"] for batch, _ in zip(source, range(2))]

    spawned, inline = first_batches(1), first_batches(0)
    assert contexts == ["spawn", None] and len(spawned) == 2
    assert all(torch.equal(a, b) for a, b in zip(spawned, inline))
