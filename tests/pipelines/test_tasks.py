"""Every task end to end through `openwan generate` on tiny release folders, and the CLI's handling of bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys

import av
import pytest
import torch

from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.data.video import read_image, save_image, save_video
from openwan.pipelines import WanPipeline
from tiny import tiny_components

FAST = ["--sample-steps", "2", "--size", "32*32"]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return {preset: save_release(root / preset, **tiny_components(preset))
            for preset in ("tiny", "tiny-i2v", "tiny-flf2v")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    g = torch.Generator().manual_seed(0)
    save_image(torch.rand(40, 48, 3, generator=g), root / "first.png")
    save_image(torch.rand(40, 48, 3, generator=g), root / "last.png")
    save_video(torch.rand(9, 32, 32, 3, generator=g), root / "input.mp4", fps=16)
    return root


def _probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(s))
        return frames, s.width, s.height, float(s.average_rate)


def _run(*args) -> int:
    return main(["generate", "--prompt", "a red ball moving left", *args])


def test_t2v(releases, tmp_path, capsys):
    out = tmp_path / "t2v.mp4"
    assert _run("--ckpt-dir", str(releases["tiny"]), "--frame-num", "5", *FAST, "--save-file", str(out)) == 0
    assert _probe(out) == (5, 32, 32, 16.0)
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "denoise" in printed and "decode" in printed


def test_t2i(releases, tmp_path):
    out = tmp_path / "t2i.png"
    assert _run("--task", "t2i", "--ckpt-dir", str(releases["tiny"]), *FAST, "--save-file", str(out)) == 0
    assert read_image(out).shape == (1, 32, 32, 3)


def test_i2v_keeps_aspect_ratio(releases, inputs, tmp_path):
    out = tmp_path / "i2v.mp4"
    code = _run("--task", "i2v", "--ckpt-dir", str(releases["tiny-i2v"]), "--image", str(inputs / "first.png"),
                "--frame-num", "5", "--sample-steps", "2", "--size", "48*32", "--save-file", str(out))
    assert code == 0
    frames, width, height, fps = _probe(out)
    # 48*32 pixels at the image's 48:40 aspect ratio, in multiples of 16, as the reference chooses.
    assert (frames, width, height, fps) == (5, 32, 32, 16.0)


def test_flf2v(releases, inputs, tmp_path):
    out = tmp_path / "flf2v.mp4"
    code = _run("--task", "flf2v", "--ckpt-dir", str(releases["tiny-flf2v"]), "--first-frame",
                str(inputs / "first.png"), "--last-frame", str(inputs / "last.png"), "--frame-num", "9", *FAST,
                "--save-file", str(out))
    assert code == 0 and _probe(out)[0] == 9


def test_v2v(releases, inputs, tmp_path):
    out = tmp_path / "v2v.mp4"
    code = _run("--task", "v2v", "--ckpt-dir", str(releases["tiny"]), "--video", str(inputs / "input.mp4"),
                "--strength", "0.5", "--frame-num", "9", *FAST, "--save-file", str(out))
    assert code == 0 and _probe(out)[:3] == (9, 32, 32)


def test_extend(releases, inputs, tmp_path):
    out = tmp_path / "extend.mp4"
    code = _run("--task", "extend", "--ckpt-dir", str(releases["tiny-i2v"]), "--video", str(inputs / "input.mp4"),
                "--frame-num", "5", *FAST, "--save-file", str(out))
    assert code == 0 and _probe(out)[:3] == (9 + 4, 32, 32)  # the input, then 4 new frames


def test_v2v_strength_one_is_t2v_from_the_same_noise(releases, inputs):
    pipe = WanPipeline.from_pretrained(releases["tiny"], device="cpu")
    video = torch.rand(5, 32, 32, 3)
    noise = torch.randn(16, 2, 4, 4)
    a = pipe("x", size=(32, 32), frame_num=5, sample_steps=3, latents=noise, progress=False)
    b = pipe("x", task="v2v", video=video, strength=1.0, size=(32, 32), frame_num=5, sample_steps=3,
             latents=noise, progress=False)
    # At strength 1 the first sigma (0.999) keeps 0.1% of the input: close to, not equal to, t2v.
    assert (a.latents - b.latents).abs().max() < 0.05 * a.latents.abs().max()


def test_block_streaming_equals_resident(releases):
    noise = torch.randn(16, 2, 4, 4)
    plain = WanPipeline.from_pretrained(releases["tiny"], device="cpu")
    streamed = WanPipeline.from_pretrained(releases["tiny"], device="cpu", stream_blocks=True)
    a = plain("a cat", size=(32, 32), frame_num=5, sample_steps=2, latents=noise, progress=False)
    b = streamed("a cat", size=(32, 32), frame_num=5, sample_steps=2, latents=noise, progress=False)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.video, b.video)
    streamer = streamed._streamers[0]
    assert streamer.max_resident == 2  # the running block and the prefetched next one, never more
    assert all(p.data_ptr() == streamer._storage[i][n].data_ptr()  # after the run every block is back home
               for i, block in enumerate(streamed.dit.blocks) for n, p in block.named_parameters())


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("preset", "args", "message"),
    [
        ("tiny", ["--frame-num", "6"], "nearest valid counts are 5 and 9"),
        ("tiny", ["--size", "30*32"], "multiples of 16"),
        ("tiny", ["--size", "big"], "WIDTH*HEIGHT"),
        ("tiny", ["--task", "i2v"], "needs --image"),
        ("tiny", ["--task", "flf2v", "--first-frame", "x.png"], "--last-frame"),
        ("tiny-i2v", ["--task", "i2v", "--image", "/nonexistent/img.png"], "does not exist"),
        ("tiny", ["--task", "v2v", "--video", "/nonexistent/v.mp4", "--strength", "0.5"], "does not exist"),
        ("tiny", ["--task", "v2v", "--strength", "0.5"], "needs --video"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(releases, tmp_path, capsys, preset, args, message):
    out = tmp_path / "never.mp4"
    code = _run("--ckpt-dir", str(releases[preset]), "--sample-steps", "1", *args, "--save-file", str(out))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_i2v_with_a_t2v_model(releases, inputs, tmp_path, capsys):
    code = _run("--task", "i2v", "--ckpt-dir", str(releases["tiny"]), "--image", str(inputs / "first.png"),
                *FAST, "--save-file", str(tmp_path / "x.mp4"))
    assert code == 2 and "--task i2v needs an image-to-video release" in capsys.readouterr().err


def test_extend_with_the_bundled_model_names_its_task(tmp_path, capsys):
    """The bundled model is text-to-video: extend is refused before loading, naming extend (not the i2v it runs)."""
    video = tmp_path / "in.mp4"
    save_video(torch.rand(5, 32, 32, 3), video, fps=16)
    code = _run("--task", "extend", "--video", str(video), "--prompt", "a red circle", "--save-file",
                str(tmp_path / "x.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and "--task extend needs an image-to-video release" in err and "bundled demo model" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_pipeline_extend_with_a_t2v_model_names_extend(releases):
    pipe = WanPipeline.from_pretrained(releases["tiny"])
    with pytest.raises(ValueError, match="task extend needs an image-to-video model"):
        pipe("a cat", task="extend", video=torch.rand(5, 32, 32, 3), size=(32, 32), frame_num=5, sample_steps=1,
             progress=False)


def test_unreadable_image(releases, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code = _run("--task", "i2v", "--ckpt-dir", str(releases["tiny-i2v"]), "--image", str(bad), *FAST,
                "--save-file", str(tmp_path / "x.mp4"))
    assert code == 2 and "not a readable image" in capsys.readouterr().err


def test_missing_checkpoint_file_names_it(releases, tmp_path, capsys):
    broken = tmp_path / "release"
    shutil.copytree(releases["tiny"], broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    code = _run("--ckpt-dir", str(broken), *FAST, "--frame-num", "5", "--save-file", str(tmp_path / "x.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and "Wan2.1_VAE.pth" in err and "release folder holds" in err
    assert not (tmp_path / "x.mp4").exists()


def test_unwritable_output_is_refused_before_loading(releases, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = _run("--ckpt-dir", str(tmp_path / "does-not-matter"), "--save-file", str(blocker / "out.mp4"))
    assert code == 2 and "cannot write" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(releases, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "openwan", "generate", "--prompt", "x", "--ckpt-dir",
                           str(releases["tiny"]), "--frame-num", "8", "--save-file", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("openwan generate: error: frame_num must be 4n+1")
    assert "Traceback" not in proc.stderr


def test_a_two_expert_release_switches_experts_at_its_boundary(tmp_path):
    """save_release(dit_low=, boundary=) writes the Wan2.2 A14B layout; the pipeline loads both experts and the
    boundary, and runs the high-noise expert for exactly the timesteps t >= boundary·1000 of the schedule."""
    from openwan.diffusion.schedule import sampling_sigmas, timesteps_from_sigmas
    from openwan.pipelines.components import holds_dit

    parts = tiny_components("tiny")
    low = tiny_components("tiny", seed=1)["dit"]
    root = save_release(tmp_path / "moe", **parts, dit_low=low, boundary=0.7)
    assert (root / "high_noise_model" / "config.json").is_file() and not (root / "config.json").exists()
    assert holds_dit(root) and holds_dit(root / "high_noise_model") and not holds_dit(tmp_path)
    pipe = WanPipeline.from_pretrained(root, device="cpu")
    assert pipe.boundary == 0.7 and pipe.dit_low is not None
    torch.testing.assert_close(pipe.dit_low.state_dict(), low.state_dict())
    seen = {"high": [], "low": []}
    for name, model in (("high", pipe.dit), ("low", pipe.dit_low)):
        model.register_forward_hook(lambda m, args, out, name=name: seen[name].append(float(args[1][0])))
    pipe("a red ball moving left", size=(32, 32), frame_num=5, sample_steps=6, sample_shift=3.0, progress=False)
    ts = [float(t) for t in timesteps_from_sigmas(sampling_sigmas(6, 3.0))[:-1]]
    assert sorted(set(seen["high"])) == sorted(t for t in ts if t >= 700)
    assert sorted(set(seen["low"])) == sorted(t for t in ts if t < 700) and seen["low"]
    with pytest.raises(ValueError, match="both dit_low and boundary"):
        save_release(tmp_path / "bad", **parts, dit_low=low)
