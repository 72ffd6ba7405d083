"""The sampler stopped before its last steps so that a denoising VAE decoder finishes the denoising (LTX-Video's
idea; the decoder is trained by ``openwan train-vae --decode-noise``, docs/vae_compression.md).

The run keeps the ordinary schedule and solver (a multistep solver treats its last steps differently, so the grid
it is given is never cut); only the loop stops, at the first level sigma_k <= decode_sigma.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from openwan.diffusion import sampling_sigmas

log = logging.getLogger(__name__)


def check_decode_sigma(value, name: str = "decode_sigma") -> None:
    """Refuse anything but a finite number strictly between 0 and 1 (a ValueError naming ``name``); None passes."""
    if value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, the noise level at which the sampler "
                         f"stops and hands the latent to a decoder trained with train-vae --decode-noise (e.g. 0.1); "
                         f"got {value!r}. Leave it out to denoise to the end.")


def stop_step(sigmas: torch.Tensor, decode_sigma: float | None, warn: bool = True) -> int:
    """How many steps of the grid ``sigmas`` (N + 1 decreasing levels, the last 0) run: N without ``decode_sigma``,
    else the first k >= 1 with sigmas[k] <= decode_sigma, which is N when only the final 0 is that low (``warn``:
    say so in the log)."""
    steps = len(sigmas) - 1
    if decode_sigma is None:
        return steps
    k = int((sigmas[1:] <= decode_sigma).nonzero()[0]) + 1  # sigmas[-1] = 0 always qualifies
    if k == steps and warn:
        log.warning("decode_sigma %g lies below every noise level of this %d-step schedule before 0 (the lowest is "
                    "%.4g): the sampler runs every step and the decoder gets a fully denoised latent.", decode_sigma,
                    steps, float(sigmas[-2]))
    return k


def steps_to_run(steps: int, shift: float, solver: str, decode_sigma: float | None) -> int:
    """The steps a ``steps``-step run at ``shift`` on ``solver``'s grid takes before it reaches ``decode_sigma``."""
    return stop_step(sampling_sigmas(steps, shift, kind=solver), decode_sigma, warn=False)


def decoder_range_warning(decode_noise: tuple[float, float] | None, sigma: float) -> str | None:
    """The sentence to log when a latent at noise level ``sigma`` goes to a decoder whose trained noise range
    (``VAEConfig.decode_noise``) does not reach it; None when it does, or when ``sigma`` is 0."""
    if sigma <= 0 or (decode_noise is not None and sigma <= decode_noise[1]):
        return None
    trained = ("was trained on clean latents only (its config records no decode_noise)" if decode_noise is None
               else f"was trained to finish noise levels up to {decode_noise[1]:g} (decode_noise)")
    return (f"the sampler hands the VAE a latent at sigma {sigma:.4g}, but its decoder {trained}: expect residual "
            f"noise in the video. Fine-tune the decoder with train-vae --freeze-encoder --decode-noise 0 "
            f"{max(sigma, 0.05):.2g}, or lower decode_sigma.")


@contextlib.contextmanager
def naming_the_stop(decode_sigma: float | None, stop: int, steps: int, name: str = "decode_sigma"):
    """A ValueError raised inside (a diffusion cache refusing a run too short for it) also says that
    ``decode_sigma`` (called ``name``) cut the run from ``steps`` to ``stop`` steps."""
    try:
        yield
    except ValueError as err:
        if decode_sigma is None or stop == steps:
            raise
        raise ValueError(f"{err} ({name} {decode_sigma:g} stops the run after {stop} of its {steps} steps: lower "
                         f"{name} or sample more steps.)") from None
