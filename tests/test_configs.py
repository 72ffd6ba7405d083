"""The ready training configs in configs/: each loads as written, says what it claims, and trains a few steps
with its model and data paths pointed at tiny random-weight releases and a few synthetic clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openwan.cli.main import main
from openwan.configs import VAE_PRESETS
from openwan.train import load_config, load_vae_config, read_metrics
from test_docs import REPO, Scratch, fast_argv

# openwan train (configs/vae-*: train-vae; configs/curate-*: curate, loaded by tests/curate)
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith(("vae-", "curate-")))
VAE_CONFIGS = sorted((REPO / "configs").glob("vae-*.yaml"))  # openwan train-vae
MODEL_PATHS = ("path", "vae", "text_encoder", "tokenizer")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return Scratch(tmp_path_factory.mktemp("configs"))


def test_the_ready_configs_are_there():
    assert {p.name for p in CONFIGS} >= {"t2v-1.3B-lora.yaml", "t2v-1.3B-full.yaml", "t2v-14B-pretrain.yaml",
                                         "demo-small.yaml"}
    assert {p.name for p in VAE_CONFIGS} >= {"vae-stage1.yaml"}


def test_fine_tunes_start_from_the_1_3B_release():
    lora, full = (load_config(REPO / "configs" / name) for name in ("t2v-1.3B-lora.yaml", "t2v-1.3B-full.yaml"))
    assert lora.lora is not None and lora.lora.rank >= 1 and full.lora is None
    for cfg in (lora, full):
        assert cfg.model.path == "/data/Wan2.1-T2V-1.3B"
        assert all(getattr(cfg.model, k).startswith("/data/Wan2.1-T2V-1.3B/") for k in MODEL_PATHS[1:])
        assert {b[1:] for s in cfg.stages for b in s.buckets} <= {(480, 832), (832, 480)}  # the release's sizes


def test_pretraining_is_the_papers_curriculum():
    cfg = load_config(REPO / "configs" / "t2v-14B-pretrain.yaml")
    assert cfg.model.path is None and cfg.model.preset == "t2v-14B"
    sizes = [sorted({(f > 1, min(h, w)) for f, h, w in s.buckets}) for s in cfg.stages]
    assert sizes == [[(False, 192), (False, 256)],  # images at 256 px (and its wide forms)
                     [(False, 256), (True, 192)],  # 192 px videos with 256 px images
                     [(False, 480), (True, 480)],
                     [(False, 720), (True, 720)]]
    assert all(f in (1, 81) for s in cfg.stages for f, _, _ in s.buckets)  # images and 5 s clips at 16 fps
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 1e-3)  # the paper's AdamW settings
    assert all(s.image_video_ratio for s in cfg.stages[1:])


def _model_overrides(cfg, scratch: Scratch) -> list[str]:
    """model.* and data.manifest pointed at the stand-ins (dotted overrides, as a user would on the command line)."""
    out = [f"model.{key}={scratch.substitute(value)}" for key in MODEL_PATHS
           if (value := getattr(cfg.model, key)) and value.startswith("/data/")]
    data = [f"data.manifest={scratch.path('my-clips') / 'manifest.jsonl'}"]
    if cfg.data.cache_dir:  # a config that trains from a recipe's caches runs here on the stand-in clips instead
        data.append("data.cache_dir=null")
    return out + data


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_a_few_steps_on_tiny_models(config, scratch, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo config names the bundled model by its path in a checkout
    cfg = load_config(config)
    overrides = [*_model_overrides(cfg, scratch), f"output_dir={tmp_path / 'run'}"]
    argv = fast_argv(["train", "--config", str(config), *overrides], Path("."))
    assert main(argv) == 0
    trained = load_config(tmp_path / "run" / "config.yaml")
    steps = trained.total_steps
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == list(range(1, steps + 1))
    final = tmp_path / "run" / f"step-{steps:08d}"
    assert final.is_dir()
    if cfg.lora is not None:
        assert any(final.glob("lora*.safetensors"))


def test_vae_stage1_is_the_papers():
    cfg = load_vae_config(REPO / "configs" / "vae-stage1.yaml")
    assert (cfg.stage, cfg.model.preset, cfg.data.frames) == (1, "wan2.1", 1)
    assert (cfg.l1_weight, cfg.kl_weight, cfg.perceptual_weight) == (3.0, 3e-6, 3.0)


@pytest.mark.parametrize("config", VAE_CONFIGS, ids=[p.stem for p in VAE_CONFIGS])
def test_vae_config_trains_a_few_steps_on_a_tiny_vae(config, scratch, tmp_path):
    manifest = scratch.path("my-clips") / "manifest.jsonl"
    out = tmp_path / "run"
    assert main(["train-vae", "--config", str(config), f"data.manifest={manifest}", f"output_dir={out}",
                 "model.preset=tiny", "data.size=32", "data.batch_size=1", "data.num_workers=0", "steps=2",
                 "save_every=0", "log_every=1", "stats_batches=2"]) == 0
    written = out / ("image_vae.pth" if load_vae_config(config).stage == 1
                     else "Wan2.1_VAE.pth")
    assert written.is_file()
    assert json.loads(written.with_suffix(".json").read_text())["dim"] == VAE_PRESETS["tiny"].dim
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
