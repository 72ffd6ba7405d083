"""Pieces of the trainer on their own: LR schedule, EMA, the atomic checkpoint writer, RNG capture, metrics."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from openwan.train import EMA, MetricsLogger, list_checkpoints, load_config, lr_at, read_metrics, save_checkpoint
from openwan.train import checkpoint as ckpt
from openwan.train.metrics import plot_loss_curves


def test_lr_warmup_then_cosine_per_stage():
    cfg = load_config(None, ["optim.lr=1e-3", "schedule.warmup_steps=4", "schedule.min_lr_ratio=0.1",
                             "stages.0.steps=12", "stages.1.steps=10", "stages.1.lr=2e-4", "stages.1.warmup_steps=0"])
    lrs = [lr_at(cfg, s) for s in range(22)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up reaching lr at its last step
    assert lrs[4] == pytest.approx(1e-3)  # cosine starts at the peak...
    # ...and follows min + (max - min)·(1 + cos(π·k/(steps - warmup)))/2
    k = 6 - 4
    assert lrs[6] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * k / 8)))
    assert all(a > b for a, b in zip(lrs[4:12], lrs[5:12]))  # decreasing
    assert lrs[11] > 1e-4  # never below the floor inside the stage
    assert lrs[12] == pytest.approx(2e-4)  # stage 2: its own lr, no warm-up, a fresh cosine
    assert lrs[21] == pytest.approx(2e-5 + 1.8e-4 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    const = load_config(None, ["schedule.kind=constant", "schedule.warmup_steps=2", "optim.lr=1e-3"])
    assert [lr_at(const, s) for s in range(4)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])


def test_ema_update_swap_and_state():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": p}, decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    for _ in range(5):
        ema.update()
    # shadow_k = 1 - 0.9^k for a parameter held at 1 from a start of 0
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 1 - 0.9**5), rtol=1e-6, atol=1e-7)
    assert ema.shadow["w"].dtype == torch.float32
    with ema.swapped_in():
        assert torch.equal(p.detach(), ema.shadow["w"])
    assert torch.equal(p.detach(), torch.ones(3))  # the live weights come back exactly
    other = EMA({"w": torch.nn.Parameter(torch.zeros(3))}, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["w"], ema.shadow["w"])
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict({"v": torch.zeros(3)})
    bf16 = EMA({"w": torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))}, decay=0.5)
    assert bf16.shadow["w"].dtype == torch.float32


def _files(step: int) -> dict:
    return {"model.safetensors": {"w": torch.full((4,), float(step))},
            "optimizer.pt": {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 0.1}]},
            ckpt.STATE_FILE: {"step": step}}


def test_checkpoint_writer_is_atomic_and_keeps_last(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        folder = save_checkpoint(tmp_path, step, _files(step), keep_last=2)
        assert folder.name == f"step-{step:08d}"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    back = ckpt.read_file(tmp_path / "step-00000003" / "optimizer.pt")  # weights_only=True load
    assert back["state"][0]["step"].item() == 3.0 and back["param_groups"][0]["lr"] == 0.1

    # A writer that dies after its first file leaves only a temporary folder; the newest checkpoint is untouched.
    real = ckpt._write_file

    def dying(path, obj):
        real(path, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_file", dying)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, _files(4), keep_last=2)
    monkeypatch.setattr(ckpt, "_write_file", real)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-step-")]
    assert ckpt.remove_stale(tmp_path) and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # A folder without its state file is not a checkpoint; a damaged file is named in the error.
    (tmp_path / "step-00000009").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    (tmp_path / "step-00000003" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ckpt.CheckpointCorrupt, match="model.safetensors"):
        ckpt.read_file(tmp_path / "step-00000003" / "model.safetensors")
    # Saving a step again (a resumed run reaching the same step) replaces it.
    save_checkpoint(tmp_path, 3, _files(3), keep_last=2)
    assert ckpt.read_file(tmp_path / "step-00000003" / "model.safetensors")["w"][0] == 3.0


def test_rng_capture_restores_every_generator():
    gen = torch.Generator().manual_seed(5)
    gen.manual_seed(9)
    tensors, plain = ckpt.capture_rng({"noise": gen})
    json.dumps(plain)  # plain state is JSON
    first = (torch.rand(3), torch.rand(3, generator=gen), random.random(), np.random.rand())
    ckpt.restore_rng(tensors, plain, {"noise": gen})
    second = (torch.rand(3), torch.rand(3, generator=gen), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_metrics_jsonl_truncate_and_plot(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step, "lr": 1e-3})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a line cut by a kill
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    logger = MetricsLogger(tmp_path)
    logger.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    png = logger.plot()
    assert png.name == "loss_curve.png" and png.read_bytes()[:4] == b"\x89PNG"
    # two runs on one plot (a model's two experts); a run with no loss yet is left out, none at all draws nothing
    (tmp_path / "empty.jsonl").write_text("")
    both = plot_loss_curves({"high": tmp_path / "metrics.jsonl", "low": tmp_path / "empty.jsonl"}, tmp_path / "b.png")
    assert both.read_bytes()[:4] == b"\x89PNG"
    assert plot_loss_curves({"low": tmp_path / "empty.jsonl"}, tmp_path / "none.png") is None
