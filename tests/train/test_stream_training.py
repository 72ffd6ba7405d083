"""Training for the streaming sampler: the staircase levels the trainer draws are the ones the stream shows its
model, a run trains on them, and staircase distillation brings a one-step-per-shift student to its guided teacher's
many-step staircase trajectory."""

from __future__ import annotations

import pytest
import torch
from test_distill import _batches, _cfg, _save_dit

from openwan.configs import DIT_PRESETS
from openwan.diffusion import timesteps_from_sigmas
from openwan.diffusion.consistency import guided_velocity, jump
from openwan.diffusion.objective import token_timesteps
from openwan.diffusion.staircase import draw_staircase, staircase_grid, staircase_indices
from openwan.models import WanDiT
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream
from openwan.train import ListBatches, Trainer, load_config, read_metrics
from tiny import randomize

SHIFT, SCALE = 3.0, 5.0


def test_staircase_indices_put_the_oldest_frame_lowest():
    assert staircase_indices(3, 2, 0).tolist() == [4, 2, 0]
    assert staircase_indices(3, 2, 1).tolist() == [5, 3, 1]
    assert staircase_indices(3, 2, torch.tensor([0, 1])).tolist() == [[4, 2, 0], [5, 3, 1]]
    with pytest.raises(ValueError, match="substep"):
        staircase_indices(3, 2, 2)


def test_the_trainer_draws_the_levels_the_stream_shows_its_model():
    """Every DiT call of a running stream (window 3, 2 sub-steps) sees per-frame timesteps that the staircase
    draw produces for a 3-latent-frame clip; and the draw covers each sub-step."""
    pipe = WanPipeline.from_pretrained(BUNDLED, device="cpu")
    config = StreamConfig(window=3, steps_per_shift=2, sample_shift=SHIFT, guide_scale=1.0)
    s = VideoStream(pipe, PromptSchedule.of("a red circle moving to the right"), config)
    seen = []
    velocity = s.velocity

    def recording(x, levels, joined=None, **options):
        seen.append(list(levels))
        return velocity(x, levels, joined, **options)

    s.velocity = recording
    for _ in range(5):
        s.step()
    full = [levels for levels in seen if len(levels) == 3]  # once the queue holds a whole window
    assert len(full) >= 4
    grid = staircase_grid(3, 2, SHIFT)
    assert torch.equal(grid, s.sigmas)
    drawn = {tuple(draw_staircase(torch.Generator().manual_seed(i), 3, 1, 2, SHIFT).tolist()) for i in range(40)}
    stream_levels = {tuple(grid[torch.tensor(levels)].float().tolist()) for levels in full}
    assert stream_levels == drawn
    assert {tuple(timesteps_from_sigmas(grid)[torch.tensor(levels)].tolist()) for levels in full} == {
        tuple(timesteps_from_sigmas(grid)[staircase_indices(3, 2, k)].tolist()) for k in range(2)}


def test_a_staircase_run_trains_on_per_frame_levels(tmp_path):
    batches = _batches(4, frames=3)
    cfg = load_config(None, ["model.preset=tiny", f"output_dir={tmp_path}", "log.progress=false", "text_dropout=0",
                             "checkpoint.every=0", "stages.0.steps=2", "stages.0.batch_size=4",
                             "timesteps.staircase=1", "timesteps.staircase_steps=2", "timesteps.staircase_shift=3"])
    trainer = Trainer(cfg, data=ListBatches(batches))
    sigmas, _, _ = trainer.draw_noise(batches[0]["latents"])
    grid = staircase_grid(3, 2, 3.0).float()
    assert sigmas.shape == (4, 3)
    assert all(row.tolist() in (grid[staircase_indices(3, 2, k)].tolist() for k in range(2)) for row in sigmas)
    assert all(bool((row[:-1] < row[1:]).all()) for row in sigmas)  # the oldest frame is the cleanest
    trainer.fit()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2


@torch.no_grad()
def _staircase_error(student, teacher, batches, teacher_steps: int, student_steps: int) -> float:
    """Relative error of the student's one jump per queue shift against the guided teacher's fine Euler steps over
    the same shift, from staircase windows at the student's grid points (each frame its own level), over every
    batch."""
    g = torch.Generator().manual_seed(9)
    grid = staircase_grid(1, teacher_steps, SHIFT)  # the teacher's grid (groups * per-shift steps = N)
    t = timesteps_from_sigmas(grid).float()
    total = 0.0
    for batch in batches:
        x0 = batch["latents"]
        b, _, f, _, _ = x0.shape
        per_shift, ratio = teacher_steps // f, teacher_steps // student_steps
        n = staircase_indices(f, per_shift, 0).expand(b, f)
        s = grid[n].float()[:, None, :, None, None]
        x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=g)
        c, neg = batch["context"], batch["context_empty"][None].expand(b, -1, -1)

        def at(net, idx):  # the model at the window's per-frame levels idx [B, F]
            return lambda z, _t, cc: net(z, token_timesteps(t[idx], z.shape, net.cfg.patch_size), cc)

        ref = x
        for i in range(ratio):  # the teacher's guided Euler steps to the end of the phase
            ref = jump(ref, guided_velocity(at(teacher, n + i), ref, None, c, neg, SCALE), grid[n + i], grid[n + i + 1])
        out = jump(x, at(student, n)(x, None, c), grid[n], grid[n + ratio])
        total += ((out - ref) ** 2).mean().item() / ((ref - x) ** 2).mean().item()
    return total / len(batches)


def test_staircase_distillation_brings_the_student_to_its_guided_teacher(tmp_path):
    teacher_dir = _save_dit(randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3), tmp_path / "teacher")
    teacher = WanDiT.from_pretrained(teacher_dir, dtype=torch.float32)
    batches = _batches(4, frames=2)
    cfg = _cfg(tmp_path / "run", teacher_dir, "stages.0.steps=40", "stages.0.batch_size=4", "optim.lr=3e-3",
               "ema.decay=0.9", "distill.staircase=true", "distill.teacher_steps=8", "distill.student_steps=2")
    trainer = Trainer(cfg, data=ListBatches(batches))
    before = _staircase_error(trainer.dit.eval(), teacher, batches, 8, 2)
    trainer.fit()
    after = _staircase_error(trainer.dit.eval(), teacher, batches, 8, 2)
    print(f"one jump per shift vs the guided teacher's 4 steps: {before:.4f} -> {after:.4f}")
    assert after < 0.6 * before


def test_staircase_distillation_refuses_a_window_that_does_not_divide_the_grids(tmp_path):
    teacher_dir = _save_dit(randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3), tmp_path / "teacher")
    with pytest.raises(ValueError, match="distill.student_steps"):  # 17 frames: a window of 5 latent frames
        _cfg(tmp_path / "run", teacher_dir, "distill.staircase=true", "distill.teacher_steps=8",
             "distill.student_steps=2", "stages.0.buckets=[[17,64,64]]")
    with pytest.raises(ValueError, match="distill.expert"):
        _cfg(tmp_path / "run", teacher_dir, "distill.staircase=true", "distill.expert=high")
