"""Training for an anchored stream: windows that follow their clip's first latent frame, that frame given clean and
left out of the loss, the staircase over the frames after it, and consistency distillation on such windows."""

from __future__ import annotations

import pytest
import torch
from test_distill import _batches, _cfg, _save_dit

from openwan.configs import DIT_PRESETS
from openwan.data.cache import cut_windows
from openwan.diffusion.consistency import consistency_loss, consistency_target, teacher_sigmas
from openwan.diffusion.objective import draw_sample_sigmas, flow_matching_loss, token_timesteps
from openwan.diffusion.staircase import staircase_grid, staircase_indices
from openwan.models import WanDiT
from openwan.train import ListBatches, Trainer, load_config, read_metrics
from tiny import randomize


def _numbered(batch: int, frames: int) -> torch.Tensor:
    """Latents [B, 2, F, 1, 1] whose every value is its frame's number (sample b's frames hold 100·b + f)."""
    f = torch.arange(frames, dtype=torch.float32)
    return (f[None, :] + 100 * torch.arange(batch)[:, None]).view(batch, 1, frames, 1, 1).expand(-1, 2, -1, -1, -1)


def test_an_anchored_window_is_the_clips_first_frame_then_a_run_of_later_ones():
    latents = _numbered(2, 13)
    starts = set()
    for seed in range(60):
        gens = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)]
        out = cut_windows(latents, 5, gens, anchored=[True, False])
        frames = out[:, 0, :, 0, 0]
        anchored, plain = frames[0].tolist(), (frames[1] - 100).tolist()
        assert anchored[0] == 0 and anchored[1] >= 1
        assert anchored[1:] == list(range(int(anchored[1]), int(anchored[1]) + 4))
        assert plain == list(range(int(plain[0]), int(plain[0]) + 5))
        assert anchored[1] == plain[0] + 1  # one draw per sample either way: the run starts one frame later
        starts.add(int(anchored[1]))
    assert starts == set(range(1, 10))  # every offset past the anchor, up to the clip's end
    assert torch.equal(cut_windows(latents, 13, [None, None], anchored=[True, True]), latents)  # the whole clip


def test_an_anchored_sample_is_clean_first_then_the_staircase_of_one_frame_fewer():
    rows = {tuple(draw_sample_sigmas(torch.Generator().manual_seed(i), frames=5, patch_frames=1, mode="uniform",
                                     shift=1.0, staircase=(1.0, 2, 3.0), anchor=True).tolist()) for i in range(40)}
    grid = staircase_grid(4, 2, 3.0).float()
    assert rows == {(0.0, *grid[staircase_indices(4, 2, k)].tolist()) for k in range(2)}
    plain = draw_sample_sigmas(torch.Generator(), frames=3, patch_frames=1, mode="uniform", shift=1.0, anchor=True)
    assert plain.shape == (3,) and plain[0] == 0 and plain[1] == plain[2] > 0  # the rest share one level
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        draw_sample_sigmas(torch.Generator(), frames=1, patch_frames=1, mode="uniform", shift=1.0, anchor=True)


def _trainer(tmp_path, *overrides: str, batches=None) -> Trainer:
    cfg = load_config(None, ["model.preset=tiny", f"output_dir={tmp_path}", "log.progress=false", "text_dropout=0",
                             "checkpoint.every=0", "stages.0.steps=2", "stages.0.batch_size=4",
                             "stages.0.buckets=[[9,16,16]]", *overrides])
    return Trainer(cfg, data=ListBatches(batches or _batches(4, frames=3)))


def test_an_anchored_run_draws_the_same_samples_for_the_cut_and_the_levels_and_trains(tmp_path):
    batches = _batches(4, frames=3)
    trainer = _trainer(tmp_path, "timesteps.anchor=0.5", "timesteps.staircase=1", "timesteps.staircase_steps=2",
                       batches=batches)
    anchored = trainer.anchored(4)
    assert torch.equal(anchored, trainer.anchored(4))  # a pure function of (seed, step, sample)
    draws = [trainer.anchored(4) for trainer.step in range(8)]
    trainer.step = 0
    assert 0 < int(torch.stack(draws).sum()) < 32  # about half the samples, varying from step to step
    sigmas, _, _ = trainer.draw_noise(batches[0]["latents"])
    grid2 = staircase_grid(2, 2, 3.0).float()
    for row, anchor in zip(sigmas, anchored.tolist()):
        if anchor:
            assert row[0] == 0 and row[1:].tolist() in [grid2[staircase_indices(2, 2, k)].tolist() for k in range(2)]
        else:
            assert bool((row > 0).all())
    trainer.fit()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_the_anchor_is_no_target_of_the_loss():
    """The flow-matching loss of an anchored batch is the mean squared error over the frames after the anchor
    alone."""
    dit = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=2)
    x0, noise = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4)
    context = torch.randn(2, 6, 32)
    sigmas = torch.tensor([[0.0, 0.4, 0.8], [0.0, 0.3, 0.6]])
    base = flow_matching_loss(dit, x0, context, sigmas, noise)
    x_t = (1 - sigmas[:, None, :, None, None]) * x0 + sigmas[:, None, :, None, None] * noise
    t = token_timesteps(sigmas * 1000, x0.shape, dit.cfg.patch_size)
    error = (dit(x_t, t, context) - (noise - x0)).square()
    assert torch.allclose(base, error[:, :, 1:].mean(), rtol=1e-5)


def test_consistency_targets_leave_an_anchor_where_it_is_and_the_loss_skips_it():
    sigmas = teacher_sigmas(8, 3.0)
    model = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=4)

    def per_frame(net):
        return lambda x, t, c: net(x, token_timesteps(t, x.shape, net.cfg.patch_size) if t.ndim == 2 else t, c)

    n = torch.tensor([[8, 5, 1], [8, 6, 2]])  # the anchor at the grid's end, then the staircase
    end = torch.tensor([[8, 8, 4], [8, 8, 4]])
    x = torch.randn(2, 16, 3, 4, 4)
    context = torch.randn(2, 6, 32)
    target = consistency_target(per_frame(model), per_frame(model), x, context, context, sigmas, n, end, 2.0)
    assert torch.isfinite(target).all()
    assert torch.equal(target[:, :, 0], torch.zeros_like(target[:, :, 0]))
    pred = torch.randn_like(target)
    masked = consistency_loss(pred, target, mask=n < 8)
    assert torch.allclose(masked, (pred - target)[:, :, 1:].square().mean())
    pred[:, :, 0] += 10.0  # the anchor's output counts for nothing
    assert torch.equal(consistency_loss(pred, target, mask=n < 8), masked)
    huber = consistency_loss(pred, target, "pseudo_huber", mask=n < 8)
    expected = (((pred - target)[:, :, 1:].square().flatten(1).mean(1) + 0.03**2).sqrt() - 0.03).mean()
    assert torch.allclose(huber, expected)


def test_anchored_staircase_distillation_brings_the_student_to_its_teacher(tmp_path):
    """Windows of 3 latent frames, each after an anchor: the teacher's 8-step grid walked over the 2 frames after it
    (4 sub-steps per shift), the student's 2 steps (1 per shift); the distillation lowers the student's loss."""
    teacher_dir = _save_dit(randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3), tmp_path / "teacher")
    batches = _batches(4, frames=3)
    cfg = _cfg(tmp_path / "run", teacher_dir, "stages.0.steps=30", "stages.0.batch_size=4", "optim.lr=3e-3",
               "ema.decay=0.9", "distill.staircase=true", "distill.teacher_steps=8", "distill.student_steps=2",
               "timesteps.anchor=1", "stages.0.buckets=[[9,16,16]]")
    trainer = Trainer(cfg, data=ListBatches(batches))
    n, _ = trainer.distill._draw(trainer, batches[0]["latents"])
    assert n.shape == (4, 3) and bool((n[:, 0] == 8).all())
    assert all(row[1:].tolist() in [staircase_indices(2, 4, k).tolist() for k in range(4)] for row in n)
    trainer.fit()
    losses = [m["loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_anchor_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="timesteps.anchor"):
        _trainer(tmp_path, "timesteps.anchor=1.5")
    with pytest.raises(ValueError, match="stages.0.buckets"):
        _trainer(tmp_path, "timesteps.anchor=0.5", "stages.0.buckets=[[1,16,16]]")
    teacher_dir = _save_dit(randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3), tmp_path / "teacher")
    # 13 frames = 4 latent frames; at anchor 0.5 windows of 4 (no anchor) and of 3 (after one) both occur, and 4
    # does not divide a 6-step student grid
    with pytest.raises(ValueError, match="distill.student_steps"):
        _cfg(tmp_path / "run", teacher_dir, "distill.staircase=true", "distill.teacher_steps=12",
             "distill.student_steps=6", "stages.0.buckets=[[13,64,64]]", "timesteps.anchor=0.5")
    _cfg(tmp_path / "run", teacher_dir, "distill.staircase=true", "distill.teacher_steps=12",
         "distill.student_steps=6", "stages.0.buckets=[[13,64,64]]", "timesteps.anchor=1")  # 3 after the anchor
