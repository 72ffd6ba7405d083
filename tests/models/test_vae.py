"""WanVAE: official keys, parity with diffusers' AutoencoderKLWan, tiling, streaming, causality, checks."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from conftest import official_keys
from openwan.configs import VAE_PRESETS, VAEConfig
from openwan.models.vae import VAETiling, WanVAE, channel_norm
from tiny import max_rel, random_video, randomize_vae

# A second small architecture: other dim_mult, other temporal levels, z_dim 8 with its own statistics.
# diffusers' converter hard-codes 4 levels of 2 residual blocks with a decoder shortcut only at upsamples.4,
# so those stay.
SECOND = VAEConfig(
    dim=8, z_dim=8, dim_mult=(1, 2, 4, 2), temporal_downsample=(True, False, True),
    latents_mean=(0.3, -0.2, 0.5, 0.0, -0.7, 0.1, 0.9, -0.4),
    latents_std=(1.5, 0.8, 2.0, 1.1, 0.6, 1.3, 2.4, 0.9),
)
# A decoder wider than its encoder (diffusers' decoder_base_dim; how the demo model's VAE decodes sharper).
WIDE_DECODER = VAE_PRESETS["tiny"].replace(decoder_dim=12)
CONFIGS = {"tiny": VAE_PRESETS["tiny"], "second": SECOND, "wide-decoder": WIDE_DECODER}





@pytest.fixture(scope="module")
def tiny() -> WanVAE:
    torch.manual_seed(0)
    return randomize_vae(WanVAE(VAE_PRESETS["tiny"]))


# ------------------------------------------------------------------------------------ key layout


def test_full_size_keys_and_shapes_match_the_release():
    expected = official_keys("Wan2.1 VAE")
    with torch.device("meta"):
        model = WanVAE.from_config({})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 194
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 0.1269) < 5e-4
    # The latent statistics are constants outside the state dict, real even on the meta device.
    assert not model.latents_mean.is_meta and model.latents_std.dtype == torch.float32
    assert model.cfg == VAEConfig()


def test_from_config_dict_overrides():
    with torch.device("meta"):
        model = WanVAE.from_config({"dim": 8, "temperal_downsample": [False, False, True], "z_dim": 8})
    assert model.cfg.temporal_downsample == (False, False, True) and model.cfg.temporal_compression == 2
    assert model.cfg.latents_mean == (0.0,) * 8 and model.cfg.latents_std == (1.0,) * 8
    assert WanVAE.from_config(SECOND).cfg is SECOND
    with pytest.raises(ValueError, match="unknown config field .base.; VAEConfig has: dim, z_dim"):
        WanVAE.from_config({"base": 8})


def test_decoder_width_round_trips_through_configs_and_weights(tmp_path):
    from openwan.checkpoints.infer import infer_vae_config
    from openwan.checkpoints.keymaps import vae_config_from_diffusers, vae_config_to_diffusers

    assert WIDE_DECODER.decoder_width == 12 and VAE_PRESETS["tiny"].decoder_width == 8
    assert "decoder_dim" not in VAE_PRESETS["tiny"].to_dict()
    assert VAEConfig.from_dict(WIDE_DECODER.to_dict()) == WIDE_DECODER
    assert vae_config_to_diffusers(WIDE_DECODER)["decoder_base_dim"] == 12
    assert vae_config_from_diffusers(vae_config_to_diffusers(WIDE_DECODER)) == WIDE_DECODER
    with torch.device("meta"):
        state = WanVAE(WIDE_DECODER).state_dict()
    assert infer_vae_config(state) == WIDE_DECODER  # the .pth alone tells the widths
    assert state["decoder.conv1.weight"].shape[0] == 12 * 4 and state["encoder.conv1.weight"].shape[0] == 8
    with pytest.raises(ValueError, match="positive channel count"):
        VAEConfig(decoder_dim=0)


# ------------------------------------------------------------------------------- diffusers parity


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request) -> tuple[WanVAE, AutoencoderKLWan]:
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    ours = randomize_vae(WanVAE(cfg))
    theirs = AutoencoderKLWan(
        base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
        attn_scales=list(cfg.attn_scales), temperal_downsample=list(cfg.temporal_downsample), dropout=0.0,
        latents_mean=list(cfg.latents_mean), latents_std=list(cfg.latents_std), decoder_base_dim=cfg.decoder_dim,
    )
    theirs.load_state_dict(convert_wan_vae_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs.eval()


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
    latent_frames = 1 + (frames - 1) // 4
    assert z.shape == (1, cfg.z_dim, latent_frames, 4, 6) and z.dtype == torch.float32
    assert decoded.shape == (1, 3, frames, 32, 48)
    errors = {
        "encode": max_rel(z, (posterior.mean - mean) / std),
        "mu": max_rel(mu, posterior.mean),
        "log_var": max_rel(log_var, posterior.logvar),  # diffusers clamps to [-30, 20]; these values lie inside
        "decode": max_rel(decoded, decoded_ref),
    }
    print(f"{cfg.z_dim=} {frames=} max relative diffs:", ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    # Measured on CPU: encode <= 6e-7, mu <= 1.3e-6, log_var <= 1.2e-6, decode <= 4.8e-6 (relative).
    assert max(errors.values()) <= 1e-4, errors
    assert decoded_ref.abs().lt(1).float().mean() > 0.95  # the comparison is not hidden by clamping


# ---------------------------------------------------------------------------- streaming, causality


def test_batch_items_are_independent(tiny):
    videos = torch.cat([random_video(5, seed=7), random_video(5, seed=8)])
    with torch.no_grad():
        z = tiny.encode(videos)
        torch.testing.assert_close(z[1:], tiny.encode(videos[1:]), rtol=0, atol=1e-5)
        torch.testing.assert_close(tiny.decode(z)[1:], tiny.decode(z[1:]), rtol=0, atol=1e-5)


def test_stream_equals_decode_exactly(tiny):
    z = torch.randn(1, 16, 4, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        chunks = list(tiny.decode_stream(z))
        whole = tiny.decode(z)
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), whole)


def test_causal_in_time(tiny):
    video = random_video(9)
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        first = tiny.encode(video[:, :, :5])
        torch.testing.assert_close(first, tiny.encode(video)[:, :, :2], rtol=0, atol=1e-6)
        torch.testing.assert_close(tiny.decode(z[:, :, :2]), tiny.decode(z)[:, :, :5], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- tiling

TILE = VAETiling(tile_size=32, overlap=16)  # 4-latent tiles overlapping by 2: a 3 x 5 grid at 64 x 96


@pytest.mark.slow
def test_tiled_close_to_untiled_and_overlap_helps(tiny):
    video = random_video(9, 64, 96)
    with torch.no_grad():
        z = tiny.encode(video)
        z_tiled, z_hard = tiny.encode(video, tile=TILE), tiny.encode(video, tile=VAETiling(32, 0))
        out = tiny.decode(z)
        out_tiled, out_hard = tiny.decode(z, tile=TILE), tiny.decode(z, tile=VAETiling(32, 0))
    # Not bitwise: each tile sees zero padding at its borders where the whole frame has real neighbours, and
    # the receptive field of this (random, deep) network is far wider than a 32-pixel tile. Measured on CPU:
    # encode max |diff| 0.30 (mean 0.037) with latents up to ~1; decode max |diff| 1.05 (mean 0.120).
    assert (z_tiled - z).abs().max() < 0.4 and (z_tiled - z).abs().mean() < 0.05
    assert (out_tiled - out).abs().max() < 1.25 and (out_tiled - out).abs().mean() < 0.15
    # Blending across an overlap beats butting tiles together (no overlap: means 0.048 and 0.166).
    assert (z_tiled - z).abs().mean() < 0.9 * (z_hard - z).abs().mean()
    assert (out_tiled - out).abs().mean() < 0.9 * (out_hard - out).abs().mean()


@pytest.mark.slow
def test_tiling_is_exact_for_a_pixel_local_network():
    # Keep only the centre tap of every spatial kernel and silence the (global) attention: each output pixel
    # then depends on its own column of pixels only, so tiled and untiled must agree up to rounding, which
    # checks the tile positions, the blending weights and their normalisation.
    torch.manual_seed(0)
    model = randomize_vae(WanVAE(VAE_PRESETS["tiny"]))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d) and module.weight.shape[-1] == 3:
                centre = module.weight[..., 1, 1].clone()
                module.weight.zero_()
                module.weight[..., 1, 1] = centre
            if name.endswith(".proj"):
                module.weight.zero_()
                module.bias.zero_()
        video = random_video(5, 64, 96)
        z = model.encode(video)
        out = model.decode(z)
        for tile in (TILE, VAETiling(40, 8), VAETiling(32, 0)):
            torch.testing.assert_close(model.encode(video, tile=tile), z, rtol=0, atol=1e-5)
            torch.testing.assert_close(model.decode(z, tile=tile), out, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_tiled_stream_equals_tiled_decode_exactly(tiny):
    z = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        chunks = list(tiny.decode_stream(z, tile=TILE))
        whole = tiny.decode(z, tile=TILE)
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), whole)


def test_one_tile_is_no_tiling(tiny):
    z = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(tiny.decode(z, tile=VAETiling(64, 16)), tiny.decode(z))


# ------------------------------------------------------------------------------ dtype, grad, loading


def test_gradients_flow_for_training(tiny):
    model = WanVAE(VAE_PRESETS["tiny"])
    mu, log_var = model.encode_moments(random_video(5, 16, 16))
    recon = model.decode(model.normalize(mu))
    (recon.square().mean() + log_var.mean()).backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.decoder.head[2].weight.grad.abs().sum() > 0


def test_bfloat16_weights_keep_float32_scale():
    model = WanVAE(VAE_PRESETS["tiny"]).to(torch.bfloat16)
    assert model.latents_mean.dtype == torch.float32
    assert torch.equal(model.latents_std, torch.tensor(VAE_PRESETS["tiny"].latents_std))
    with torch.no_grad():
        z = model.encode(random_video(1, 16, 16))
        assert z.dtype == torch.float32
        assert model.decode(z).dtype == torch.bfloat16


def test_from_pretrained_round_trip(tiny, tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(tiny.state_dict(), path)
    loaded = WanVAE.from_pretrained(path)
    assert loaded.cfg == tiny.cfg and not loaded.training
    video = random_video(5)
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), tiny.encode(video))


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((3, 5, 32, 32), torch.float32, r"\[B, 3, T, H, W\]"),
        ((1, 4, 5, 32, 32), torch.float32, "3 colour channels"),
        ((1, 3, 8, 32, 32), torch.float32, "valid count: 5 or 9"),
        ((1, 3, 0, 32, 32), torch.float32, "valid count: 1"),
        ((1, 3, 5, 30, 32), torch.float32, "multiples of 8.*24x32"),
        ((1, 3, 5, 32, 32), torch.uint8, "float frames"),
    ],
)
def test_encode_rejects_bad_video(tiny, shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize(
    "shape, match",
    [((16, 2, 4, 4), r"\[B, 16, T, h, w\]"), ((1, 8, 2, 4, 4), "16 channels"), ((1, 16, 0, 4, 4), "empty")],
)
def test_decode_rejects_bad_latents(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny.decode(torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        next(tiny.decode_stream(torch.zeros(shape)))


def test_rejects_bad_tiling(tiny):
    z = torch.zeros(1, 16, 1, 8, 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.decode(z, tile=VAETiling(36, 16))
    with pytest.raises(ValueError, match="VAETiling"):
        tiny.decode(z, tile=256)
    with pytest.raises(ValueError, match="overlap < tile_size"):
        VAETiling(32, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_norm_matches_vector_norm(dtype):
    # the CPU path sums squares; it must agree with the float32 vector norm it replaces, in any input dtype
    x = (torch.randn(3, 16, 5, 6, 7) * 3).to(dtype)
    want = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
    got = channel_norm(x)
    assert got.dtype == torch.float32 and got.shape == (3, 1, 5, 6, 7)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
