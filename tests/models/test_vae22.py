"""The Wan2.2 VAE (WanVAE with patch_size=2, residual=True): official keys, parity with diffusers' AutoencoderKLWan in
its Wan2.2 configuration, streaming, causality, tiling in 16-pixel multiples, checks."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from conftest import official_keys
from openwan.checkpoints.keymaps import vae_config_to_diffusers, vae_diffusers_to_official, vae_official_to_diffusers
from openwan.configs import VAE_PRESETS, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, VAEConfig
from openwan.models import WanVAE
from openwan.models.vae import FeatureCache, VAETiling
from openwan.models.vae22 import average_down, duplicate_up, patchify, unpatchify
from tiny import max_rel, random_video, randomize_vae

TINY = VAE_PRESETS["tiny-22"]
# A second residual architecture: three levels, both temporal, no wider decoder, 12 latent channels.
SECOND = VAEConfig(
    dim=8, z_dim=12, dim_mult=(1, 2, 2), temporal_downsample=(True, True), patch_size=2, residual=True,
    latents_mean=tuple(0.1 * i - 0.5 for i in range(12)), latents_std=tuple(0.5 + 0.1 * i for i in range(12)),
)
CONFIGS = {"tiny-22": TINY, "second": SECOND}





@pytest.fixture(scope="module")
def tiny() -> WanVAE:
    torch.manual_seed(0)
    return randomize_vae(WanVAE(TINY))


# ------------------------------------------------------------------------------------ key layout


def test_full_size_keys_and_shapes_match_the_release():
    expected = official_keys("Wan2.2 VAE")
    with torch.device("meta"):
        model = WanVAE.from_config("wan2.2")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 196
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 0.7047) < 5e-4
    cfg = model.cfg
    assert (cfg.z_dim, cfg.spatial_compression, cfg.temporal_compression) == (48, 16, 4)
    assert model.latents_mean.tolist() == pytest.approx(WAN22_LATENTS_MEAN)
    assert model.latents_std.tolist() == pytest.approx(WAN22_LATENTS_STD)


def test_from_config_forms():
    with torch.device("meta"):
        from_dict = WanVAE.from_config({"dim": 8, "decoder_dim": 16, "z_dim": 48, "patch_size": 2,
                                        "is_residual": True})
    assert from_dict.cfg == TINY  # 48 channels take the Wan2.2 statistics unless given
    assert VAEConfig.from_dict(TINY.to_dict()) == TINY
    assert "patch_size" not in VAE_PRESETS["tiny"].to_dict()  # Wan2.1 dicts read as before
    with pytest.raises(ValueError, match="attn_scales"):
        TINY.replace(attn_scales=(1.0,))
    with pytest.raises(ValueError, match="encoder level 1 regroups"):
        TINY.replace(dim_mult=(1, 3, 4, 4))
    with pytest.raises(ValueError, match="unknown vae preset"):
        WanVAE.from_config("wan2.3")


def test_patchify_and_shortcuts_move_the_right_pixels():
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).view(2, 3, 2, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 2, 2, 3) and torch.equal(unpatchify(p, 2), x)
    # channel c·4 + r·2 + q: colour c, column offset r, row offset q (the release's order)
    assert torch.equal(p[:, 1 * 4 + 1 * 2 + 0], x[:, 1, :, 0::2, 1::2])
    assert torch.equal(p[:, 2 * 4 + 0 * 2 + 1], x[:, 2, :, 1::2, 0::2])
    # averaging every channel of a 2x2x2 neighbourhood is a mean pool; the zero frame pads in front
    y = torch.randn(1, 4, 3, 4, 4)
    pooled = average_down(y, 1, 2, 2)
    ref = torch.nn.functional.avg_pool3d(torch.cat([torch.zeros(1, 4, 1, 4, 4), y], 2).mean(1, keepdim=True), 2)
    torch.testing.assert_close(pooled, ref)
    # duplicating then averaging back gives the input again
    up = duplicate_up(y, 2, 2, 2, first=False)
    assert up.shape == (1, 2, 6, 8, 8)
    torch.testing.assert_close(average_down(up, 4, 2, 2), y)
    assert duplicate_up(y, 2, 2, 2, first=True).shape[2] == 5


# ------------------------------------------------------------------------------- diffusers parity


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request) -> tuple[WanVAE, AutoencoderKLWan]:
    """Random diffusers weights, moved into ours through the diffusers -> official key map."""
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    theirs = randomize_vae(AutoencoderKLWan(**{k: v for k, v in vae_config_to_diffusers(cfg).items()
                                            if not k.startswith("_")}))
    state = theirs.state_dict()
    official = vae_diffusers_to_official(state, cfg)
    assert vae_official_to_diffusers(official, cfg).keys() == state.keys()
    ours = WanVAE.from_state(cfg, official)  # strict: every key present, none left over
    return ours, theirs


@pytest.mark.parametrize("frames", [1, 9, 17])
def test_matches_diffusers(pair, frames):
    ours, theirs = pair
    cfg = ours.cfg
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    video = random_video(frames)
    with torch.no_grad():
        z = ours.encode(video)
        mu, log_var = ours.encode_moments(video)
        posterior = theirs.encode(video).latent_dist
        z_ref = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
        decoded = ours.decode(z_ref)
        decoded_ref = theirs.decode(z_ref * std + mean).sample
    s = cfg.spatial_compression
    assert z.shape == (1, cfg.z_dim, 1 + (frames - 1) // 4, 32 // s, 48 // s) and z.dtype == torch.float32
    assert decoded.shape == (1, 3, frames, 32, 48)
    errors = {
        "encode": max_rel(z, (posterior.mean - mean) / std),
        "mu": max_rel(mu, posterior.mean),
        "log_var": max_rel(log_var, posterior.logvar),  # diffusers clamps to [-30, 20]; these values lie inside
        "decode": max_rel(decoded, decoded_ref),
    }
    print(f"{cfg.z_dim=} {frames=} max relative diffs:", ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    # Measured on CPU: encode, mu, log_var <= 7.1e-7, decode <= 3.2e-6 (relative).
    assert max(errors.values()) <= 1e-4, errors
    assert decoded_ref.abs().lt(1).float().mean() > 0.9  # the comparison is not hidden by clamping


# ---------------------------------------------------------------------------- streaming, causality


def test_stream_equals_decode_exactly(tiny):
    z = torch.randn(1, 48, 4, 2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        chunks = list(tiny.decode_stream(z))
        whole = tiny.decode(z)
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    assert whole.shape == (1, 3, 13, 32, 48)
    assert torch.equal(torch.cat(chunks, dim=2), whole)


def test_decode_chunk_with_a_callers_cache_equals_decode(tiny):
    # a streaming decoder that keeps its own FeatureCache gets pixels (not 12-channel patches) from decode_chunk
    z = torch.randn(1, 48, 3, 2, 3, generator=torch.Generator().manual_seed(5))
    cache, chunks = FeatureCache(), []
    with torch.no_grad():
        x = tiny.conv2(tiny.denormalize(z))
        for k in range(z.shape[2]):
            cache.next_chunk()
            chunks.append(tiny.decode_chunk(x[:, :, k:k + 1], cache).clamp(-1, 1))
        assert torch.equal(torch.cat(chunks, dim=2), tiny.decode(z))


def test_causal_in_time_and_batch_independent(tiny):
    video = torch.cat([random_video(9, seed=7), random_video(9, seed=8)])
    z = torch.randn(1, 48, 3, 2, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = tiny.encode(video)
        # the chunked causal encode of the longer clip starts with exactly the latents of its first 5 frames
        torch.testing.assert_close(tiny.encode(video[:, :, :5]), whole[:, :, :2], rtol=0, atol=1e-6)
        torch.testing.assert_close(whole[1:], tiny.encode(video[1:]), rtol=0, atol=1e-5)
        torch.testing.assert_close(tiny.decode(z[:, :, :2]), tiny.decode(z)[:, :, :5], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- tiling

TILE = VAETiling(tile_size=64, overlap=32)  # 4-latent tiles overlapping by 2: a 3 x 5 grid at 128 x 192


def _pixel_local(model: WanVAE) -> WanVAE:
    """Keep only the centre tap of every spatial kernel and silence the (global) attention: each latent then
    depends only on its own 16 x 16 pixel block (the patchify and the shortcuts stay inside it)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d) and module.weight.shape[-1] == 3:
                centre = module.weight[..., 1, 1].clone()
                module.weight.zero_()
                module.weight[..., 1, 1] = centre
            if name.endswith(".proj"):
                module.weight.zero_()
                module.bias.zero_()
    return model


@pytest.mark.parametrize("tile", [VAETiling(32, 16), pytest.param(VAETiling(48, 16), marks=pytest.mark.slow),
                                  pytest.param(VAETiling(32, 0), marks=pytest.mark.slow)])
def test_tiling_is_exact_for_a_pixel_local_network(tile):
    # checks the tile positions, the blending weights and their normalisation at the 2.2 scale (16 pixels)
    torch.manual_seed(0)
    model = _pixel_local(randomize_vae(WanVAE(TINY)))
    with torch.no_grad():
        video = random_video(5, 48, 80)  # 3 x 5 latents: a 2 x 4 grid of 2-latent tiles
        z = model.encode(video)
        out = model.decode(z)
        torch.testing.assert_close(model.encode(video, tile=tile), z, rtol=0, atol=1e-5)
        tiled = model.decode(z, tile=tile)
        torch.testing.assert_close(tiled, out, rtol=0, atol=1e-5)
        assert torch.equal(torch.cat(list(model.decode_stream(z, tile=tile)), dim=2), tiled)


@pytest.mark.slow
def test_tiled_close_to_untiled_and_overlap_helps(tiny):
    video = random_video(9, 128, 192)
    with torch.no_grad():
        z = tiny.encode(video)
        z_tiled, z_hard = tiny.encode(video, tile=TILE), tiny.encode(video, tile=VAETiling(64, 0))
        out = tiny.decode(z)
        out_tiled, out_hard = tiny.decode(z, tile=TILE), tiny.decode(z, tile=VAETiling(64, 0))
        chunks = list(tiny.decode_stream(z, tile=TILE))
    assert torch.equal(torch.cat(chunks, dim=2), out_tiled)
    # Not bitwise: tiles see zero padding where the whole frame has neighbours (see tests/models/test_vae.py).
    # Measured on CPU: encode max |diff| 0.58 (mean 0.069) with mean |z| 0.44; decode max 0.81 (mean 0.082).
    assert (z_tiled - z).abs().max() < 0.8 and (z_tiled - z).abs().mean() < 0.1
    assert (out_tiled - out).abs().max() < 1.1 and (out_tiled - out).abs().mean() < 0.12
    # Blending across an overlap beats butting tiles together (no overlap: means 0.109 and 0.124).
    assert (z_tiled - z).abs().mean() < 0.9 * (z_hard - z).abs().mean()
    assert (out_tiled - out).abs().mean() < 0.9 * (out_hard - out).abs().mean()


def test_one_tile_is_no_tiling(tiny):
    z = torch.randn(1, 48, 2, 2, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(tiny.decode(z, tile=VAETiling(64, 16)), tiny.decode(z))


# ------------------------------------------------------------------------------ grad, bad inputs


def test_gradients_flow_for_training():
    model = WanVAE(TINY)
    mu, log_var = model.encode_moments(random_video(5, 16, 16))
    recon = model.decode(model.normalize(mu))
    (recon.square().mean() + log_var.mean()).backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.decoder.head[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 4, 5, 32, 32), "3 colour channels"),
        ((1, 3, 8, 32, 32), "valid count: 5 or 9"),
        ((1, 3, 5, 40, 32), "multiples of 16.*32x32"),
        ((1, 3, 5, 32, 24), "multiples of 16.*32x16"),
    ],
)
def test_encode_rejects_bad_video(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(torch.zeros(shape))


def test_decode_and_tiling_reject_bad_input(tiny):
    with pytest.raises(ValueError, match="48 channels"):
        tiny.decode(torch.zeros(1, 16, 2, 4, 4))
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny.decode(torch.zeros(1, 48, 1, 8, 8), tile=VAETiling(40, 16))
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny.encode(torch.zeros(1, 3, 1, 128, 128), tile=VAETiling(64, 24))
