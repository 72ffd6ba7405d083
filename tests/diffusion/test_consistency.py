"""Consistency distillation maths against closed forms: the grids nest, a phase ends at the next student point, the
target of a guided teacher of two point masses is the velocity towards the guided point, the target of a straight
field is its own velocity, and the "lcm" sampler equals the plain Euler loop (exactly what a student equal to its
teacher on the teacher's grid gives)."""

from __future__ import annotations

import pytest
import torch

from openwan.diffusion import Consistency, make_solver, sample, student_sigmas, teacher_sigmas, timesteps_from_sigmas
from openwan.diffusion.consistency import (
    consistency_loss,
    consistency_target,
    grid_timesteps,
    jump,
    phase_end,
    trajectory_target,
)


@pytest.mark.parametrize("n_steps,s_steps,shift", [(16, 4, 3.0), (20, 4, 5.0), (8, 2, 3.0), (12, 1, 1.0)])
def test_the_student_grid_is_every_kth_teacher_point(n_steps, s_steps, shift):
    teacher, student = teacher_sigmas(n_steps, shift), student_sigmas(s_steps, shift)
    k = n_steps // s_steps
    torch.testing.assert_close(teacher[::k], student, rtol=0, atol=1e-12)
    # The student is trained at the teacher grid's timesteps and sampled at its own: the same integers.
    assert torch.equal(timesteps_from_sigmas(teacher[::k]), timesteps_from_sigmas(student))
    ends = phase_end(torch.arange(n_steps), n_steps, s_steps)
    for n, e in enumerate(ends.tolist()):
        assert e % k == 0 and n < e <= n + k and e <= n_steps  # the next student point below σ_n


def test_phase_end_refuses_grids_that_do_not_nest():
    with pytest.raises(ValueError, match="multiple of student_steps"):
        phase_end(torch.arange(3), 10, 4)


def _point_mass(c: torch.Tensor):
    """The exact velocity field of data at one point c: v(x, σ) = (x − c)/σ (straight paths to c)."""
    table = {int(t): float(s) for t, s in zip(grid_timesteps(teacher_sigmas(12, 3.0)), teacher_sigmas(12, 3.0))}

    def model(x, t, context):
        sigma = torch.tensor([table[int(v)] for v in t]).view(-1, 1, 1)
        return (x - c) / sigma

    return model


def test_guided_target_of_two_point_masses_points_at_the_guided_point():
    """Conditional data at c1, unconditional at c0: the guided field is the point mass at c0 + g·(c1 − c0), whose
    paths are straight, so the target at every pair is the velocity towards that point (from the boundary pairs,
    which the teacher's step gives, and from the inner ones, which the target model gives)."""
    g = torch.Generator().manual_seed(0)
    c1, c0 = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    cond, uncond = _point_mass(c1), _point_mass(c0)
    scale = 3.0
    guided_point = c0 + scale * (c1 - c0)

    def teacher(x, t, context):  # context tells the branch apart: 1 = the prompt, 0 = the negative
        return torch.where(context.view(-1, 1, 1) > 0, cond(x, t, context), uncond(x, t, context))

    sigmas = teacher_sigmas(12, 3.0)
    exact = _point_mass(guided_point)
    for n in range(12):
        idx = torch.tensor([n, n])
        end = phase_end(idx, 12, 3)
        s = sigmas[idx].float().view(-1, 1, 1)
        x = (1 - s) * guided_point + s * torch.randn(2, 4, 8, generator=g)
        v = consistency_target(teacher, exact, x, torch.ones(2), torch.zeros(2), sigmas, idx, end, scale)
        torch.testing.assert_close(v, (x - guided_point) / s, rtol=1e-5, atol=1e-5)
    # Without guidance folded in (scale 1) the target points at c1 instead: the scale is what moves it.
    idx = torch.tensor([11, 11])
    v1 = consistency_target(teacher, exact, x, torch.ones(2), torch.zeros(2), sigmas, idx, phase_end(idx, 12, 3), 1.0)
    torch.testing.assert_close(v1, (x - c1) / sigmas[11].float(), rtol=1e-5, atol=1e-5)


def test_inner_targets_jump_with_the_target_model_to_the_phase_end():
    """Against the formula written out: x̂ = x_n + (σ_{n+1} − σ_n)·v_g, f = x̂ + (σ_e − σ_{n+1})·v_target(x̂),
    v* = (f − x_n)/(σ_e − σ_n); on a curved toy field whose teacher and target differ."""
    sigmas = teacher_sigmas(8, 3.0)
    t_of = grid_timesteps(sigmas)

    def teacher(x, t, context):
        return torch.tanh(x) * (t.view(-1, 1) / 1000) + context

    def target(x, t, context):
        return 0.5 * x.square() - (t.view(-1, 1) / 1000)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, generator=g)
    cond, neg = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    n = torch.tensor([0, 2, 3])  # phases of 4 steps: inner, inner, boundary (n + 1 = 4 is the end)
    end = phase_end(n, 8, 2)
    got = consistency_target(teacher, target, x, cond, neg, sigmas, n, end, 2.0)
    for i in range(3):
        sn, sm, se = (float(sigmas[j]) for j in (n[i], n[i] + 1, end[i]))
        tn = t_of[n[i]].view(1)
        vg = teacher(x[i:i + 1], tn, neg[i:i + 1]) + 2.0 * (teacher(x[i:i + 1], tn, cond[i:i + 1])
                                                           - teacher(x[i:i + 1], tn, neg[i:i + 1]))
        xm = x[i:i + 1] + (sm - sn) * vg
        f = xm if n[i] + 1 == end[i] else xm + (se - sm) * target(xm, t_of[n[i] + 1].view(1), cond[i:i + 1])
        torch.testing.assert_close(got[i:i + 1], (f - x[i:i + 1]) / (se - sn), rtol=1e-5, atol=1e-6)


def test_trajectory_targets_walk_the_guided_teacher_over_the_whole_phase():
    """Against the loop written out: from a student point the guided teacher takes Euler steps on the window, each
    frame until its own phase end, and the target is the velocity that jumps x_n there; a frame at the grid's end
    (an anchor) stays and gets target 0. With one teacher step per phase it equals the consistency target."""
    sigmas = teacher_sigmas(8, 3.0)
    t_of = grid_timesteps(sigmas)

    def teacher(x, t, context):  # x [B, C, F, 1, 1], per-frame timesteps [B, F]
        return torch.tanh(x) * (t[:, None, :, None, None] / 1000) + context

    g = torch.Generator().manual_seed(5)
    x, cond, neg = (torch.randn(2, 3, 3, 1, 1, generator=g) for _ in range(3))
    n = torch.tensor([[8, 4, 0], [8, 6, 2]])  # an anchor, then two staircases of 2-step phases
    end = torch.tensor([[8, 6, 2], [8, 8, 4]])
    got = trajectory_target(teacher, x, cond, neg, sigmas, n, end, 2.0)
    for b in range(2):
        z, at = x[b:b + 1].clone(), n[b].tolist()
        for _ in range(2):
            tt = torch.tensor([[float(t_of[i]) for i in at]])
            vg = teacher(z, tt, neg[b:b + 1]) + 2.0 * (teacher(z, tt, cond[b:b + 1]) - teacher(z, tt, neg[b:b + 1]))
            nxt = [min(i + 1, e) for i, e in zip(at, end[b].tolist())]
            dt = torch.tensor([float(sigmas[j] - sigmas[i]) for i, j in zip(at, nxt)])
            z, at = z + dt.view(1, 1, 3, 1, 1) * vg, nxt
        for f in range(3):
            span = float(sigmas[end[b, f]] - sigmas[n[b, f]])
            want = (z[0, :, f] - x[b, :, f]) / span if span else torch.zeros(3, 1, 1)
            torch.testing.assert_close(got[b, :, f], want, rtol=1e-5, atol=1e-6)

    def flat(x, t, context):  # per-sample timesteps [B]
        return torch.tanh(x) * (t.view(-1, 1, 1, 1, 1) / 1000) + context

    m = torch.tensor([3, 6])
    torch.testing.assert_close(trajectory_target(flat, x, cond, neg, sigmas, m, m + 1, 2.0),
                               consistency_target(flat, flat, x, cond, neg, sigmas, m, m + 1, 2.0))


def test_trajectory_target_of_two_point_masses_points_at_the_guided_point():
    """The guided field of two point masses has straight paths, so from every student point the whole phase's
    teacher walk ends on the line to the guided point: the target is the velocity towards it."""
    g = torch.Generator().manual_seed(6)
    c1, c0 = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    cond, uncond = _point_mass(c1), _point_mass(c0)

    def teacher(x, t, context):
        return torch.where(context.view(-1, 1, 1) > 0, cond(x, t, context), uncond(x, t, context))

    guided_point = c0 + 3.0 * (c1 - c0)
    sigmas = teacher_sigmas(12, 3.0)
    for start in (0, 4, 8):
        idx = torch.tensor([start, start])
        s = sigmas[idx].float().view(-1, 1, 1)
        x = (1 - s) * guided_point + s * torch.randn(2, 4, 8, generator=g)
        v = trajectory_target(teacher, x, torch.ones(2), torch.zeros(2), sigmas, idx, phase_end(idx, 12, 3), 3.0)
        torch.testing.assert_close(v, (x - guided_point) / s, rtol=1e-5, atol=1e-5)


def test_losses():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 3, 2, 2, 2, generator=g), torch.randn(4, 3, 2, 2, 2, generator=g)
    torch.testing.assert_close(consistency_loss(a, b, "l2"), ((a - b) ** 2).mean())
    c = 0.03
    small = consistency_loss(b + 1e-3, b, "pseudo_huber", c)  # quadratic near 0: e²/(2c)
    torch.testing.assert_close(small, torch.tensor(1e-6 / (2 * c)), rtol=1e-2, atol=0)
    large = consistency_loss(b + 10.0, b, "pseudo_huber", c)  # linear far away: |e| − c
    torch.testing.assert_close(large, torch.tensor(10.0 - c), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="l2 or pseudo_huber"):
        consistency_loss(a, b, "l1")


def _toy_student(x, t):
    return torch.sin(x * 1.3) + t.float() / 1000 * x


def test_lcm_sampler_equals_the_plain_euler_loop():
    """A student equal to its teacher, sampled on the teacher's own grid by the deterministic "lcm" solver, gives
    the teacher's plain Euler loop (x0 re-noised with the step's own noise is an Euler step, up to rounding)."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = teacher_sigmas(16, 3.0)
    plain = x.clone()
    for i, t in enumerate(timesteps_from_sigmas(grid)[:-1]):
        plain = jump(plain, _toy_student(plain, t), grid[i].view(1), grid[i + 1].view(1))
    torch.testing.assert_close(sample(_toy_student, x.clone(), grid, "lcm"), plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(sample(_toy_student, x.clone(), grid, "euler"), plain, rtol=0, atol=1e-12)


def test_lcm_sampler_with_fresh_noise():
    grid = student_sigmas(4, 3.0)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))

    def run(gamma, seed):
        return sample(_toy_student, x.clone(), grid, Consistency(grid, gamma, torch.Generator().manual_seed(seed)))

    assert torch.equal(run(1.0, 5), run(1.0, 5))  # reproducible from its generator
    assert not torch.allclose(run(1.0, 5), run(1.0, 6))
    assert not torch.allclose(run(0.5, 5), run(0.0, 5))
    c = torch.randn(2, 8, generator=torch.Generator().manual_seed(7))  # a constant x0 prediction: any γ lands on it
    table = {int(t): float(s) for t, s in zip(timesteps_from_sigmas(grid), grid)}

    def point(x, t):
        return (x - c) / table[int(t)]

    solver = Consistency(grid, 1.0, torch.Generator().manual_seed(8))
    torch.testing.assert_close(sample(point, x.clone(), grid, solver), c, rtol=0, atol=1e-5)
    assert isinstance(make_solver("lcm", grid), Consistency)
    with pytest.raises(ValueError, match="gamma"):
        Consistency(grid, 1.5)


def test_the_pipeline_and_the_cli_take_the_lcm_solver():
    """``solver="lcm"`` runs a student on the student grid (``sampling_sigmas(S, shift, "lcm")`` is
    ``student_sigmas``) and, deterministic, lands where the Euler loop does; every command's --sample-solver takes
    it."""
    from openwan.cli.main import build_parser
    from openwan.diffusion import sampling_sigmas
    from openwan.pipelines import WanPipeline
    from tiny import tiny_components

    torch.testing.assert_close(sampling_sigmas(4, 3.0, "lcm"), student_sigmas(4, 3.0), rtol=0, atol=1e-12)
    pipe = WanPipeline(**tiny_components())
    common = {"size": (32, 32), "frame_num": 5, "sample_steps": 4, "sample_shift": 3.0, "guide_scale": 1.0,
              "seed": 1, "progress": False, "return_video": False}
    lcm, euler = pipe("a cat", solver="lcm", **common), pipe("a cat", solver="euler", **common)
    torch.testing.assert_close(lcm.latents, euler.latents, rtol=0, atol=1e-5)
    parser = build_parser()
    for argv in (["generate", "--prompt", "x"], ["eval", "prompts", "--ckpt-dir", "x", "--out", "y"],
                 ["eval", "bench", "x", "--out", "y"]):
        assert parser.parse_args([*argv, "--sample-solver", "lcm"]).sample_solver == "lcm"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--sample-solver", "nope"])
