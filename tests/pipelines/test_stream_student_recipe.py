"""The streaming student recipe: its distillation config is a valid training config with the objective asked for;
its decoder step shows windows of the wrapping clips beside ordinary clips, and fine-tunes a decoder on them with the
release's encoder left as it was."""

from __future__ import annotations

import shutil

import pytest
import torch
from stream_student import (
    DECODER_FRAMES,
    DECODER_STARTS,
    STUDENT_CONFIG,
    VAE_FILE,
    decoder_manifest,
    main,
    wrap_decoder,
)

from openwan.data.buckets import Bucket
from openwan.data.dataset import load_clip
from openwan.data.manifest import read_manifest
from openwan.models.vae import WanVAE
from openwan.pipelines.components import BUNDLED
from openwan.train import load_config


@pytest.mark.parametrize("objective", ["consistency", "trajectory"])
def test_the_student_config_distils_on_the_anchored_staircase_with_the_objective_asked_for(tmp_path, objective):
    text = STUDENT_CONFIG.format(cache=tmp_path / "cache", teacher=tmp_path / "teacher", guide=1.5, teacher_steps=20,
                                 student_steps=4, shift=3.0, steps=500, batch=16, lr=5e-5, objective=objective,
                                 anchor=1.0, compile="false", out=tmp_path / "run")
    (tmp_path / "student.yaml").write_text(text)
    cfg = load_config(tmp_path / "student.yaml")
    d = cfg.distill
    assert (d.objective, d.staircase, d.teacher_steps, d.student_steps, d.guide_scale) == (objective, True, 20, 4, 1.5)
    assert cfg.timesteps.anchor == 1.0 and cfg.stages[0].steps == 500


@pytest.mark.parametrize("flag,value", [("--jumps-per-shift", "0"), ("--anchor", "1.5"), ("--release", "nothing")])
def test_the_recipe_refuses_bad_settings_before_making_anything(tmp_path, flag, value):
    if flag == "--release":
        value = str(tmp_path / value)
    with pytest.raises(ValueError, match=flag):
        main([str(tmp_path / "work"), flag, value])
    assert not (tmp_path / "work").exists()


def test_the_decoder_sees_wrapping_clips_at_three_offsets_beside_ordinary_ones(tmp_path):
    records = read_manifest(decoder_manifest(tmp_path, clips=2, captions="templates"))
    wrapping = [r for r in records if r.frames == 49]
    assert len(wrapping) == 2 * len(DECODER_STARTS) and len(records) == len(wrapping) + 4
    assert len({r.id for r in records}) == len(records)
    last = next(r for r in wrapping if r.start == DECODER_STARTS[-1])
    whole = load_clip(next(r for r in wrapping if r.path == last.path and not r.start), Bucket(49, 64, 64))
    window = load_clip(last, Bucket(DECODER_FRAMES, 64, 64))  # the last window ends on the clip's last frame
    assert torch.equal(window, whole[:, -DECODER_FRAMES:])
    assert decoder_manifest(tmp_path, clips=5, captions="templates").stat().st_size > 0  # made once, then kept
    assert len(read_manifest(tmp_path / "decoder-data" / "manifest.jsonl")) == len(records)


def test_the_decoder_step_leaves_the_encoder_and_trains_the_decoder(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    for name in (VAE_FILE, VAE_FILE.replace(".pth", ".json")):
        shutil.copy2(BUNDLED / name, release / name)
    out = wrap_decoder(tmp_path / "work", release, steps=2, clips=2, captions="templates")
    before = WanVAE.from_pretrained(release / VAE_FILE, dtype=torch.float32).state_dict()
    after = WanVAE.from_pretrained(out, dtype=torch.float32).state_dict()
    assert before.keys() == after.keys()
    encoder = [k for k in before if not k.startswith(("decoder.", "conv2."))]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
