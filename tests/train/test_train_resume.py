"""Exact resume, shown on real processes: a training run SIGKILLed after a checkpoint (and one killed in the middle of
writing a checkpoint) resumes and produces the same per-step losses, bit for bit, as a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openwan.train import latest_checkpoint, list_checkpoints, read_metrics
from openwan.train.checkpoint import read_file

REPO = Path(__file__).resolve().parents[2]

# Two stages (images, then videos) so a resumed run also crosses a stage boundary; text dropout, EMA, logit-normal
# σ with the resolution shift, warm-up + cosine, gradient clipping and activation checkpointing all take part.
CONFIG = textwrap.dedent("""
    model: {preset: tiny}
    stages:
      - {name: images, steps: 4, batch_size: 2, buckets: [[1, 32, 32]]}
      - {name: videos, steps: 6, batch_size: 2, buckets: [[5, 32, 32]], lr: 5.0e-3}
    optim: {lr: 1.0e-2, grad_clip: 0.5}
    schedule: {kind: cosine, warmup_steps: 2}
    timesteps: {mode: logit_normal, shift: resolution}
    ema: {decay: 0.9}
    checkpoint: {every: 3, keep_last: 2}
    text_dropout: 0.5
    activation_checkpointing: true
    log: {progress: false}
    seed: 7
""")

# The training process: the public API on in-memory batches (the stage-0 batches are images, stage 1 videos).
CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from openwan.train import ListBatches, Trainer, load_config
    from openwan.train import checkpoint as ckpt

    config, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = load_config(config, [f"output_dir={out}"])
    g = torch.Generator().manual_seed(0)
    def batch(frames):
        return {"latents": torch.randn(2, 16, frames, 4, 4, generator=g),
                "context": torch.randn(2, 5, 32, generator=g), "context_empty": torch.randn(2, 32, generator=g)}
    stage_batches = [[batch(1) for _ in range(2)], [batch(2) for _ in range(3)]]

    def hang(reason):
        print("READY", reason, flush=True)
        time.sleep(600)

    hook = None
    kind, _, at = mode.partition(":")
    if kind == "stop_after":  # freeze in the step after `at`, before it is logged, for the parent to SIGKILL
        hook = lambda trainer, metrics: hang("step") if trainer.step == int(at) else None
    elif kind == "hang_in_write":  # freeze while checkpoint `at` is half written
        write = ckpt._write_file
        def slow_write(path, obj):
            write(path, obj)
            if path.parent.name.startswith(".tmp-step-") and int(path.parent.name.split("-")[2]) == int(at):
                hang("write")
        ckpt._write_file = slow_write
    Trainer(cfg, data=lambda index, stage: ListBatches(stage_batches[index]), on_step_end=hook).fit()
    print("DONE", flush=True)
""")


def _run(tmp: Path, out: Path, mode: str = "run", kill_on_ready: bool = False) -> None:
    config, script = tmp / "config.yaml", tmp / "child.py"
    config.write_text(CONFIG)
    script.write_text(CHILD)
    _run_child([str(script), str(config), str(out), mode], kill_on_ready)


def _run_child(args: list[str], kill_on_ready: bool) -> None:
    """Run a child script to the end (it prints DONE), or SIGKILL it once it prints READY at its kill point."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        if kill_on_ready:
            line = proc.stdout.readline()  # blocks until the child froze at the chosen point (or died)
            assert line.startswith("READY"), f"child did not reach its kill point: {line!r} {proc.stderr.read()}"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            return
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "DONE" in stdout, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _run(tmp, tmp / "out")
    return tmp / "out"


def _assert_same_run(out: Path, reference: Path) -> None:
    ours, ref = _losses(out), _losses(reference)
    assert [s for s, _ in ref] == list(range(1, 11))
    assert ours == ref  # every loss equal as a float64 read back from JSON: bit for bit
    final = "step-00000010"
    for name in ("diffusion_pytorch_model.safetensors", "ema.safetensors"):
        a, b = load_file(str(out / final / name)), load_file(str(reference / final / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [s for s, _ in list_checkpoints(out)] == [9, 10]  # keep_last: 2
    assert (out / "loss_curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_is_bit_exact(tmp_path, reference):
    out = tmp_path / "out"
    _run(tmp_path, out, "stop_after:5", kill_on_ready=True)
    assert [s for s, _ in list_checkpoints(out)] == [3]
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5]  # steps 4 and 5 ran after the checkpoint
    _run(tmp_path, out)  # resume=auto picks up step-00000003
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_previous_and_resumes(tmp_path, reference):
    out = tmp_path / "out"
    _run(tmp_path, out, "hang_in_write:6", kill_on_ready=True)
    partial = [p.name for p in out.iterdir() if p.name.startswith(".tmp-step-")]
    assert len(partial) == 1 and not (out / "step-00000006").exists()
    latest = latest_checkpoint(out)
    assert latest is not None and latest.name == "step-00000003"
    state = read_file(latest / "trainer_state.json")  # the previous checkpoint is whole and loads
    assert state["step"] == 3 and state["data"]["stage"] == 0
    for name in ("diffusion_pytorch_model.safetensors", "optimizer.pt", "rng.safetensors", "ema.safetensors"):
        assert read_file(latest / name)
    started = time.time()
    _run(tmp_path, out)
    assert not any(p.name.startswith(".tmp-step-") for p in out.iterdir())  # the stale half-checkpoint is gone
    _assert_same_run(out, reference)
    print(f"resume after a kill mid-write: {time.time() - started:.1f} s")


# ------------------------------------------------------------------------------------------ the VAE trainer

# The VAE trainer on the same layout: a stage-1 run (tiny image VAE, save_every 2, keep_last 2) killed in step 6
# resumes from its step-4 folder and ends with the losses and the exported image_vae.pth of an uninterrupted run.
VAE_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from openwan.train.vae_config import VAETrainConfig
    from openwan.train import vae_trainer

    out, mode = sys.argv[1], sys.argv[2]
    cfg = VAETrainConfig.from_dict({"stage": 1, "steps": 8, "lr": 2e-3, "warmup_steps": 2, "min_lr_ratio": 0.1,
                                    "save_every": 2, "keep_last": 2, "model": {"preset": "tiny"}, "output_dir": out,
                                    "resume": True, "log_every": 1})
    g = torch.Generator().manual_seed(0)
    data = [{"video": torch.rand(2, 3, 1, 16, 16, generator=g) * 2 - 1} for _ in range(3)]
    kind, _, at = mode.partition(":")
    if kind == "stop_after":  # freeze in the step after `at`, before it is logged, for the parent to SIGKILL
        step = vae_trainer.VAETrainer.train_step
        def train_step(self, batch):
            metrics = step(self, batch)
            if self.step == int(at) + 1:
                print("READY step", flush=True)
                time.sleep(600)
            return metrics
        vae_trainer.VAETrainer.train_step = train_step
    torch.manual_seed(0)  # the fresh model's initialisation
    vae_trainer.run_stage(cfg, data)
    print("DONE", flush=True)
""")


def _run_vae(tmp: Path, out: Path, mode: str = "run", kill_on_ready: bool = False) -> None:
    script = tmp / "vae_child.py"
    script.write_text(VAE_CHILD)
    _run_child([str(script), str(out), mode], kill_on_ready)


@pytest.mark.slow
def test_vae_sigkill_after_checkpoint_then_resume_is_bit_exact(tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    _run_vae(tmp_path, reference)
    _run_vae(tmp_path, out, "stop_after:5", kill_on_ready=True)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]  # step-N folders, keep_last 2
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5]  # step 5 ran after the step-4 checkpoint, 6 was cut
    _run_vae(tmp_path, out)  # resume: from step-00000004, taking over the killed run's lock
    assert _losses(out) == _losses(reference) and [s for s, _ in _losses(out)] == list(range(1, 9))
    assert [s for s, _ in list_checkpoints(out)] == [6, 8]
    a, b = torch.load(out / "image_vae.pth", weights_only=True), torch.load(reference / "image_vae.pth",
                                                                           weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
