"""Distillation under torchrun (2 CPU processes on gloo) equals one process: data parallel with FSDP2 (the EMA target
swapped into sharded parameters, the teacher sharded too, each process holding half of it — a two-expert teacher
included, whose experts then run on every rank's whole batch) and Ulysses context parallel (student and teacher split
over ranks). A run from a latent + text cache through ``openwan train --config``, as a user starts one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openwan.cli.main import main as openwan_main
from openwan.configs import DIT_PRESETS
from openwan.data.cache import LATENT_INDEX, TEXT_EMPTY, TEXT_INDEX
from openwan.models import WanDiT
from openwan.train import read_metrics
from tiny import randomize

TOL = 1e-5  # relative, per step
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write_cache(folder: Path, dim: int = 32, text_len: int = 32) -> None:
    """Eight 5-frame clips' latents and text states, in the layout openwan.data.cache reads."""
    g = torch.Generator().manual_seed(11)
    latents, texts, index, items = {}, {}, {}, {}
    for i in range(8):
        key, length = f"clip{i}", 3 + i % 4
        latents[key] = torch.randn(16, 2, 4, 4, generator=g)
        texts[key] = torch.randn(length, dim, generator=g)
        index[key] = {"shard": "latents-00000.safetensors", "bucket": [5, 32, 32], "caption": key}
        items[key] = {"shard": "text-00000.safetensors", "length": length, "caption": key}
    folder.mkdir(parents=True)
    save_file(latents, str(folder / "latents-00000.safetensors"))
    save_file(texts, str(folder / "text-00000.safetensors"))
    save_file({"empty": torch.randn(2, dim, generator=g)}, str(folder / TEXT_EMPTY))
    (folder / LATENT_INDEX).write_text(json.dumps(index))
    (folder / TEXT_INDEX).write_text(json.dumps({"text_len": text_len, "items": items}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill_distributed")
    teacher = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3)
    (root / "teacher").mkdir()
    save_file(teacher.state_dict(), str(root / "teacher" / "diffusion_pytorch_model.safetensors"))
    (root / "teacher" / "config.json").write_text(json.dumps(teacher.cfg.to_dict()))
    _write_cache(root / "cache")
    for name, seed in (("high_noise_model", 4), ("low_noise_model", 5)):  # a two-expert release, boundary 0.5
        expert = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=seed)
        (root / "experts" / name).mkdir(parents=True)
        save_file(expert.state_dict(), str(root / "experts" / name / "diffusion_pytorch_model.safetensors"))
        (root / "experts" / name / "config.json").write_text(json.dumps(expert.cfg.to_dict()))
    (root / "experts" / "configuration.json").write_text(json.dumps({"boundary": 0.5}))
    (root / "distill.yaml").write_text(textwrap.dedent(f"""
        model: {{preset: tiny}}
        data: {{cache_dir: {root / "cache"}}}
        stages:
          - {{name: distill, steps: 4, batch_size: 4, buckets: [[5, 32, 32]]}}
        optim: {{lr: 2.0e-3, grad_clip: 0.05}}
        ema: {{decay: 0.9}}
        text_dropout: 0.5
        distill: {{teacher: {root / "teacher"}, guide_scale: 4.0, teacher_steps: 8, student_steps: 2}}
        checkpoint: {{every: 2, keep_last: 2}}
        log: {{progress: false, tensorboard: false}}
        precision: fp32
        device: cpu
        seed: 5
    """))
    return root


def _argv(root: Path, name: str, *overrides: str) -> list[str]:
    return ["train", "--config", str(root / "distill.yaml"), f"output_dir={root / name}", *overrides]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["parallel.dp=2"], ["parallel.cp_ulysses=2"],
                                       ["parallel.dp=2", "distill.teacher=EXPERTS"]],
                         ids=["dp_fsdp", "ulysses", "dp_fsdp_two_experts"])
def test_two_processes_distill_as_one_does(setup, overrides):
    overrides = [o.replace("EXPERTS", str(setup / "experts")) for o in overrides]
    name = "-".join(o.split("=")[0].split(".")[1] for o in overrides)
    extra = overrides[1:]  # what the one-process reference shares with the run
    one = setup / ("one-" + "-".join(o.split("=")[0].split(".")[1] for o in extra) if extra else "one")
    if not one.exists():
        assert openwan_main(_argv(setup, one.name, *extra)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "openwan",
           *_argv(setup, name, *overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _losses(one), _losses(setup / name)
    assert len(ref) == len(got) == 4
    for a, b in zip(ref, got):
        assert abs(a - b) <= TOL * abs(a), (ref, got)
    if "parallel.dp=2" in overrides:  # FSDP: each process holds half of the teacher (its shard of every tensor)
        held = re.search(r"teacher sharded over 2 processes: (\d+) of its (\d+) parameters held here", proc.stderr)
        assert held, proc.stderr[-3000:]
        assert abs(int(held[1]) - int(held[2]) / 2) <= 0.05 * int(held[2])
