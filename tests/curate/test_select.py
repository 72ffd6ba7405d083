"""Per-phase selection: filters, tier weights, cluster balance, quality weighting, max_clips and caption variants
do what they say; the selection is a manifest whose crop and weight ``openwan train`` honours (through the CLI, on a
tiny random-weight model and real footage)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from openwan.curate.select import (
    SelectConfig,
    TierWeights,
    clip_weights,
    load_select_config,
    read_clips_table,
    select_clips,
    write_selection,
)
from openwan.data.manifest import read_manifest, write_manifest


def _row(i: int, **kw) -> dict:
    row = {"clip_id": f"c{i}", "source": f"/videos/v{i % 3}.mp4", "start": 1.0 * i, "end": 1.0 * i + 5.0,
           "duration": 5.0, "frames": 125, "fps": 25.0, "width": 640, "height": 360, "caption": f"clip {i}",
           "crop": None, "decision": "kept", "reasons": [], "motion_tier": "optimal", "quality_score": 0.5,
           "cluster_id": 0, "subset_i2v": True}
    row.update(kw)
    return row


def test_filters_keep_only_what_they_allow():
    rows = [_row(0), _row(1, decision="rejected", reasons=["too dark"]), _row(2, quality_score=0.2),
            _row(3, duration=12.0), _row(4, width=320, height=180), _row(5, crop=[0, 90, 640, 270]),
            _row(6, motion_tier="static"), _row(7, subset_i2v=False), _row(8, quality_score=None)]
    ids = lambda cfg: [r["clip_id"] for r in select_clips(rows, cfg)]  # noqa: E731
    assert ids(SelectConfig()) == [f"c{i}" for i in range(9) if i != 1]  # rejected clips are dropped
    assert ids(SelectConfig(drop_rejected=False)) == [f"c{i}" for i in range(9)]
    assert "c2" not in ids(SelectConfig(min_quality=0.3)) and "c8" not in ids(SelectConfig(min_quality=0.3))
    assert "c3" not in ids(SelectConfig(max_duration=10.0)) and ids(SelectConfig(min_duration=10.0)) == ["c3"]
    assert set(ids(SelectConfig(min_short_side=300))) == set(ids(SelectConfig())) - {"c4", "c5"}  # crop counts
    assert ids(SelectConfig(tiers=("static",))) == ["c6"]
    assert "c7" not in ids(SelectConfig(subsets=("i2v",))) and len(ids(SelectConfig(subsets=("i2v",)))) == 7


def test_tier_weights_set_the_ratio_of_weights():
    rows = [_row(i, motion_tier=t) for i, t in enumerate(["optimal", "optimal", "static", "camera", "shaky"])]
    cfg = SelectConfig(tier_weights=TierWeights(optimal=1.0, static=0.25, camera=0.5, shaky=0.0))
    out = select_clips(rows, cfg)
    weights = {r["clip_id"]: r["weight"] for r in out}
    assert "c4" not in weights  # weight 0: not selected at all
    assert weights["c0"] == weights["c1"] == pytest.approx(4 * weights["c2"]) == pytest.approx(2 * weights["c3"])
    assert np.mean(list(weights.values())) == pytest.approx(1.0)  # scaled to a mean of 1
    assert {r["select_phase"] for r in out} == {"default"}


def test_cluster_balance_gives_the_long_tail_its_share():
    rows = [_row(i, cluster_id=0) for i in range(90)] + [_row(90 + i, cluster_id=1) for i in range(10)]
    for alpha, share in ((0.0, 0.1), (0.5, 0.25), (1.0, 0.5)):
        out = select_clips(rows, SelectConfig(cluster_alpha=alpha))
        tail = sum(r["weight"] for r in out if r["cluster_id"] == 1) / sum(r["weight"] for r in out)
        assert tail == pytest.approx(share, abs=1e-9), alpha  # sqrt(90)/(sqrt(90)+sqrt(10)) = 0.75 for the head
    weights = clip_weights(rows, SelectConfig(cluster_alpha=1.0))
    assert weights[0] == pytest.approx(1 / 90) and weights[-1] == pytest.approx(1 / 10)


def test_quality_weighting_and_max_clips():
    rows = [_row(i, quality_score=float(i)) for i in range(10)]
    out = select_clips(rows, SelectConfig(quality_power=2.0))
    weights = [r["weight"] for r in out]
    assert weights == sorted(weights) and weights[-1] == pytest.approx(100 * weights[0])  # (10/10)^2 / (1/10)^2
    capped = select_clips(rows, SelectConfig(quality_power=2.0, max_clips=4, seed=1))
    assert len(capped) == 4 and capped == select_clips(rows, SelectConfig(quality_power=2.0, max_clips=4, seed=1))
    # Drawn by weight: over many seeds the best clip is picked far more often than the worst.
    picks = Counter(r["clip_id"] for seed in range(200)
                    for r in select_clips(rows, SelectConfig(quality_power=2.0, max_clips=4, seed=seed)))
    assert picks["c9"] > 150 and picks["c0"] < 20


def test_caption_styles_expand_each_clip():
    rows = [_row(0, captions_styles=["short", "long", "poetic"], captions_texts=["a cat", "a long cat", "o cat"]),
            _row(1, captions_styles=[], captions_texts=[])]
    out = select_clips(rows, SelectConfig(caption_styles=("short", "poetic")))
    assert [(r["clip_id"], r["caption"]) for r in out] == [("c0#short", "a cat"), ("c0#poetic", "o cat"),
                                                           ("c1", "clip 1")]
    assert out[0]["weight"] == pytest.approx(out[2]["weight"] / 2)  # a clip's weight is shared by its variants
    assert len(select_clips(rows, SelectConfig(caption_styles=("all",)))) == 4


def test_missing_columns_and_bad_settings_are_named():
    rows = [{k: v for k, v in _row(0).items() if k not in ("motion_tier", "cluster_id", "quality_score")}]
    with pytest.raises(ValueError, match="select.tiers needs the clips table's 'motion_tier' column"):
        select_clips(rows, SelectConfig(tiers=("optimal",)))
    with pytest.raises(ValueError, match="select.tier_weights .* 'motion_tier' column"):
        select_clips(rows, SelectConfig())
    flat = TierWeights(*([1.0] * 6))
    assert len(select_clips(rows, SelectConfig(tier_weights=flat))) == 1  # equal tier weights need no tiers
    with pytest.raises(ValueError, match="select.cluster_alpha needs the clips table's 'cluster_id' column"):
        select_clips(rows, SelectConfig(tier_weights=flat, cluster_alpha=1.0))
    with pytest.raises(ValueError, match="select.min_quality needs .*'quality_score'"):
        select_clips(rows, SelectConfig(tier_weights=flat, min_quality=0.1))
    with pytest.raises(ValueError, match=r"select.subsets \(flf2v\) needs .*'subset_flf2v'"):
        select_clips(rows, SelectConfig(tier_weights=flat, subsets=("flf2v",)))
    with pytest.raises(ValueError, match="select.cluster_alpha must be a finite number >= 0; got -1.0"):
        SelectConfig(cluster_alpha=-1.0)
    with pytest.raises(ValueError, match="select.tier_weights.static must be a finite number >= 0"):
        TierWeights(static=-0.5)
    with pytest.raises(ValueError, match="select.tiers.0 must be one of"):
        SelectConfig.from_dict({"tiers": ["jumpy"]})


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "phase.yaml"
    path.write_text("phase: i2v-480\nsubsets: [i2v]\ntiers: [optimal, medium]\ncluster_alpha: 0.5\n"
                    "tier_weights: {medium: 0.5}\nmax_clips: 1000\n")
    cfg = load_select_config(path, ["tier_weights.medium=0.25", "seed=3"])
    assert (cfg.phase, cfg.subsets, cfg.tiers, cfg.cluster_alpha) == ("i2v-480", ("i2v",), ("optimal", "medium"), 0.5)
    assert (cfg.tier_weights.medium, cfg.tier_weights.optimal, cfg.seed, cfg.max_clips) == (0.25, 1.0, 3, 1000)
    assert SelectConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config field 'select.colour'"):
        load_select_config(None, ["colour=1"])


def test_tiers_match_the_motion_stage():
    from openwan.curate.motion import TIERS
    from openwan.curate.select import Tier

    assert Tier.__args__ == TIERS


def test_read_clips_table_and_write_selection_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_row(0, crop=[0, 40, 640, 320], embed_vector=[0.1] * 64, clip_path=None),
            _row(3, clip_path="clips/c3.mp4", motion_tier="camera", embed_vector=None)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "clips.parquet")
    back = read_clips_table(tmp_path / "clips.parquet")
    assert back[1]["clip_path"] == str(tmp_path / "clips" / "c3.mp4")  # relative to the table's folder
    out = select_clips(back, SelectConfig(phase="p1"))
    path = write_selection(out, tmp_path / "phase" / "manifest.jsonl", clips_path=tmp_path / "clips.parquet")
    records = read_manifest(path)
    assert [r.id for r in records] == ["c0", "c3"]
    assert records[0].crop == (0, 40, 640, 320) and records[0].start == 0.0 and records[0].end == 5.0
    assert records[0].path == "/videos/v0.mp4" and records[1].path == str(tmp_path / "clips" / "c3.mp4")
    assert records[1].start is None  # a re-encoded clip is its own file
    assert records[0].weight == pytest.approx(2 / 1.5) and records[1].weight == pytest.approx(1 / 1.5)
    # A clip later in its source keeps its frames: the record counts the file's frames up to the clip's end.
    late = write_selection(select_clips([_row(4)], SelectConfig()), tmp_path / "late.jsonl")
    assert read_manifest(late)[0].frames == 225  # 9 s at 25 fps
    extra = json.loads(path.read_text().splitlines()[0])
    assert extra["motion_tier"] == "optimal" and extra["select_phase"] == "p1" and "embed_vector" not in extra
    assert "decision" not in extra and "reasons" not in extra
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in _row(0).items() if k not in ("source", "width")}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="has no source, width column"):
        read_clips_table(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="does not exist"):
        read_clips_table(tmp_path / "none.parquet")


# --------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    """A phase manifest over real footage: letterboxed clips (crop set) and weights from tiers, one clip at 0."""
    from curate.footage import footage, write_video

    tmp = tmp_path_factory.mktemp("select")
    frames = footage("carphone", count=12, size=(48, 32))
    boxed = np.zeros((12, 48, 48, 3), np.uint8)
    boxed[:, 8:40] = frames  # bars above and below
    rows = []
    for i, tier in enumerate(["optimal", "optimal", "static", "camera", "medium"]):
        path = write_video(np.roll(boxed, 6 * i, axis=2), tmp / f"v{i}.mp4", fps=16)
        rows.append(_row(i, source=str(path), start=0.0, end=0.75, duration=0.75, frames=12, fps=16.0, width=48,
                         height=48, crop=[0, 8, 48, 40], motion_tier=tier))
    out = select_clips(rows, SelectConfig(tier_weights=TierWeights(static=0.0)))
    return tmp, write_selection(out, tmp / "phase.parquet"), out


def test_bucket_source_draws_by_the_manifests_weights(selection):
    from openwan.data.sources import bucket_source

    tmp, manifest, out = selection
    weights = {r["clip_id"]: r["weight"] for r in out}
    assert "c2" not in weights and len(weights) == 4  # the static clip got weight 0
    records = read_manifest(manifest)
    assert all(r.crop == (0, 8, 48, 40) and r.frame_size == (48, 32) for r in records)
    source = bucket_source(manifest=str(manifest), cache_dir=None, buckets=[[5, 32, 48], [5, 32, 32]],
                           batch_size=2, seed=0)
    assert source.batch_sampler.weights.tolist() == [weights[r.id] for r in records]
    # One clip set to weight 0 by hand: never drawn, while the others are.
    zeroed = write_manifest([replace(records[0], weight=0.0), *records[1:]], tmp / "zeroed.parquet")
    source = bucket_source(manifest=str(zeroed), cache_dir=None, buckets=[[5, 32, 48], [5, 32, 32]],
                           batch_size=1, seed=0)
    seen = Counter()
    for _ in range(4):
        for batch in source:
            assert tuple(batch["video"].shape) == (1, 3, 5, 32, 48)  # the crop's 3:2, not the file's 1:1
            seen.update(batch["key"])
    assert sum(seen.values()) == 12 and records[0].id not in seen and set(seen) == {r.id for r in records[1:]}


TRAIN = ("model: {preset: tiny, vae: tiny, text_encoder: tiny, tokenizer: byt5}\n"
         "stages:\n  - {name: phase, steps: 4, batch_size: 1, buckets: [[5, 32, 48]]}\n"
         "optim: {lr: 1.0e-3}\nschedule: {kind: constant}\ncheckpoint: {every: 3}\nlog: {progress: false}\n")


@pytest.mark.slow
def test_openwan_train_runs_on_the_selection_and_resumes_exactly(selection, tmp_path):
    from openwan.cli.main import main
    from openwan.train import read_metrics

    _, manifest, _ = selection
    config = tmp_path / "train.yaml"
    config.write_text(TRAIN)
    common = ["train", "--config", str(config), f"data.manifest={manifest}"]
    assert main([*common, f"output_dir={tmp_path / 'a'}"]) == 0
    # The same run in two parts: 3 steps (mid-epoch: 4 draws per epoch), then resumed to 4; the weighted draws
    # continue where they stopped.
    assert main([*common, f"output_dir={tmp_path / 'b'}", "stages.0.steps=3"]) == 0
    assert main([*common, f"output_dir={tmp_path / 'b'}"]) == 0
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("a", "b"))
    assert [m["step"] for m in a] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in a)
    assert [m["loss"] for m in a] == [m["loss"] for m in b] and len({m["loss"] for m in a}) == 4
    assert a[0]["latent_shape"] == [2, 4, 6]  # 5 frames -> 2 latent frames, the crop's 32x48 -> 4x6

def test_a_phase_manifest_selects_and_weights_a_latent_cache(selection):
    import torch

    from openwan.configs import VAE_PRESETS
    from openwan.data.buckets import Bucket
    from openwan.data.cache import build_latent_cache
    from openwan.data.sources import bucket_source
    from openwan.models import WanVAE

    tmp, manifest, _ = selection
    records = read_manifest(manifest)
    torch.manual_seed(0)
    cache = tmp / "cache"
    build_latent_cache(records, WanVAE(VAE_PRESETS["tiny"]).eval(), [Bucket(5, 32, 48)], cache, fps=16)
    # The phase draws only what its manifest names, by its weights: here two of the cached clips, one at weight 0.
    phase = write_manifest([replace(records[0], weight=0.0), replace(records[1], weight=2.0)], tmp / "p2.parquet")
    source = bucket_source(manifest=str(phase), cache_dir=str(cache), buckets=[[5, 32, 48]], batch_size=1, seed=0)
    keys = [key for _ in range(3) for batch in source for key in batch["key"]]
    assert keys == [records[1].id] * 3  # one clip of positive weight: one draw per epoch, always that clip
    assert tuple(next(iter(source))["latents"].shape) == (1, 16, 2, 4, 6)
