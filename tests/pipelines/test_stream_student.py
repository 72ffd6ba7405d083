"""A release's streaming student (stream_model/): written and found, picked by ``openwan stream`` by default with the
settings it was trained for, flags over those settings, and refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from openwan.cli.main import main
from openwan.models import WanDiT
from openwan.pipelines.components import BUNDLED
from openwan.pipelines.stream import StreamConfig
from openwan.pipelines.stream_student import (
    STUDENT_DIR,
    has_student,
    load_stream_pipe,
    merged,
    save_student,
    student_settings,
)

SETTINGS = StreamConfig(window=3, steps_per_shift=1, sample_shift=2.0, guide_scale=1.0)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A copy of the bundled release whose streaming student is its low-noise expert."""
    root = tmp_path_factory.mktemp("release") / "demo"
    shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(STUDENT_DIR))
    save_student(root, WanDiT.from_pretrained(root / "low_noise_model", dtype=torch.float32), SETTINGS,
                 dtype=torch.bfloat16)
    return root


def test_a_saved_student_is_found_with_its_settings(release):
    assert has_student(release)
    assert student_settings(release) == {"window": 3, "block": 1, "anchor": False, "steps_per_shift": 1,
                                         "sample_shift": 2.0, "guide_scale": 1.0}
    pipe, config = load_stream_pipe(release, device="cpu")
    assert pipe.dit_low is None and config == SETTINGS
    low = WanDiT.from_pretrained(release / "low_noise_model", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(pipe.dit.state_dict().values(), low.state_dict().values()))
    own, config = load_stream_pipe(release, device="cpu", student=False)
    assert own.dit_low is not None and config == StreamConfig()
    # the release's size, fps and negative prompt; one DiT: no boundary, one guidance scale
    assert (pipe.defaults.size, pipe.defaults.fps) == (own.defaults.size, own.defaults.fps)
    assert pipe.defaults.boundary is None and not isinstance(pipe.defaults.guide_scale, tuple)


def test_flags_override_the_students_settings_and_drop_a_grid_they_change():
    base = StreamConfig(window=3, steps_per_shift=1, sigmas=(1.0, 0.6, 0.3, 0.0), guide_scale=1.0)
    assert merged(base, seed=4, window=None).sigmas == base.sigmas
    assert merged(base, seed=4).seed == 4
    moved = merged(base, window=4)
    assert moved.window == 4 and moved.sigmas is None


def test_stream_cli_uses_the_student_unless_told_not_to(release, tmp_path, capsys, one_thread):
    base = ["stream", "--ckpt-dir", str(release), "--prompt", "a red circle moving to the right", "--duration", "9f"]
    assert main([*base, "--save-file", str(tmp_path / "a.mp4")]) == 0
    assert "streaming with the release's student" in capsys.readouterr().err
    assert main([*base, "--no-student", "--window", "2", "--steps-per-shift", "1",
                 "--save-file", str(tmp_path / "b.mp4")]) == 0
    assert "student" not in capsys.readouterr().err


def test_a_release_without_a_student_or_with_a_bad_one_is_refused(release, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(BUNDLED, bare, ignore=shutil.ignore_patterns(STUDENT_DIR))
    code = main(["stream", "--ckpt-dir", str(bare), "--student", "--prompt", "a red box moving up",
                 "--duration", "9f", "--save-file", str(tmp_path / "c.mp4")])
    assert code == 2 and "ships no streaming student" in capsys.readouterr().err
    assert not (tmp_path / "c.mp4").exists()
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    (bad / STUDENT_DIR / "stream.json").write_text(json.dumps({"window": 3, "speed": 2}))
    with pytest.raises(ValueError, match="unknown fields"):
        student_settings(bad)


def test_an_anchored_students_settings_say_so(release, tmp_path):
    """A student distilled on anchored windows is saved with anchor on, and streams anchored by default."""
    anchored = tmp_path / "anchored"
    shutil.copytree(release, anchored)
    student = WanDiT.from_pretrained(release / STUDENT_DIR, dtype=torch.float32)
    save_student(anchored, student, dataclasses.replace(SETTINGS, anchor=True))
    assert student_settings(anchored)["anchor"] is True
    _, config = load_stream_pipe(anchored, device="cpu")
    assert config.anchor and config.groups == 2

