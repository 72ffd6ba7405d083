"""`openwan generate --task vace` on a tiny random Wan2.1-VACE release folder: reference-to-video, a control video,
a masked edit, an official-layout release converted to diffusers' layout, and bad input refused with exit 2."""

from __future__ import annotations

import av
import pytest
import torch
from diffusers import WanVACEPipeline
from safetensors.torch import load_file

from openwan.checkpoints.convert import convert_release
from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.configs import VACE_PRESETS
from openwan.data.video import save_image, save_video
from openwan.models.vace import WanVaceDiT
from tiny import randomize, tiny_components

FAST = ["--sample-steps", "2", "--size", "32*32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("vace")
    parts = tiny_components()
    parts["dit"] = randomize(WanVaceDiT(VACE_PRESETS["tiny-vace"]), std=0.05)
    g = torch.Generator().manual_seed(0)
    save_video(torch.rand(9, 32, 32, 3, generator=g), root / "control.mp4", fps=16)
    mask = torch.zeros(9, 32, 32, 3)
    mask[:, 8:24, 8:24] = 1.0
    save_video(mask, root / "mask.mp4", fps=16)
    save_video(torch.rand(9, 32, 48, 3, generator=g), root / "wide.mp4", fps=16)
    save_image(torch.rand(40, 24, 3, generator=g), root / "ref1.png")
    save_image(torch.rand(24, 40, 3, generator=g), root / "ref2.png")
    plain = save_release(root / "plain", **tiny_components())  # a text-to-video release, no VACE blocks
    return {"release": save_release(root / "release", **parts), "plain": plain, "dir": root}


def _probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(s)), s.width, s.height


def _run(files, *args) -> int:
    return main(["generate", "--prompt", "a red ball moving left", "--ckpt-dir", str(files["release"]), *args])


def test_reference_to_video_drops_the_reference_frames(files, tmp_path):
    out, latents = tmp_path / "r2v.mp4", tmp_path / "r2v.safetensors"
    d = files["dir"]
    assert _run(files, "--task", "vace-1.3B", "--src-ref-images", f"{d / 'ref1.png'},{d / 'ref2.png'}", *FAST,
                "--frame-num", "5", "--save-file", str(out), "--save-latents", str(latents)) == 0
    assert _probe(out) == (5, 32, 32)
    assert load_file(latents)["latents"].shape == (16, 2, 4, 4)  # 5 frames -> 2 latent frames, references gone


def test_control_video_and_masked_edit(files, tmp_path):
    d = files["dir"]
    control, edit = tmp_path / "control.mp4", tmp_path / "edit.mp4"
    assert _run(files, "--task", "vace", "--src-video", str(d / "control.mp4"), *FAST, "--frame-num", "9",
                "--save-file", str(control)) == 0
    assert _probe(control) == (9, 32, 32)
    assert _run(files, "--task", "vace-14B", "--src-video", str(d / "control.mp4"), "--src-mask", str(d / "mask.mp4"),
                "--src-ref-images", str(d / "ref1.png"), *FAST, "--frame-num", "9", "--save-file", str(edit)) == 0
    assert _probe(edit) == (9, 32, 32)


def test_a_diffusers_layout_release(files, tmp_path):
    converted = convert_release(files["release"], tmp_path / "diffusers", "diffusers", flow_shift=16.0)
    theirs = WanVACEPipeline.from_pretrained(str(converted)).transformer  # diffusers reads the converted folder
    ours = WanVaceDiT.from_pretrained(files["release"])
    g = torch.Generator().manual_seed(1)
    x, vace_context, context = (torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 96, 2, 4, 4, generator=g),
                                torch.randn(1, 32, 32, generator=g))
    with torch.no_grad():
        ref = theirs(x, torch.tensor([500.0]), context, control_hidden_states=vace_context, return_dict=False)[0]
        out = ours(x, torch.tensor([500.0]), context, vace_context=vace_context)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4
    out = tmp_path / "out.mp4"
    assert main(["generate", "--prompt", "x", "--ckpt-dir", str(converted), "--task", "vace", "--src-ref-images",
                 str(files["dir"] / "ref1.png"), *FAST, "--frame-num", "5", "--save-file", str(out)]) == 0
    assert _probe(out) == (5, 32, 32)


@pytest.mark.parametrize("args, message", [
    (["--task", "vace", "--src-video", "{d}/control.mp4", "--src-mask", "{d}/wide.mp4"],
     "--src-mask is 48x32 but --src-video 32x32"),
    (["--task", "vace", "--src-video", "{d}/control.mp4", "--frame-num", "6"], "nearest valid counts are 5 and 9"),
    (["--task", "vace", "--src-video", "{d}/control.mp4", "--frame-num", "13"], "has 9 frames"),
    (["--task", "vace", "--src-ref-images", ",".join(["{d}/ref1.png"] * 9)], "give at most 8"),
    (["--task", "vace", "--src-mask", "{d}/mask.mp4"], "--src-mask needs --src-video"),
    (["--task", "t2v", "--src-video", "{d}/control.mp4"], "go with --task vace"),
    (["--task", "vace", "--vace-context-scale", "nan"], "finite number"),
    (["--task", "vace", "--ckpt-dir", "{plain}"], "needs a Wan2.1-VACE release"),
])
def test_bad_input_exits_2_with_one_sentence(files, tmp_path, capsys, args, message):
    out = tmp_path / "never.mp4"
    args = [a.format(d=files["dir"], plain=files["plain"]) for a in args]
    code = _run(files, "--sample-steps", "1", "--size", "32*32", *args, "--save-file", str(out))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
