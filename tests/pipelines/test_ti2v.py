"""Task ti2v (Wan2.2 TI2V) on a tiny random TI2V DiT with the tiny Wan2.2 VAE: image-to-video against diffusers'
Wan2.2 image-to-video pipeline (expand_timesteps), the first frame kept, uniform per-token t equal to the plain loop,
the batched, unbatched and cached paths with per-token t, the reference's output size rule."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanImageToVideoPipeline

from openwan.configs import DIT_PRESETS
from openwan.data.video import resize_crop
from openwan.diffusion import sampling_sigmas
from openwan.pipelines import WanPipeline
from openwan.pipelines import conditioning as cond
from openwan.pipelines.defaults import defaults_for
from openwan.pipelines.ti2v import best_output_size
from tiny import diffusers_parts, tiny_components

STEPS, SHIFT, GUIDE = 4, 3.0, 4.0
SIZE = (64, 64)  # (width, height): 4x4 latents of the 16x Wan2.2 VAE, 2x2 tokens of patch 2


@pytest.fixture(scope="module")
def parts():
    return tiny_components("tiny-ti2v")


@pytest.fixture(scope="module")
def pipe(parts):
    return WanPipeline(**parts)


@pytest.fixture(scope="module")
def image():
    return torch.rand(*SIZE[::-1], 3, generator=torch.Generator().manual_seed(3))  # already at the output size


def _noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def _run(pipe, image=None, seed=1, **kw):
    args = dict(task="ti2v", size=SIZE, frame_num=5, sample_steps=STEPS, sample_shift=SHIFT, guide_scale=GUIDE,
                latents=_noise(seed), progress=False)
    return pipe("a blue square drifts up", "blurry", image=image, **{**args, **kw})


def _image_latent(pipe, image) -> torch.Tensor:
    """[48, 1, 4, 4]: the image alone through the VAE, as the first latent frame must hold it."""
    pixels = resize_crop(image[None], SIZE).permute(3, 0, 1, 2)[None] * 2 - 1  # [1, 3, 1, H, W]
    return pipe.vae.encode(pixels)[0]


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_image_to_video_matches_diffusers(parts, pipe, image):
    dit = parts["dit"]
    transformer, dvae, scheduler = diffusers_parts(parts, STEPS, SHIFT)
    theirs = WanImageToVideoPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                     transformer=transformer.eval(), vae=dvae.eval(), scheduler=scheduler,
                                     image_encoder=None, image_processor=None, expand_timesteps=True)
    # diffusers holds the image latent in the model input only and writes it into the result at the end; the
    # reference (and openwan) put it back into the sample after every step. Every other latent sees the same inputs
    # through an elementwise solver, so the two agree.
    latents = theirs(image=image.permute(2, 0, 1)[None], prompt="a blue square drifts up", negative_prompt="blurry",
                     height=SIZE[1], width=SIZE[0], num_frames=5, num_inference_steps=STEPS, guidance_scale=GUIDE,
                     latents=_noise()[None].clone(), output_type="latent",
                     max_sequence_length=dit.cfg.text_len).frames[0]
    ours = _run(pipe, image, return_video=False).latents
    diff = _rel(ours, latents)
    print(f"ti2v i2v: latents max rel diff {diff:.2e}")
    assert ours.shape == latents.shape == (48, 2, 4, 4)
    assert diff <= 1e-4
    # The comparison can fail: the same noise and prompts without the clean first frame (one t for every token,
    # the first frame denoised too) end more than ten times the bound away on the other frames.
    with torch.no_grad():
        free = pipe.denoise(_noise()[None], pipe.encode_text(["a blue square drifts up", "blurry"]),
                            cond.Conditioning(), _sigmas(), "unipc", GUIDE, True, progress=False)
    assert _rel(free[0, :, 1:], latents[:, 1:]) > 1e-3


def _sigmas():
    return sampling_sigmas(STEPS, SHIFT, kind="unipc")


def test_first_frame_is_the_image(pipe, image):
    out = _run(pipe, image)
    z = _image_latent(pipe, image)
    assert torch.equal(out.latents[:, :1], z)  # exactly the image's latent, not approximately
    assert out.video.shape == (5, SIZE[1], SIZE[0], 3)
    round_trip = pipe.decode(z[None])[0]  # the image through the VAE and back
    assert (out.video[0] - round_trip).abs().max() <= 1e-5
    # Without the image (text-to-video from the same noise) the first frame is elsewhere.
    free = _run(pipe, None)
    assert (free.video[0] - round_trip).abs().max() > 0.05


def test_uniform_per_token_t_equals_the_plain_loop(pipe):
    with torch.no_grad():
        context = pipe.encode_text(["a cat", "blurry"])
    x = _noise(5)[None]
    nothing_clean = cond.Conditioning(clean_latents=torch.zeros_like(x), clean_mask=torch.zeros(1, 1, 2, 4, 4,
                                                                                                  dtype=torch.bool))
    assert nothing_clean.timesteps(torch.tensor(999.0), (1, 2, 2)).shape == (1, 8)  # per token: [1, L]
    with torch.no_grad():
        plain = pipe.denoise(x, context, cond.Conditioning(), _sigmas(), "unipc", GUIDE, True, progress=False)
        per_token = pipe.denoise(x, context, nothing_clean, _sigmas(), "unipc", GUIDE, True, progress=False)
    # The same maths; the DiT's modulation then runs on [B, L, D] rows instead of one broadcast [B, 1, D] row, and
    # oneDNN may sum those shapes in another order (~1e-6 on latents of order 1).
    torch.testing.assert_close(per_token, plain, rtol=1e-5, atol=1e-5)
    # ti2v without an image is text-to-video: the same numbers as task t2v from the same noise.
    assert torch.equal(_run(pipe, None, return_video=False).latents,
                       _run(pipe, None, task="t2v", return_video=False).latents)


def test_batched_unbatched_and_cached_runs_with_per_token_t(pipe, image):
    batched = _run(pipe, image, return_video=False, sample_steps=8).latents
    unbatched = _run(pipe, image, return_video=False, sample_steps=8, cfg_batch=False).latents
    torch.testing.assert_close(batched, unbatched, rtol=1e-5, atol=1e-5)
    cached = _run(pipe, image, return_video=False, sample_steps=8, cache="fast")
    assert cached.cache["dit_evaluations"] < cached.cache["uncached_dit_evaluations"]
    assert torch.equal(cached.latents[:, :1], batched[:, :1])  # the image stays
    other_seed = _run(pipe, image, return_video=False, sample_steps=8, seed=7).latents
    assert _rel(cached.latents, batched) < 0.5 * _rel(other_seed, batched)


def test_output_size_follows_the_image():
    # The reference's rule: about the asked-for area, multiples of 32, the image's aspect ratio.
    assert best_output_size((1280, 704), 1280 * 704, (32, 32)) == (1280, 704)
    assert best_output_size((704, 1280), 1280 * 704, (32, 32)) == (704, 1280)
    assert best_output_size((1000, 1000), 1280 * 704, (32, 32)) == (960, 928)
    assert best_output_size((4000, 3000), 1280 * 704, (32, 32)) == (1088, 800)
    with pytest.raises(ValueError, match="too small"):
        best_output_size((1000, 10), 64 * 64, (32, 32))


def test_a_portrait_image_gives_a_portrait_video(pipe):
    portrait = torch.rand(96, 64, 3)
    out = pipe("a cat", task="ti2v", image=portrait, size=(96, 64), frame_num=5, sample_steps=1, progress=False)
    assert out.video.shape == (5, 96, 64, 3) and out.latents.shape == (48, 2, 6, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (48, 48)}, "multiples of 32"),
        ({"frame_num": 6}, "nearest valid counts are 5 and 9"),
        ({"task": "i2v"}, "use task ti2v"),
    ],
)
def test_bad_input_is_refused(pipe, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("a cat", **{"task": "ti2v", "image": image, "size": SIZE, "frame_num": 5, "sample_steps": 1,
                         "progress": False, **kwargs})


def test_ti2v_needs_a_ti2v_model():
    with pytest.raises(ValueError, match="needs a Wan2.2 TI2V model"):
        WanPipeline(**tiny_components("tiny"))("a cat", task="ti2v", size=(32, 32), frame_num=5, progress=False)


def test_ti2v_5b_samples_with_the_reference_defaults():
    d = defaults_for(DIT_PRESETS["ti2v-5B"])
    assert (d.sample_steps, d.sample_shift, d.guide_scale, d.frame_num, d.fps) == (50, 5.0, 5.0, 121, 24)
    assert d.size == (1280, 704) and set(d.sizes) == {(1280, 704), (704, 1280)}
