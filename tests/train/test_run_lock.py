"""One run per output folder, for both trainers: a second run refuses while the first process lives (one sentence
naming the folder and its pid; the CLI exits 2), and a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from openwan.cli.main import main as openwan_main
from openwan.configs import VAE_PRESETS
from openwan.models.image_vae import ImageVAE
from openwan.train import ListBatches, RunLock, Trainer, VAETrainConfig, load_config
from openwan.train.lock import LOCK_FILE
from openwan.train.vae_trainer import VAETrainer

REPO = Path(__file__).resolve().parents[2]
HOLDER = textwrap.dedent("""
    import sys, time
    from openwan.train.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("HOLDING", flush=True)
    time.sleep(600)
""")
CONFIG = textwrap.dedent("""
    model: {preset: tiny}
    stages: [{steps: 1, batch_size: 1, buckets: [[1, 32, 32]]}]
    ema: {decay: 0}
    text_dropout: 0
    log: {progress: false, tensorboard: false}
""")


def _batches() -> ListBatches:
    g = torch.Generator().manual_seed(0)
    return ListBatches([{"latents": torch.randn(1, 16, 1, 4, 4, generator=g), "context": torch.randn(1, 5, 32,
                                                                                                       generator=g)}])


def _vae_batches() -> list[dict]:
    return [{"video": torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1}]


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the run lock of tmp_path/run until the test ends."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "HOLDING"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_refuses_while_the_first_lives(holder, tmp_path, capsys):
    out, proc = holder
    config = tmp_path / "train.yaml"
    config.write_text(CONFIG)
    cfg = load_config(config, [f"output_dir={out}"])
    message = f"{out} is in use by another training run (pid {proc.pid}); wait for it to end"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(cfg, data=_batches()).fit()
    assert openwan_main(["train", "--config", str(config), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=f"pid {proc.pid}"):
        VAETrainer(ImageVAE(VAE_PRESETS["tiny"]), VAETrainConfig(steps=1), out_dir=out).fit(_vae_batches())
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written into the first run's folder
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid  # its lock untouched


def test_a_dead_process_s_lock_is_taken_over_and_released(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}) + "\n")
    cfg = load_config(None, ["model.preset=tiny", "stages.0.steps=1", "stages.0.batch_size=1", "ema.decay=0",
                             "text_dropout=0", "log.progress=false", "log.tensorboard=false", f"output_dir={out}"])
    with caplog.at_level(logging.WARNING, logger="openwan.train"):
        Trainer(cfg, data=_batches()).fit()
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert taken == [f"taking over the run lock of {out}: its process {dead.pid} is gone"]
    assert not (out / LOCK_FILE).exists() and [p.name for p in out.glob("step-*")] == ["step-00000001"]
    # The VAE trainer the same way, and its lock is gone after the run too.
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}) + "\n")
    vae_out = out / "vae"
    vae_out.mkdir()
    (out / LOCK_FILE).rename(vae_out / LOCK_FILE)
    VAETrainer(ImageVAE(VAE_PRESETS["tiny"]), VAETrainConfig(steps=1), out_dir=vae_out).fit(_vae_batches())
    assert not (vae_out / LOCK_FILE).exists() and (vae_out / "step-00000001" / "trainer_state.json").is_file()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with RunLock(tmp_path), RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert not (tmp_path / LOCK_FILE).exists()
