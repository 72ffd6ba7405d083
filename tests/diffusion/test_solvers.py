"""Solvers step for step against diffusers' schedulers, exactness and accuracy checks, the loop, guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from openwan.diffusion import (
    SOLVER_NAMES,
    cfg_combine,
    guide_scale_for,
    make_solver,
    sample,
    sampling_sigmas,
    select_expert,
    timesteps_from_sigmas,
)

STEPS = (5, 10, 50)
SHIFTS = (1.0, 3.0, 5.0, 12.0)
TOL = 1e-5  # max|ours - theirs| / max|theirs|, at every step
FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the DiT: a linear part plus a smooth nonlinear function of x and t."""
    tau = float(t) / 1000
    return 0.6 * x - 0.3 + 0.4 * tau - 0.5 * (1 + tau) * torch.sin(3 * x + 2 * tau)


def _noise() -> torch.Tensor:
    return torch.randn(2, 4, 3, 6, 5, generator=torch.Generator().manual_seed(0))  # [B, C, F, H, W]


def _run_both(kind: str, sigmas: torch.Tensor, theirs, timesteps: torch.Tensor) -> float:
    """Run our solver and a diffusers scheduler side by side from the same noise; worst relative step gap.

    Both see the same σ grid (float32, as the reference uses it), and the model gets our integer timesteps.
    """
    ours = make_solver(kind, sigmas.float())
    theirs.set_begin_index(0)  # step i is index i, even if two integer timesteps coincide
    x_ours = x_theirs = _noise()
    worst = 0.0
    for i in range(ours.num_steps):
        t = timesteps[i]
        x_ours = ours.step(toy_model(x_ours, t), x_ours, i)
        x_theirs = theirs.step(toy_model(x_theirs, t), theirs.timesteps[i], x_theirs).prev_sample
        assert torch.isfinite(x_ours).all()
        worst = max(worst, float((x_ours - x_theirs).abs().max() / x_theirs.abs().max()))
    return worst


def _with_grid(scheduler, sigmas: torch.Tensor):
    """Give a diffusers scheduler exactly our grid (for schedulers whose set_timesteps takes no `sigmas=`)."""
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = sigmas.float()
    scheduler.timesteps = timesteps_from_sigmas(sigmas)[:-1]
    return scheduler


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("num_steps", STEPS)
def test_unipc_matches_diffusers(num_steps, shift):
    sigmas = sampling_sigmas(num_steps, shift, "unipc")
    theirs = UniPCMultistepScheduler(
        **FLOW, flow_shift=shift, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True
    )
    # diffusers' public API: it shifts the given base grid by flow_shift and appends σ = 0 itself.
    base = np.linspace(float(np.float32(0.999)), 0.0, num_steps + 1)[:-1]  # the reference's base grid
    theirs.set_timesteps(sigmas=base)
    torch.testing.assert_close(theirs.sigmas, sigmas.float(), rtol=0, atol=1e-7)
    timesteps = timesteps_from_sigmas(sigmas)
    assert torch.equal(theirs.timesteps, timesteps[:-1])
    worst = _run_both("unipc", sigmas, theirs, timesteps)
    print(f"unipc N={num_steps} shift={shift}: max rel diff {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("num_steps,shift", [(5, 1.0), (10, 5.0), (50, 12.0)])
def test_unipc_matches_diffusers_on_a_grid_starting_at_pure_noise(num_steps, shift):
    """σ_0 = 1 (α = 0, λ = -inf): the limits must come out as in diffusers, with no inf/nan."""
    sigmas = sampling_sigmas(num_steps, shift, "dpm++")
    theirs = _with_grid(UniPCMultistepScheduler(**FLOW, solver_order=2, solver_type="bh2"), sigmas)
    worst = _run_both("unipc", sigmas, theirs, timesteps_from_sigmas(sigmas))
    print(f"unipc (σ0=1) N={num_steps} shift={shift}: max rel diff {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("kind", ["dpm++", "unipc"])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("num_steps", STEPS)
def test_dpm_plus_plus_matches_diffusers(num_steps, shift, kind):
    sigmas = sampling_sigmas(num_steps, shift, kind)  # the reference DPM++ grid, and the UniPC one too
    theirs = DPMSolverMultistepScheduler(
        **FLOW,
        flow_shift=shift,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    worst = _run_both("dpm++", sigmas, _with_grid(theirs, sigmas), timesteps_from_sigmas(sigmas))
    print(f"dpm++ ({kind} grid) N={num_steps} shift={shift}: max rel diff {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("num_steps", STEPS)
def test_euler_matches_diffusers(num_steps, shift):
    sigmas = sampling_sigmas(num_steps, shift, "euler")
    theirs = FlowMatchEulerDiscreteScheduler(shift=1.0)  # our grid is already shifted
    theirs.set_timesteps(sigmas=sigmas[:-1].float().tolist())
    assert torch.equal(theirs.sigmas, sigmas.float())
    worst = _run_both("euler", sigmas, theirs, timesteps_from_sigmas(sigmas))
    print(f"euler N={num_steps} shift={shift}: max rel diff {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_euler_is_exact_on_a_straight_path(dtype, tol):
    """x_σ = (1-σ)x0 + σε has the constant velocity ε - x0, which Euler integrates exactly to x0."""
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 64, generator=gen, dtype=dtype), torch.randn(2, 64, generator=gen, dtype=dtype)
    for n in (1, 7, 50):
        out = sample(lambda x, t: eps - x0, eps.clone(), sampling_sigmas(n, 5.0, "euler"), "euler")
        assert out.dtype == dtype
        torch.testing.assert_close(out, x0, rtol=0, atol=tol)


@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("kind", ["unipc", "dpm++"])
def test_every_solver_lands_on_a_point_mass(name, kind):
    """For data concentrated at one point c, the exact velocity is (x - c)/σ and x0 = c at every σ.

    All three solvers are exact for a constant x0 prediction, so they must end on c.
    """
    target = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    sigmas = sampling_sigmas(10, 5.0, kind)
    lookup = {int(t): float(s) for t, s in zip(timesteps_from_sigmas(sigmas), sigmas)}

    def velocity(x, t):
        return (x - target) / lookup[int(t)]

    noise = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    out = sample(velocity, noise, sigmas, name)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def _gaussian_error(name: str, num_steps: int) -> float:
    """Sample data N(μ, s²) with its exact velocity field; return the max endpoint error (float64)."""
    mu, sd = 0.7, 0.5
    eps = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = sampling_sigmas(num_steps, 3.0, "dpm++")
    solver = make_solver(name, sigmas)
    x = eps.clone()
    for i in range(num_steps):
        s = float(sigmas[i])
        # x_σ = (1-σ)μ + R(σ)·ε with R² = (1-σ)²sd² + σ², so v = dx/dσ = -μ + (R'/R)(x - (1-σ)μ).
        v = -mu + (s - (1 - s) * sd**2) / ((1 - s) ** 2 * sd**2 + s**2) * (x - (1 - s) * mu)
        x = solver.step(v, x, i)
    return float((x - (mu + sd * eps)).abs().max())


def test_orders_of_accuracy_on_gaussian_data():
    """Doubling the steps halves Euler's error (first order) and cuts UniPC's/DPM++'s ~4x (second order)."""
    errors = {name: (_gaussian_error(name, 320), _gaussian_error(name, 640)) for name in SOLVER_NAMES}
    print({k: f"{a:.2e} -> {b:.2e}" for k, (a, b) in errors.items()})
    assert 1.8 < errors["euler"][0] / errors["euler"][1] < 2.2
    for name in ("unipc", "dpm++"):
        assert errors[name][0] / errors[name][1] > 2.8
        assert errors[name][1] < errors["euler"][1] / 10


def test_sample_loop_feeds_integer_timesteps_and_matches_manual_steps():
    sigmas = sampling_sigmas(6, 5.0, "unipc")
    seen = []

    def model_fn(x, t):
        seen.append(t)
        return toy_model(x, t)

    out = sample(model_fn, _noise(), sigmas, "unipc")
    assert [t.dtype for t in seen] == [torch.int64] * 6 and all(t.ndim == 0 for t in seen)
    assert torch.equal(torch.stack(seen), timesteps_from_sigmas(sigmas)[:-1])
    solver, x = make_solver("unipc", sigmas), _noise()
    for i, t in enumerate(timesteps_from_sigmas(sigmas)[:-1]):
        x = solver.step(toy_model(x, t), x, i)
    assert torch.equal(out, x)
    # A prepared solver object works too, and must have been built for the same grid.
    assert torch.equal(sample(toy_model, _noise(), sigmas, make_solver("unipc", sigmas)), out)
    with pytest.raises(ValueError, match="different σ grid"):
        sample(toy_model, _noise(), sigmas, make_solver("unipc", sampling_sigmas(6, 3.0)))


def test_low_precision_input_keeps_dtype_and_tracks_float32():
    sigmas = sampling_sigmas(8, 5.0, "unipc")
    ref = sample(toy_model, _noise(), sigmas, "unipc")
    out = sample(lambda x, t: toy_model(x.float(), t).bfloat16(), _noise().bfloat16(), sigmas, "unipc")
    assert out.dtype == torch.bfloat16
    assert float((out.float() - ref).abs().max() / ref.abs().max()) < 0.05


def test_solver_errors():
    sigmas = sampling_sigmas(4, 5.0)
    with pytest.raises(ValueError, match="unipc, dpm\\+\\+, euler"):
        make_solver("ddim", sigmas)
    with pytest.raises(ValueError, match="unipc, dpm\\+\\+, euler"):
        sample(toy_model, _noise(), sigmas, "heun")
    solver = make_solver("unipc", sigmas)
    x = _noise()
    with pytest.raises(ValueError, match="in order"):
        solver.step(x, x, 1)
    for i in range(4):
        x = solver.step(toy_model(x, torch.tensor(0)), x, i)
    with pytest.raises(ValueError, match="in order|< 4"):
        solver.step(x, x, 4)
    for bad in ([0.5], [0.2, 0.5, 0.0], [1.5, 0.5, 0.0], [0.5, 0.2, -0.1], [[0.5, 0.0]]):
        with pytest.raises(ValueError, match="sampling_sigmas"):
            make_solver("euler", torch.tensor(bad))


def test_cfg_combine():
    gen = torch.Generator().manual_seed(4)
    v_u, v_c = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    torch.testing.assert_close(cfg_combine(v_u, v_c, 1.0), v_c)
    torch.testing.assert_close(cfg_combine(v_u, v_c, 0.0), v_u)
    torch.testing.assert_close(cfg_combine(v_u, v_c, 5.0), 5 * v_c - 4 * v_u)


def test_expert_switching_and_guide_scales():
    # Wan2.2 t2v-A14B: boundary 0.875, guide (low, high) = (3, 4); the high-noise expert owns t >= 875.
    assert select_expert(875, 0.875) == "high"
    assert select_expert(torch.tensor(874), 0.875) == "low"
    assert select_expert(torch.tensor([999]), 0.875) == "high"
    assert guide_scale_for(torch.tensor(900), 0.875, (3.0, 4.0)) == 4.0
    assert guide_scale_for(torch.tensor(100), 0.875, (3.0, 4.0)) == 3.0
    assert guide_scale_for(100, 0.9, 3.5) == 3.5
    # On the real 40-step, shift-12 schedule the switch happens once, from high to low.
    experts = [select_expert(t, 0.875) for t in timesteps_from_sigmas(sampling_sigmas(40, 12.0))[:-1]]
    switch = experts.index("low")
    assert set(experts[:switch]) == {"high"} and set(experts[switch:]) == {"low"} and 0 < switch < 40
    with pytest.raises(ValueError, match="boundary"):
        select_expert(500, 875)
    with pytest.raises(ValueError, match="single timestep"):
        select_expert(torch.tensor([900, 100]), 0.875)
    with pytest.raises(ValueError, match="low, high"):
        guide_scale_for(500, 0.875, (1.0, 2.0, 3.0))
