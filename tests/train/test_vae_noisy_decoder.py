"""LTX-Video's denoising decoder (VAETrainConfig.decode_noise): the noising matches the VAE's own normalisation, and
a decoder fine-tuned on noisy latents decodes noisy latents better than one fine-tuned as usual."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from openwan.checkpoints.convert import VAE_FILE
from openwan.configs import VAE_PRESETS
from openwan.data.synthetic import dataset_combinations, render_clip
from openwan.models.vae import WanVAE
from openwan.pipelines.components import BUNDLED
from openwan.train.vae_config import VAEDataConfig
from openwan.train.vae_losses import noisy_latents
from openwan.train.vae_trainer import VAETrainConfig, VAETrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def shapes_frames(n: int, size: int, seed: int) -> torch.Tensor:
    """[n, 3, 1, size, size] in [-1, 1]: first frames of the synthetic dataset's clips (rendered at least 32 px,
    the renderer's least, and averaged down)."""
    combos = dataset_combinations(n, seed)
    drawn = max(size, 32)
    clips = [render_clip(*c, seed=seed * 1000 + i, size=drawn, frames=2)[:1] for i, c in enumerate(combos)]
    video = torch.stack(clips).permute(0, 4, 1, 2, 3) * 2 - 1  # [n, 3, 1, drawn, drawn]
    return F.avg_pool3d(video, (1, drawn // size, drawn // size))


def test_noisy_latents_is_flow_matching_in_the_vaes_normalised_space():
    torch.manual_seed(0)
    cfg = VAE_PRESETS["tiny"].replace(latents_mean=tuple(torch.randn(16).tolist()),
                                      latents_std=tuple((torch.rand(16) + 0.5).tolist()))
    vae = WanVAE(cfg)
    z, noise = torch.randn(3, 16, 2, 4, 4) * 2, torch.randn(3, 16, 2, 4, 4)
    sigma = torch.tensor([0.0, 0.1, 0.5])
    got = noisy_latents(z, sigma, noise, cfg.latents_mean, cfg.latents_std)
    n = vae.normalize(z)  # the model's own normalisation, the space a DiT samples in
    want = vae.denormalize((1 - sigma.view(3, 1, 1, 1, 1)) * n + sigma.view(3, 1, 1, 1, 1) * noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], z[0], rtol=1e-5, atol=1e-5)


def test_trainer_draws_the_noise_in_the_normalised_space():
    cfg = VAE_PRESETS["tiny"].replace(latents_mean=(0.5,) * 16, latents_std=(3.0,) * 16)
    trainer = _trainer(WanVAE(cfg), steps=1, lr=1e-3, freeze_encoder=True, decode_noise=(0.2, 0.2))
    z = torch.randn(2, 16, 1, 8, 8)
    added = trainer._noised(z) - noisy_latents(z, torch.full((2,), 0.2), torch.zeros_like(z), cfg.latents_mean,
                                               cfg.latents_std)
    unit = added / (0.2 * 3.0)  # sigma times unit noise, scaled back by the latent std
    assert 0.85 < unit.std() < 1.15 and unit.mean().abs() < 0.15


def _trainer(model: WanVAE, steps: int, lr: float, size: int = 16, **kw) -> VAETrainer:
    cfg = VAETrainConfig(stage=2, steps=steps, lr=lr, l1_weight=0, l2_weight=10, perceptual_weight=0,
                         data=VAEDataConfig(size=size, frames=1), **kw)
    return VAETrainer(model, cfg)


def test_denoising_decoder_decodes_noisy_latents_better():
    """The bundled demo VAE's decoder fine-tuned on clean latents and on noisy ones, from the same start."""
    base = WanVAE.from_pretrained(BUNDLED / VAE_FILE, dtype=torch.float32)
    data = [{"video": shapes_frames(4, 64, seed=0)}, {"video": shapes_frames(4, 64, seed=1)}]
    decoders = {}
    for name, noise in (("plain", (0.0, 0.0)), ("denoising", (0.1, 0.3))):
        trainer = _trainer(copy.deepcopy(base), steps=16, lr=5e-4, size=64, freeze_encoder=True,
                           decode_noise=noise)
        trainer.fit(data)
        decoders[name] = trainer.model.eval()
    torch.testing.assert_close(decoders["plain"].encoder.conv1.weight, base.encoder.conv1.weight)  # same latents
    held_out = shapes_frames(4, 64, seed=2)
    clean = {name: _noisy_error(vae, held_out, 0.0) for name, vae in decoders.items()}
    noisy = {name: _noisy_error(vae, held_out, 0.2) for name, vae in decoders.items()}
    assert noisy["plain"] > 1.5 * clean["plain"], (noisy, clean)  # the noise does hurt a plain decoder
    assert noisy["denoising"] < 0.85 * noisy["plain"], (noisy, clean)  # the release decoder starts robust already


@torch.no_grad()
def _noisy_error(vae: WanVAE, video: torch.Tensor, sigma: float) -> float:
    """Mean squared error of decoding ``video``'s normalised latents noised to ``sigma`` (a fixed draw)."""
    z = vae.encode(video)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    return (vae.decode((1 - sigma) * z + sigma * noise) - video).square().mean().item()
