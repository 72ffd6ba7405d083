"""Task vace in WanPipeline: the VACE context against diffusers' WanVACEPipeline preprocessing (an independent
implementation) on the same tiny VAE, the mask fold against a plain loop, reference frames dropped, scale 0 equal to
text-to-video from the same noise, and bad inputs refused before compute."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLWan, WanVACEPipeline

from openwan.checkpoints import keymaps
from openwan.configs import VACE_PRESETS
from openwan.models.vace import WanVaceDiT
from openwan.pipelines import WanPipeline, vace
from tiny import randomize, tiny_components

STRIDE = (4, 8, 8)


@pytest.fixture(scope="module")
def pipe(one_thread):
    parts = tiny_components()
    parts["dit"] = randomize(WanVaceDiT(VACE_PRESETS["tiny-vace"]), std=0.05)
    return WanPipeline(**parts)


@pytest.fixture(scope="module")
def sources():
    g = torch.Generator().manual_seed(3)
    video = torch.rand(9, 32, 48, 3, generator=g)
    mask = torch.zeros(9, 32, 48)
    mask[:, 8:24, 16:40] = 1.0
    mask[4:, :, :8] = 0.7  # above 0.5: generated, and folded with its value
    return {"src_video": video, "src_mask": mask, "src_ref_images": [torch.rand(20, 48, 3, generator=g)]}


def test_mask_fold_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    t, h, w = 9, 16, 24
    mask = torch.rand(t, h, w, generator=g)
    folded = vace.fold_mask(mask, STRIDE)
    frames = (t - 1) // 4 + 1
    assert folded.shape == (64, frames, h // 8, w // 8)
    for f in range(frames):
        src = min(int((f + 0.5) * t / frames), t - 1)  # nearest-exact: the source frame under the centre
        for i in range(8):
            for j in range(8):
                assert torch.equal(folded[i * 8 + j, f], mask[src, i::8, j::8])


def test_context_matches_diffusers_preprocessing(pipe, sources):
    vae = pipe.vae
    theirs_vae = AutoencoderKLWan(**{k: v for k, v in keymaps.vae_config_to_diffusers(vae.cfg).items()
                                     if not k.startswith("_")}).eval()
    theirs_vae.load_state_dict(keymaps.vae_official_to_diffusers(vae.state_dict(), vae.cfg))
    ns = SimpleNamespace(vae=theirs_vae, vae_scale_factor_temporal=4, vae_scale_factor_spatial=8,
                         transformer=SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2))), transformer_2=None)
    video, mask, ref = sources["src_video"], sources["src_mask"], sources["src_ref_images"][0]
    c = vace.conditioning(vae, STRIDE, 9, 48, 32, video, mask, [ref], 0.8, "cpu")
    assert c.prefix_frames == 1 and c.vace_scale == 0.8
    assert c.vace_context.shape == (1, 96, 1 + 3, 4, 6)

    pixels = video.permute(3, 0, 1, 2)[None] * 2 - 1  # [1, 3, T, H, W] in [-1, 1]
    canvas = vace.fit_on_canvas(ref[None], 48, 32)[0].permute(2, 0, 1) * 2 - 1  # [3, H, W]
    with torch.no_grad():
        latents = WanVACEPipeline.prepare_video_latents(ns, pixels, mask[None, None], [[canvas]], None, "cpu")
    masks = WanVACEPipeline.prepare_masks(ns, mask[None, None], [[canvas]], None)
    ref_ctx = torch.cat([latents, masks], dim=1)
    rel = (c.vace_context - ref_ctx).abs().max() / ref_ctx.abs().max()
    assert rel < 1e-4, f"max rel diff {rel:.2e}"
    assert torch.count_nonzero(c.vace_context[:, 16:, 0]) == 0  # the reference: no reactive part, no mask


def test_reference_images_fit_on_white():
    image = torch.zeros(1, 20, 48, 3)  # wider than the 48x32 canvas's aspect: bands above and below
    out = vace.fit_on_canvas(image, 48, 32)
    assert out.shape == (1, 32, 48, 3)
    assert torch.equal(out[:, 6:26], torch.zeros(1, 20, 48, 3)) and bool((out[:, :6] == 1).all())


def test_outputs_drop_reference_frames_and_scale_zero_is_t2v(pipe, sources):
    common = {"size": (48, 32), "frame_num": 9, "sample_steps": 2, "seed": 5, "progress": False}
    out = pipe("a red ball", task="vace", **sources, **common)
    assert out.video.shape == (9, 32, 48, 3) and out.latents.shape == (16, 3, 4, 6)
    no_refs = {k: v for k, v in sources.items() if k != "src_ref_images"}
    t2v = pipe("a red ball", task="t2v", **common)
    zero = pipe("a red ball", task="vace", vace_context_scale=0.0, **no_refs, **common)
    torch.testing.assert_close(zero.latents, t2v.latents, rtol=0, atol=1e-6)
    steered = pipe("a red ball", task="vace", **no_refs, **common)
    assert (steered.latents - t2v.latents).abs().max() > 1e-3  # the context steers the video


def test_block_streaming_streams_the_context_blocks_too(sources):
    """stream_blocks keeps the VACE context blocks off the device as well as the base blocks, numbers unchanged."""
    common = {"size": (48, 32), "frame_num": 9, "sample_steps": 2, "seed": 5, "progress": False}
    parts = tiny_components()
    parts["dit"] = randomize(WanVaceDiT(VACE_PRESETS["tiny-vace"]), std=0.05)
    plain = WanPipeline(**parts)("a red ball", task="vace", **sources, **common)
    streamed_pipe = WanPipeline(**parts, stream_blocks=True)
    streamer = streamed_pipe._streamers[0]
    dit = streamed_pipe.dit
    assert len(streamer.blocks) == len(dit.vace_blocks) + len(dit.blocks)
    streamed = streamed_pipe("a red ball", task="vace", **sources, **common)
    assert torch.equal(plain.latents, streamed.latents)
    assert streamer.max_resident == 2  # the running block and the prefetched next one, never more
    for i, block in enumerate(streamer.blocks):  # after the run every block is back home
        assert all(p.data_ptr() == streamer._storage[i][n].data_ptr() for n, p in block.named_parameters())


@pytest.mark.parametrize("change, message", [
    ({"src_video": torch.rand(8, 32, 48, 3)}, "takes 4n+1 frames"),
    ({"src_mask": torch.zeros(5, 32, 48)}, "one mask frame per video frame"),
    ({"src_mask": torch.zeros(9, 32, 40)}, "a mask of the video's size"),
    ({"src_mask": torch.full((9, 32, 48), 1.5)}, "must lie in [0, 1]"),
    ({"src_ref_images": [torch.rand(8, 8, 3)] * 9}, "too many"),
    ({"vace_context_scale": float("inf")}, "finite number"),
    ({"frame_num": 5}, "leave frame_num out"),
    ({"src_video": None}, "src_mask needs src_video"),
])
def test_bad_inputs_are_refused_before_compute(pipe, sources, change, message):
    calls = []  # the text encoder runs first once the inputs are accepted
    handle = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=re.escape(message)):
            pipe("x", task="vace", **{**sources, **change}, sample_steps=1, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_vace_inputs_need_the_task_and_the_model(pipe, sources):
    with pytest.raises(ValueError, match="task t2v takes no src_video"):
        pipe("x", task="t2v", src_video=sources["src_video"], sample_steps=1, progress=False)
    plain = WanPipeline(**tiny_components())
    with pytest.raises(ValueError, match="needs a Wan2.1-VACE model"):
        plain("x", task="vace", size=(48, 32), frame_num=5, sample_steps=1, progress=False)
