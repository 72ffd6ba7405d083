"""Tiny random components shared by tests (every parameter random, so no path can hide behind a zero)."""

from __future__ import annotations

import torch
from transformers import ByT5Tokenizer, CLIPVisionModel, UMT5EncoderModel

from openwan.configs import DIT_PRESETS, IMAGE_ENCODER_PRESETS, TEXT_ENCODER_PRESETS, VACE_PRESETS, VAE_PRESETS
from openwan.models import WanDiT, WanVaceDiT, WanVAE


def randomize(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or "gamma" in name:  # keep norms near 1 so activations stay sane
                p.copy_(1 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module.eval()


def randomize_vae(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A VAE with non-trivial norm gains and biases (the defaults, ones and zeros, would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_video(t: int, h: int = 32, w: int = 48, seed: int = 1) -> torch.Tensor:
    """A random video [1, 3, t, h, w] in [-1, 1]."""
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def max_rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The largest absolute difference relative to the largest magnitude of ``theirs``."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def tiny_components(preset: str = "tiny", seed: int = 0, **dit_changes) -> dict:
    """DiT, VAE, umT5, tokenizer (and CLIP for image presets): what WanPipeline(**parts) takes."""
    torch.manual_seed(seed)
    if preset in VACE_PRESETS:  # e.g. "tiny-vace": a WanVaceDiT
        dit = randomize(WanVaceDiT(VACE_PRESETS[preset].replace(**dit_changes)), std=0.05, seed=seed)
    else:
        dit = randomize(WanDiT(DIT_PRESETS[preset].replace(**dit_changes)), std=0.05, seed=seed)
    if dit.cfg.out_dim == 48:  # Wan2.2 TI2V (e.g. "tiny-ti2v"): the 48-channel Wan2.2 VAE
        vae = tiny_vae22(seed=seed + 1)
    else:
        vae = randomize(WanVAE(VAE_PRESETS["tiny"]), std=0.1, seed=seed + 1)
    text_encoder = randomize(UMT5EncoderModel(TEXT_ENCODER_PRESETS["tiny"].to_hf()), std=0.1, seed=seed + 2)
    parts = {"dit": dit, "vae": vae, "text_encoder": text_encoder, "tokenizer": ByT5Tokenizer()}
    if dit.cfg.image_tokens:
        clip = CLIPVisionModel(IMAGE_ENCODER_PRESETS["tiny"].to_hf())
        parts["image_encoder"] = randomize(clip, std=0.05, seed=seed + 3)
    return parts


def tiny_vae22(seed: int = 1, std: float = 0.1) -> WanVAE:
    """A random Wan2.2-architecture VAE (preset ``tiny-22``: 48 latent channels, 16× spatial, 4× temporal), eval
    mode, float32. Videos: [B, 3, 4n+1, 16k, 16m] in [-1, 1]."""
    torch.manual_seed(seed)
    return randomize(WanVAE(VAE_PRESETS["tiny-22"]), std=std, seed=seed)


def diffusers_parts(parts: dict, steps: int, shift: float) -> tuple:
    """diffusers' transformer, VAE and UniPC scheduler holding the same weights as ``parts`` (tiny_components),
    the scheduler on the reference's ``steps``-step grid at ``shift``: an independent pipeline to compare with."""
    import numpy as np
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    from openwan.checkpoints import keymaps

    dit, vae = parts["dit"], parts["vae"]
    params = {k: v for k, v in keymaps.dit_config_to_diffusers(dit.cfg).items() if not k.startswith("_")}
    transformer = WanTransformer3DModel(**params)
    transformer.load_state_dict(keymaps.dit_official_to_diffusers(dit.state_dict()), strict=True)
    vparams = {k: v for k, v in keymaps.vae_config_to_diffusers(vae.cfg).items() if not k.startswith("_")}
    dvae = AutoencoderKLWan(**vparams)
    dvae.load_state_dict(keymaps.vae_official_to_diffusers(vae.state_dict(), vae.cfg), strict=True)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                        num_train_timesteps=1000, solver_order=2, solver_type="bh2",
                                        predict_x0=True, lower_order_final=True)
    # diffusers' default grid starts at sigma = 1 - 1e-6; the reference's at 0.999 (pinned in
    # tests/diffusion/test_schedule.py). Give diffusers the reference's base grid so both run the same schedule.
    base = np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1]
    set_timesteps = scheduler.set_timesteps
    scheduler.set_timesteps = lambda n, device=None, **kw: set_timesteps(sigmas=base, device=device)
    return transformer.eval(), dvae.eval(), scheduler


class PickleBomb:
    """Unpickling this would create ``marker``; a safe loader must refuse it before that can happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
