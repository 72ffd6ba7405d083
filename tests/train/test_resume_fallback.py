"""Resume survives a damaged newest checkpoint: every step folder carries the size and sha256 of its files, a resume
verifies the newest one and, when it fails (a file truncated, changed or missing, trainer_state.json empty or
unreadable), falls back to the newest that verifies with one log line — continuing with the very numbers of a run
resumed from that checkpoint directly. Real trainers on tiny models, real files."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openwan.train import ListBatches, Trainer, load_config, read_metrics
from openwan.train import checkpoint as ckpt
from openwan.train.vae_trainer import VAETrainConfig, run_stage

DIT_MODEL = "diffusion_pytorch_model.safetensors"
VAE_MODEL = "model.safetensors"
STEP2, STEP4 = ckpt.checkpoint_name(2), ckpt.checkpoint_name(4)


# ------------------------------------------------------------------------------------------ damage


def _truncate(folder: Path, name: str) -> None:
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(folder: Path, name: str) -> None:
    """One byte in the tensor data changed: the file still loads, with a wrong weight."""
    path = folder / name
    data = bytearray(path.read_bytes())
    data[-9] ^= 0x40
    path.write_bytes(bytes(data))


def _delete(folder: Path, name: str) -> None:
    (folder / "optimizer.pt").unlink()


def _empty_state(folder: Path, name: str) -> None:
    (folder / ckpt.STATE_FILE).write_text("{}")


def _garbage_state(folder: Path, name: str) -> None:
    (folder / ckpt.STATE_FILE).write_text('{"step": 4, "rng"')


DAMAGE: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "truncated": (_truncate, "bytes, {size} when written"),
    "flipped": (_flip, "does not match its checksum"),
    "deleted": (_delete, "optimizer.pt is missing"),
    "empty_state": (_empty_state, "trainer_state.json is empty"),
    "garbage_state": (_garbage_state, "trainer_state.json cannot be read"),
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("run.lock"))
    return dst


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _fallback_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "fails verification" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------------------ DiT trainer


def _dit_cfg(out: Path, *overrides: str):
    return load_config(None, ["model.preset=tiny", f"output_dir={out}", "log.progress=false", "stages.0.steps=4",
                              "checkpoint.every=2", "checkpoint.keep_last=5", "text_dropout=0", "seed=3",
                              *overrides])


def _dit_batches() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"latents": torch.randn(2, 16, 1, 4, 4, generator=g), "context": torch.randn(2, 5, 32, generator=g)}
            for _ in range(3)]


def _dit_fit(out: Path, *overrides: str) -> None:
    Trainer(_dit_cfg(out, *overrides), data=ListBatches(_dit_batches())).fit()


@pytest.fixture(scope="module")
def dit_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(a run of 4 steps with checkpoints at 2 and 4, the same run resumed from step 2 directly)."""
    tmp = tmp_path_factory.mktemp("dit")
    _dit_fit(tmp / "run")
    assert [s for s, _ in ckpt.list_checkpoints(tmp / "run")] == [2, 4]
    direct = _copy(tmp / "run", tmp / "direct")
    shutil.rmtree(direct / STEP4)
    _dit_fit(direct, f"resume={direct / STEP2}")
    return tmp / "run", direct


def test_every_file_of_a_step_folder_has_its_checksum(dit_runs):
    folder = dit_runs[0] / STEP4
    recorded = json.loads((folder / ckpt.CHECKSUM_FILE).read_text())["files"]
    files = sorted(p.name for p in folder.iterdir() if p.name != ckpt.CHECKSUM_FILE)
    assert sorted(recorded) == files and ckpt.STATE_FILE in files
    for name, entry in recorded.items():
        assert entry["size"] == (folder / name).stat().st_size
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert ckpt.checkpoint_problem(folder) is None


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_dit_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, dit_runs, damage, caplog):
    run, direct = dit_runs
    out = _copy(run, tmp_path / "out")
    damage_fn, reason = DAMAGE[damage]
    size = (out / STEP4 / DIT_MODEL).stat().st_size
    damage_fn(out / STEP4, DIT_MODEL)
    with caplog.at_level(logging.WARNING, logger="openwan.train"):
        _dit_fit(out)  # resume=auto
    line = _fallback_line(caplog)
    assert str(out / STEP4) in line and reason.format(size=size) in line and f"resuming from {STEP2}" in line
    assert _losses(out) == _losses(direct) == _losses(run)  # bit for bit: the same steps 3 and 4 again
    for name in (DIT_MODEL, "ema.safetensors"):
        assert _same_tensors(out / STEP4 / name, direct / STEP4 / name), name
    assert ckpt.checkpoint_problem(out / STEP4) is None  # the rewritten step 4 verifies


def test_explicit_resume_of_a_damaged_checkpoint_is_refused(tmp_path, dit_runs):
    out = _copy(dit_runs[0], tmp_path / "out")
    _flip(out / STEP4, DIT_MODEL)
    with pytest.raises(ValueError, match=rf"resume=.*{STEP4} fails verification \({DIT_MODEL} does not match its "
                                         "checksum\\)"):
        _dit_fit(out, f"resume={out / STEP4}")
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4]  # refused before any step


def test_no_verifying_checkpoint_is_refused_naming_the_newest(tmp_path, dit_runs):
    out = _copy(dit_runs[0], tmp_path / "out")
    _empty_state(out / STEP4, DIT_MODEL)
    _truncate(out / STEP2, DIT_MODEL)
    with pytest.raises(ValueError, match=rf"no checkpoint in .* verifies \(the newest, {STEP4}: trainer_state.json "
                                         r"is empty \(\{\}\)\)"):
        _dit_fit(out)


def test_a_folder_without_checksums_is_verified_by_reading(tmp_path, dit_runs, caplog):
    out = _copy(dit_runs[0], tmp_path / "out")
    for _, folder in ckpt.list_checkpoints(out):
        (folder / ckpt.CHECKSUM_FILE).unlink()  # as written before checksums existed
    assert ckpt.resume_folder(out, "auto") == out / STEP4  # accepted as it is
    _truncate(out / STEP4, DIT_MODEL)  # a damage reading finds
    with caplog.at_level(logging.WARNING, logger="openwan.train"):
        assert ckpt.resume_folder(out, "auto") == out / STEP2
    assert f"{DIT_MODEL} cannot be read" in _fallback_line(caplog)


def test_an_empty_state_is_refused_in_one_sentence_when_loaded(tmp_path, dit_runs):
    out = _copy(dit_runs[0], tmp_path / "out")
    _empty_state(out / STEP4, DIT_MODEL)
    trainer = Trainer(_dit_cfg(out), data=ListBatches(_dit_batches()))
    with pytest.raises(ckpt.CheckpointCorrupt, match=r"trainer_state.json cannot resume a run \(is empty"):
        trainer.load_checkpoint(out / STEP4)  # no KeyError


def test_a_resumed_run_keeps_its_new_checkpoint_beside_a_later_damaged_one(tmp_path, dit_runs):
    out = _copy(dit_runs[0], tmp_path / "out")
    _flip(out / STEP4, DIT_MODEL)
    # keep_last 1: the resumed run ends at step 3 while the damaged step 4 is still there; step 3 is the one kept.
    _dit_fit(out, "checkpoint.keep_last=1", "stages.0.steps=3")
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 4]
    assert ckpt.resume_folder(out, "auto") == out / ckpt.checkpoint_name(3)


# ------------------------------------------------------------------------------------------ VAE trainer


def _vae_run(out: Path) -> None:
    cfg = VAETrainConfig.from_dict({"stage": 1, "steps": 4, "lr": 2e-3, "save_every": 2, "keep_last": 5,
                                    "model": {"preset": "tiny"}, "output_dir": str(out), "resume": True,
                                    "log_every": 1})
    g = torch.Generator().manual_seed(0)
    data = [{"video": torch.rand(2, 3, 1, 16, 16, generator=g) * 2 - 1} for _ in range(3)]
    torch.manual_seed(0)  # a fresh model's initialisation
    run_stage(cfg, data)


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("vae")
    _vae_run(tmp / "run")
    assert [s for s, _ in ckpt.list_checkpoints(tmp / "run")] == [2, 4]
    direct = _copy(tmp / "run", tmp / "direct")
    shutil.rmtree(direct / STEP4)
    _vae_run(direct)  # resumes from step 2, the newest it has
    return tmp / "run", direct


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty_state"])
def test_vae_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, vae_runs, damage, caplog):
    run, direct = vae_runs
    out = _copy(run, tmp_path / "out")
    damage_fn, reason = DAMAGE[damage]
    size = (out / STEP4 / VAE_MODEL).stat().st_size
    damage_fn(out / STEP4, VAE_MODEL)
    with caplog.at_level(logging.WARNING, logger="openwan.train"):
        _vae_run(out)
    line = _fallback_line(caplog)
    assert str(out / STEP4) in line and reason.format(size=size) in line and f"resuming from {STEP2}" in line
    assert _losses(out) == _losses(direct) == _losses(run)
    assert _same_tensors(out / STEP4 / VAE_MODEL, direct / STEP4 / VAE_MODEL)
    assert (out / "image_vae.pth").read_bytes() == (direct / "image_vae.pth").read_bytes()
