"""``decode_sigma``: the sampler stops at the first schedule level sigma_k <= S and the latent there is decoded (for a
VAE decoder trained with train-vae --decode-noise). Shown against the plain run's own intermediate latents, recorded
by a spy around the real solver."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

import openwan.pipelines.wan as wan
from curate.footage import footage
from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.data.video import read_video
from openwan.diffusion import make_solver, sampling_sigmas
from openwan.models.vae import WanVAE
from openwan.pipelines import WanPipeline
from openwan.pipelines.conditioning import Conditioning
from tiny import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, SHIFT, SIZE, FRAMES = 6, 3.0, (32, 32), 5
SIGMAS = sampling_sigmas(STEPS, SHIFT)  # the unipc grid: 7 levels, the last 0
RUN = dict(size=SIZE, frame_num=FRAMES, sample_steps=STEPS, sample_shift=SHIFT, seed=3, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return WanPipeline(**tiny_components("tiny"))


class SolverSpy:
    """Wraps the pipeline's real ``make_solver``: records each grid it is given and x after every real step."""

    def __init__(self, monkeypatch):
        self.grids: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []  # after[i]: x at sigmas[i + 1]
        monkeypatch.setattr(wan, "make_solver", self._make)

    def _make(self, name, sigmas):
        solver = make_solver(name, sigmas)
        self.grids.append(sigmas.clone())
        real_step = solver.step

        def step(v, x, i):
            out = real_step(v, x, i)
            self.after.append(out.clone())
            return out

        solver.step = step
        return solver


class ForwardCount:
    def __init__(self, model):
        self.n = 0
        self._handle = model.register_forward_hook(self._count)

    def _count(self, *_):
        self.n += 1

    def close(self):
        self._handle.remove()


def _decoded(vae, latents: torch.Tensor) -> torch.Tensor:
    """vae.decode of [C, F, h, w] latents as the pipeline returns videos: [T, H, W, 3] in [0, 1]."""
    with torch.no_grad():
        video = vae.decode(latents[None].to(next(vae.parameters()).dtype))
    return video[0].float().add(1).div(2).clamp(0, 1).permute(1, 2, 3, 0)


def _plain_loop(pipe, prompt: str, noise: torch.Tensor, guide: float) -> torch.Tensor:
    """An independent full run: the DiT on each branch, CFG combined, the real solver over the whole grid."""
    d = pipe.defaults.for_task("t2v")
    cond, uncond = pipe.encode_text([prompt, d.negative_prompt]).chunk(2)
    solver = make_solver("unipc", SIGMAS)
    x = noise[None]
    with torch.no_grad():
        for i, t in enumerate((SIGMAS[:-1] * 1000).to(torch.int64)):
            tt = t.reshape(1).float()
            v_c, v_u = (pipe.dit(x, tt, ctx).float() for ctx in (cond, uncond))
            x = solver.step(v_u + guide * (v_c - v_u), x, i)
    return x[0]


def test_without_decode_sigma_the_run_is_the_plain_loop(pipe):
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = pipe("a red ball", latents=noise, cfg_batch=False, guide_scale=4.0, decode_sigma=None, **RUN)
    assert torch.equal(out.latents, _plain_loop(pipe, "a red ball", noise, 4.0))
    assert out.steps_run == STEPS and out.latents_sigma == 0.0
    again = pipe("a red ball", latents=noise, cfg_batch=False, guide_scale=4.0, **RUN)
    assert torch.equal(again.latents, out.latents) and torch.equal(again.video, out.video)


@pytest.mark.parametrize("k, between", [(3, True), (2, False)])
def test_stops_at_the_first_level_at_or_below_it_on_the_full_runs_path(pipe, monkeypatch, k, between):
    """S between sigma_{k-1} and sigma_k, or S exactly sigma_k: k steps, the full run's latent after k steps."""
    s = float(SIGMAS[k] + SIGMAS[k - 1]) / 2 if between else float(SIGMAS[k])
    spy = SolverSpy(monkeypatch)
    full = pipe("a red ball", return_video=False, **RUN)
    calls = ForwardCount(pipe.dit)
    try:
        out = pipe("a red ball", decode_sigma=s, **RUN)
    finally:
        calls.close()
    assert calls.n == k  # one batched CFG evaluation per step that ran, none after sigma_k
    assert out.steps_run == k and out.latents_sigma == float(SIGMAS[k])
    assert torch.equal(spy.grids[1], spy.grids[0])  # the solver got the ordinary grid, not a cut one
    assert len(spy.after) == STEPS + k
    assert torch.equal(out.latents, spy.after[k - 1][0])  # the plain run's latent after exactly k steps
    assert not torch.allclose(out.latents, full.latents, atol=1e-3)
    torch.testing.assert_close(out.video, _decoded(pipe.vae, spy.after[k - 1][0]), rtol=0, atol=1e-5)


def test_a_cut_grid_would_end_elsewhere(pipe):
    """Why the loop stops instead of the grid being cut: UniPC's order drops on a grid's last step."""
    k = 3
    s = float(SIGMAS[k])
    out = pipe("a red ball", decode_sigma=s, return_video=False, **RUN)
    noise = torch.randn((16, 2, 4, 4), generator=torch.Generator("cpu").manual_seed(RUN["seed"]))
    d = pipe.defaults.for_task("t2v")
    context = pipe.encode_text(["a red ball", d.negative_prompt])
    cut = pipe.denoise(noise[None], context, Conditioning(), SIGMAS[:k + 1], "unipc", d.guide_scale, True,
                       progress=False)
    assert (cut[0] - out.latents).abs().max() > 1e-4


def test_below_every_level_it_runs_to_the_end_and_warns(pipe, caplog):
    full = pipe("a red ball", return_video=False, **RUN)
    with caplog.at_level(logging.WARNING, logger="openwan.pipelines.decode_sigma"):
        out = pipe("a red ball", decode_sigma=float(SIGMAS[-2]) / 2, return_video=False, **RUN)
    assert out.steps_run == STEPS and out.latents_sigma == 0.0 and torch.equal(out.latents, full.latents)
    assert "runs every step" in caplog.text


def test_the_cache_is_sized_by_the_steps_that_run(pipe):
    out = pipe("a red ball", decode_sigma=float(SIGMAS[4]), cache="safe", return_video=False, **RUN)
    assert out.steps_run == 4 and out.cache["uncached_dit_evaluations"] == 2 * 4  # two CFG branches per step
    calls = ForwardCount(pipe.dit)
    try:
        with pytest.raises(ValueError, match=r"decode_sigma 0\.97 stops the run after 1 of its 6 steps"):
            pipe("a red ball", decode_sigma=0.97, cache="fast", **RUN)  # fast's CFG cache needs a late phase
    finally:
        calls.close()
    assert calls.n == 0


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.5", [0.5]])
def test_bad_values_are_refused_before_any_compute(pipe, bad):
    calls = ForwardCount(pipe.dit)
    try:
        with pytest.raises(ValueError, match="decode_sigma must be a number strictly between 0 and 1"):
            pipe("a red ball", decode_sigma=bad, **RUN)
    finally:
        calls.close()
    assert calls.n == 0


def test_extend_decodes_its_new_segment_from_the_stopped_latent():
    pipe = WanPipeline(**tiny_components("tiny-i2v"))
    clip = torch.from_numpy(footage("carphone", 0, 5, size=SIZE)).float() / 255
    args = dict(RUN, sample_steps=2)
    s = float(sampling_sigmas(2, SHIFT)[1])
    ext = pipe("a man talking", task="extend", video=clip, decode_sigma=s, **args)
    seg = pipe("a man talking", task="i2v", image=clip[-1], decode_sigma=s, return_video=False, **args)
    assert ext.steps_run == seg.steps_run == 1 and ext.latents_sigma == s
    assert torch.equal(ext.latents, seg.latents)
    assert ext.video.shape[0] == 5 + FRAMES - 1


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_release(tmp_path_factory.mktemp("rel") / "tiny", **tiny_components("tiny"))


CLI = ["--prompt", "a red ball", "--frame-num", str(FRAMES), "--size", "32*32", "--sample-steps", str(STEPS),
       "--sample-shift", str(SHIFT), "--base-seed", "3"]


def test_cli_flag_reaches_the_pipeline(release, tmp_path, capsys):
    s = float(SIGMAS[3])
    video, latents = tmp_path / "out.mp4", tmp_path / "out.safetensors"
    code = main(["generate", "--ckpt-dir", str(release), *CLI, "--decode-sigma", repr(s), "--save-file", str(video),
                 "--save-latents", str(latents)])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"the sampler ran 3 steps and stopped at sigma {s:.4g}" in printed
    want = WanPipeline.from_pretrained(release, device="cpu")("a red ball", decode_sigma=s, return_video=False, **RUN)
    assert torch.equal(load_file(latents)["latents"], want.latents)
    assert len(read_video(video)) == FRAMES


@pytest.mark.parametrize("bad", ["1", "0", "-0.2", "nan"])
def test_cli_bad_value_exits_2_with_the_sentence(release, tmp_path, capsys, bad):
    code = main(["generate", "--ckpt-dir", str(release), *CLI, "--decode-sigma", bad, "--save-file",
                 str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "--decode-sigma must be a number strictly between 0 and 1" in err
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists()


def test_warns_when_the_decoder_was_not_trained_that_noisy(pipe, caplog):
    """VAEConfig.decode_noise (written by train-vae --decode-noise) against the level the latent is handed over at."""
    stopped = pipe("a red ball", decode_sigma=0.5, return_video=False, **RUN).latents_sigma
    assert 0 < stopped <= 0.5

    def warnings(vae_noise, **run):
        vae = WanVAE.from_state(pipe.vae.cfg.replace(decode_noise=vae_noise), pipe.vae.state_dict())
        recorded = WanPipeline(dit=pipe.dit, vae=vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="openwan.pipelines.wan"):
            recorded("a red ball", **{"decode_sigma": 0.5, **run}, **RUN)
        return caplog.text

    assert "trained on clean latents only" in warnings(None) and f"sigma {stopped:.4g}" in warnings(None)
    assert "up to 0.1 (decode_noise)" in warnings((0.0, 0.1))
    assert warnings((0.0, 0.6)) == ""  # the decoder was trained that noisy
    assert warnings(None, return_video=False) == ""  # nothing is decoded
    assert warnings(None, decode_sigma=None) == ""  # a full run hands over a clean latent
