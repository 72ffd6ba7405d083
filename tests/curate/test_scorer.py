"""The expert scorer workflow on real footage: clusters, a label sheet, a scorer trained on labels that are a known
function of the footage (brightness and colourfulness), which must rank held-out clips; saving without pickle."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from curate.footage import footage
from openwan.curate.base import ClipFrames
from openwan.curate.embed import EmbedConfig, EmbedStage
from openwan.curate.scorer import (
    SHEET_COLUMNS,
    ScorerConfig,
    ScorerStage,
    TrainScorerConfig,
    cluster_embeddings,
    label_sample,
    load_scorer,
    read_labels,
    train_scorer,
    write_label_sheet,
)


def _measures(frames: np.ndarray) -> tuple[float, float]:
    """Mean brightness (0-1) and Hasler-Suesstrunk colourfulness (/100) of frames."""
    f = frames.astype(np.float64)
    rg, yb = f[..., 0] - f[..., 1], 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return f.mean() / 255, colourful / 100


@pytest.fixture(scope="module")
def rows():
    """80 clips of real footage under random exposure and saturation changes, embedded with the pixels embedder;
    ``truth`` is 3 x brightness + 2 x colourfulness."""
    rng = np.random.default_rng(0)
    sources = {"bikes": footage("bikes", size=(320, 136)), "carphone": footage("carphone")}
    stage = EmbedStage(EmbedConfig(embedder="pixels"))
    out = []
    for i in range(80):
        name = ("bikes", "carphone")[i % 2]
        start = int(rng.integers(0, len(sources[name]) - 24))
        f = sources[name][start:start + 24:8].astype(np.float32)  # 3 frames over 1 s
        grey = f.mean(-1, keepdims=True)
        f = np.clip((grey + rng.uniform(0, 1.6) * (f - grey)) * rng.uniform(0.5, 1.3), 0, 255).astype(np.uint8)
        brightness, colourful = _measures(f)
        row = {"clip_id": f"c{i:03d}", "source": f"/data/{name}.mp4", "start": start / 25, "end": (start + 24) / 25,
               "truth": 3 * brightness + 2 * colourful, "m_colourful": colourful}
        row.update(stage(row, ClipFrames(f, np.arange(3) / 3, 3.0, (f.shape[2], f.shape[1]))).values)
        out.append(row)
    return out


def test_trained_scorer_ranks_held_out_clips(rows, tmp_path):
    labels = {r["clip_id"]: r["truth"] for r in rows[:50]}
    scorer, metrics = train_scorer(rows, labels, TrainScorerConfig(alpha=1.0))
    assert metrics["spearman"] > 0.8 and metrics["n"] == 50 and metrics["folds"] == 5, metrics
    held_out = rows[50:]
    rho = spearmanr(scorer.predict(held_out), [r["truth"] for r in held_out]).statistic
    assert rho > 0.8, rho
    # saved as safetensors + JSON (no pickle), reloaded to the same numbers
    folder = scorer.save(tmp_path / "scorer")
    assert sorted(p.name for p in folder.iterdir()) == ["scorer.json", "scorer.safetensors"]
    meta = json.loads((folder / "scorer.json").read_text())
    assert meta["embed_model"] == "pixels-v1" and len(meta["feature_names"]) == 776
    assert np.array_equal(load_scorer(folder).predict(held_out), scorer.predict(held_out))
    # the stage applies it, rejecting below min_score
    cfg = ScorerConfig(path=str(folder), min_score=float(np.median(scorer.predict(held_out))))
    assert cfg.enabled  # giving the path turns the stage on
    stage = ScorerStage(cfg)
    frames = ClipFrames(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(1), 8.0, (8, 8))
    outs = [stage(r, frames) for r in held_out]
    assert np.allclose([o.values["scorer_score"] for o in outs], scorer.predict(held_out), rtol=1e-12, atol=0)
    assert 10 <= sum(bool(o.reasons) for o in outs) <= 20
    assert next(o for o in outs if o.reasons).reasons[0].startswith("expert score ")


def test_scorer_refuses_another_embedder(rows, tmp_path):
    scorer, _ = train_scorer(rows, {r["clip_id"]: r["truth"] for r in rows[:20]})
    other = dict(rows[30], embed_model="wan-clip-vit-h-14")
    with pytest.raises(ValueError, match="embeddings of wan-clip-vit-h-14, but the scorer was trained on pixels-v1"):
        scorer.predict([other])
    with pytest.raises(ValueError, match="no expert scorer"):
        ScorerStage(ScorerConfig(path=str(tmp_path)))
    with pytest.raises(ValueError, match="scorer.path is not given"):
        ScorerConfig(enabled=True)


def test_measures_and_mlp_round_trip(rows, tmp_path):
    few = [dict(r, embed_vector=r["embed_vector"][:8]) for r in rows[:30]]  # a small model: 8 + 1 features
    cfg = TrainScorerConfig(model="mlp", hidden=8, measures=("m_colourful",), folds=3)
    scorer, metrics = train_scorer(few, {r["clip_id"]: r["truth"] for r in few}, cfg)
    assert len(scorer.layers) == 2 and scorer.feature_names[-1] == "m_colourful"
    assert np.array_equal(load_scorer(scorer.save(tmp_path)).predict(few), scorer.predict(few))
    with pytest.raises(ValueError, match="has no finite m_colourful"):
        scorer.predict([dict(few[0], m_colourful=None)])


def test_label_sheet_round_trip(rows, tmp_path):
    labels = cluster_embeddings(np.array([r["embed_vector"] for r in rows]), k=5, seed=0)
    assert np.array_equal(labels, cluster_embeddings(np.array([r["embed_vector"] for r in rows]), k=5, seed=0))
    assert set(labels) == set(range(5))
    clustered = [dict(r, cluster_id=int(c)) for r, c in zip(rows, labels)]
    sample = label_sample(clustered, per_cluster=2, seed=0)
    assert len(sample) == 10 and {s["cluster_id"] for s in sample} == set(range(5))
    assert sample == label_sample(clustered, per_cluster=2, seed=0)
    sheet = write_label_sheet(sample, tmp_path / "labels.csv")
    with sheet.open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == SHEET_COLUMNS and all(t["score"] == "" for t in table)
    table[0]["score"], table[1]["score"] = "4.5", "2"  # a person scores two clips, leaves the rest
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    assert read_labels(sheet) == {table[0]["clip_id"]: 4.5, table[1]["clip_id"]: 2.0}
    table[2]["score"] = "good"
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    with pytest.raises(ValueError, match=f"line 4 \\(clip {table[2]['clip_id']}\\): score 'good' is not a finite"):
        read_labels(sheet)
    with pytest.raises(ValueError, match="run the curation with the clusters stage"):
        label_sample(rows, per_cluster=2)
