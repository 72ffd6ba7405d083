"""σ grids, shift, timesteps and training σ sampling, checked against the reference formulas and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from openwan.diffusion import (
    resolution_shift,
    sample_training_sigmas,
    sampling_sigmas,
    shift_sigmas,
    timesteps_from_sigmas,
)

STEPS = (1, 4, 5, 10, 40, 50)
SHIFTS = (1.0, 3.0, 5.0, 12.0)


def _reference_grid(num_steps: int, shift: float, kind: str) -> np.ndarray:
    """The official Wan construction in numpy float64 (FlowUniPC set_timesteps / get_sampling_sigmas)."""
    if kind == "unipc":
        sigma_max = float(np.float32(1.0 - 1.0 / 1000))  # the reference reads it back from a float32 table
        base = np.linspace(sigma_max, 0.0, num_steps + 1)[:-1]
    else:
        base = np.linspace(1.0, 0.0, num_steps + 1)[:num_steps]
    return shift * base / (1 + (shift - 1) * base)


def test_reference_unipc_schedule_n4_shift5_by_hand():
    """Pins the official Wan UniPC schedule for N=4, s=5, worked out by hand.

    Reference: base σ = linspace(0.999, 0, 5)[:-1] = 0.999·(1, 3/4, 1/2, 1/4)
    = (0.999, 0.74925, 0.4995, 0.24975), shifted by σ' = 5σ/(1 + 4σ), then a final 0;
    the model sees int64(σ'·1000) (truncation).

    diffusers' UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5) without `sigmas=` starts from
    linspace(1, 1/1000, N+1)[:-1] = (1, 0.75025, 0.5005, 0.25075) instead: the same step 0.24975, but the grid
    begins at 1 (lowered by 1e-6 to keep log(1 - σ) finite) instead of 0.999. Every σ is therefore a little
    larger, and the last timestep is 625, not 624. To sample like the reference with diffusers, pass it the
    reference grid through `sigmas=`.
    """
    sigmas = sampling_sigmas(4, 5.0, "unipc")
    expected = torch.tensor(
        [4.995 / 4.996, 3.74625 / 3.997, 2.4975 / 2.998, 1.24875 / 1.999, 0.0], dtype=torch.float64
    )
    assert sigmas.dtype == torch.float64 and sigmas.shape == (5,)
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-7)  # 1e-7: float32(0.999) is 0.99900001
    assert timesteps_from_sigmas(sigmas).tolist() == [999, 937, 833, 624, 0]

    theirs = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    theirs.set_timesteps(4)
    assert theirs.timesteps.tolist() == [999, 937, 833, 625]
    assert theirs.sigmas[0].item() == pytest.approx(1 - 1e-6, abs=1e-7)
    assert theirs.sigmas[-1].item() == 0.0


@pytest.mark.parametrize("kind", ["unipc", "dpm++"])
def test_grids_match_the_reference_construction_bit_for_bit(kind):
    for n in STEPS:
        for s in SHIFTS:
            ours = sampling_sigmas(n, s, kind)
            ref = _reference_grid(n, s, kind)
            assert ours.dtype == torch.float64 and ours.shape == (n + 1,) and ours[-1].item() == 0.0
            assert np.array_equal(ours[:-1].numpy(), ref), (kind, n, s)
            ref_t = torch.from_numpy(ref * 1000).to(torch.int64)  # as the reference casts its timesteps
            assert torch.equal(timesteps_from_sigmas(ours)[:-1], ref_t), (kind, n, s)
            assert bool(torch.all(ours[1:] < ours[:-1]))


def test_dpm_plus_plus_grid_starts_at_pure_noise_and_euler_uses_it():
    sigmas = sampling_sigmas(10, 5.0, "dpm++")
    assert sigmas[0].item() == 1.0 and timesteps_from_sigmas(sigmas)[0].item() == 1000
    assert torch.equal(sampling_sigmas(10, 5.0, "euler"), sigmas)


def test_diffusers_dpm_default_flow_grid_is_the_reference_unipc_grid():
    """Worth knowing: diffusers' DPM++ flow grid is Wan's *UniPC* grid (from 0.999), not Wan's DPM++ one."""
    for n, s in [(5, 1.0), (10, 5.0), (50, 12.0)]:
        theirs = DPMSolverMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s
        )
        theirs.set_timesteps(n)
        ours = sampling_sigmas(n, s, "unipc")
        torch.testing.assert_close(theirs.sigmas, ours.float(), rtol=0, atol=1e-7)
        assert torch.equal(theirs.timesteps, timesteps_from_sigmas(ours)[:-1])


def test_shift_formula_properties():
    sigmas = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_sigmas(sigmas, 1.0), sigmas)
    for s in (0.5, 3.0, 12.0):
        shifted = shift_sigmas(sigmas, s)
        assert shifted[0].item() == 0.0 and shifted[-1].item() == 1.0
        assert bool(torch.all(shifted[1:] > shifted[:-1]))
        torch.testing.assert_close(
            shift_sigmas(shifted, 1 / s), sigmas
        )  # shifting by s then 1/s is the identity
    assert bool(torch.all(shift_sigmas(sigmas[1:-1], 5.0) > sigmas[1:-1]))  # s > 1 moves towards noise
    half = torch.tensor([0.5], dtype=torch.float32)
    assert shift_sigmas(half, 3.0).dtype == torch.float32
    assert shift_sigmas(half, 3.0).item() == pytest.approx(1.5 / 2.0)


def test_timesteps_integer_and_float():
    sigmas = torch.tensor([0.9999, 0.5, 0.00049, 0.0], dtype=torch.float64)
    t = timesteps_from_sigmas(sigmas)
    assert t.dtype == torch.int64 and t.tolist() == [999, 500, 0, 0]
    tf = timesteps_from_sigmas(sigmas, integer=False)
    assert tf.dtype == torch.float64
    torch.testing.assert_close(tf, sigmas * 1000)


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_steps"):
        sampling_sigmas(bad, 5.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "5"])
def test_bad_shift(bad):
    with pytest.raises(ValueError, match="shift"):
        sampling_sigmas(10, bad)
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(torch.tensor([0.5]), bad)
    with pytest.raises(ValueError, match="shift"):
        sample_training_sigmas(4, shift=bad)


def test_bad_kind_and_mode():
    with pytest.raises(ValueError, match="unipc, dpm\\+\\+, euler"):
        sampling_sigmas(10, 5.0, kind="ddim")
    with pytest.raises(ValueError, match="uniform, logit_normal"):
        sample_training_sigmas(4, mode="beta")
    with pytest.raises(ValueError, match="batch"):
        sample_training_sigmas(0)
    with pytest.raises(ValueError, match="logit_std"):
        sample_training_sigmas(4, mode="logit_normal", logit_std=0.0)


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_training_sigmas_shape_range_and_reproducibility(mode):
    def draw(shift):
        return sample_training_sigmas(
            20_000, mode=mode, shift=shift, generator=torch.Generator().manual_seed(7)
        )

    sigmas = draw(1.0)
    assert sigmas.shape == (20_000,) and sigmas.dtype == torch.float32
    assert float(sigmas.min()) >= 0.0 and float(sigmas.max()) <= 1.0
    assert torch.equal(draw(1.0), sigmas)
    # The shift is applied to the same draw: same generator state, shifted values.
    torch.testing.assert_close(draw(3.0), shift_sigmas(sigmas, 3.0))
    assert float(draw(3.0).mean()) > float(sigmas.mean()) + 0.1
    assert float(sigmas.median()) == pytest.approx(0.5, abs=0.02)


def test_training_sigma_distributions():
    gen = torch.Generator().manual_seed(3)
    uniform = sample_training_sigmas(50_000, "uniform", generator=gen)
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(uniform.std()) == pytest.approx(1 / math.sqrt(12), abs=0.01)
    # logit-normal: logit(σ) ~ N(mean, std²).
    ln = sample_training_sigmas(50_000, "logit_normal", generator=gen, logit_mean=0.5, logit_std=0.8)
    logits = torch.logit(ln.double())
    assert float(logits.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logits.std()) == pytest.approx(0.8, abs=0.02)


def test_resolution_shift_matches_diffusers_dynamic_shifting():
    """s = exp(μ) through shift_sigmas equals diffusers' Flux rule (calculate_shift + exponential shift)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    base = np.linspace(1.0, 1 / 50, 50)
    for tokens in (256, 1024, 4096, 32760, 75600):  # 75600 tokens: 81 frames of 1280x720 in Wan's latent grid
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert math.log(resolution_shift(tokens, 256, 0.5, 4096, 1.15)) == pytest.approx(mu, rel=1e-12)
        theirs = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        theirs.set_timesteps(sigmas=base.copy(), mu=mu)
        ours = shift_sigmas(torch.from_numpy(base), resolution_shift(tokens))
        torch.testing.assert_close(theirs.sigmas[:-1], ours.float(), rtol=1e-6, atol=1e-7)
    assert resolution_shift(256) == pytest.approx(math.exp(0.5))
    assert resolution_shift(4096) == pytest.approx(math.exp(1.15))
    with pytest.raises(ValueError, match="num_tokens"):
        resolution_shift(0)
    with pytest.raises(ValueError, match="max_tokens"):
        resolution_shift(100, base_tokens=256, max_tokens=256)


@pytest.mark.parametrize("mode,shift,bounds", [("uniform", 1.0, (0.2, 0.7)), ("logit_normal", 3.0, (0.75, 1.0)),
                                               ("logit_normal", 1.0, (0.0, 0.75))])
def test_a_range_of_noise_levels_is_the_distribution_cut_to_it(mode, shift, bounds):
    """A Wan2.2-style expert's draws: the full distribution's, kept only where they fall in the range (rejection
    sampling, the independent check), and the inverse-CDF draws agree in distribution (two-sample KS)."""
    kw = dict(mode=mode, shift=shift, logit_std=1.0)
    full = sample_training_sigmas(400_000, generator=torch.Generator().manual_seed(1), **kw).double()
    kept = full[(full >= bounds[0]) & (full <= bounds[1])].sort().values
    ours = sample_training_sigmas(20_000, generator=torch.Generator().manual_seed(2), sigma_range=bounds, **kw)
    assert ours.dtype == torch.float32 and float(ours.min()) >= bounds[0] and float(ours.max()) <= bounds[1]
    grid = torch.linspace(bounds[0], bounds[1], 201, dtype=torch.float64)
    cdf_kept = torch.searchsorted(kept, grid).double() / len(kept)
    cdf_ours = torch.searchsorted(ours.double().sort().values, grid).double() / len(ours)
    assert float((cdf_kept - cdf_ours).abs().max()) < 0.02  # KS at 20k samples: ~0.012 at p = 0.05


def test_the_full_range_draws_what_it_drew_before_ranges():
    gen = torch.Generator().manual_seed(5)
    expected = shift_sigmas(torch.sigmoid(torch.randn(64, generator=gen) * 1.5 + 0.2), 3.0)
    got = sample_training_sigmas(64, "logit_normal", 3.0, torch.Generator().manual_seed(5), logit_mean=0.2,
                                 logit_std=1.5, sigma_range=(0.0, 1.0))
    assert torch.equal(got, expected)
    for bad in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.8, 0.3)):
        with pytest.raises(ValueError, match="sigma_range"):
            sample_training_sigmas(4, sigma_range=bad)
