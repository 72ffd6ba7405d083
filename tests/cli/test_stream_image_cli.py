"""``openwan stream --image``: a stream of the bundled model that opens on a picture and keeps it as its anchor;
``--anchor``; the refusals, before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openwan.cli.main import main
from openwan.data.video import iter_video_frames
from openwan.pipelines.stream_state import read_state_info

FAST = ["--prompt", "a red circle moving to the right", "--window", "3", "--steps-per-shift", "1"]


def _picture(path, size=(80, 64)):
    """The demo world's kind of picture: a red disc on a blue-grey background."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, 3), np.uint8) + np.array([70, 80, 110], np.uint8)
    image[(x - 30) ** 2 + (y - 32) ** 2 < 12**2] = [220, 30, 30]
    Image.fromarray(image).save(path)
    return path


def test_a_stream_opens_on_the_image_and_keeps_it_as_its_anchor(tmp_path, capsys, one_thread):
    out, state = tmp_path / "out.mp4", tmp_path / "state.safetensors"
    picture = _picture(tmp_path / "start.png")
    assert main(["stream", *FAST, "--image", str(picture), "--duration", "9f", "--save-file", str(out),
                 "--state", str(state)]) == 0
    frames = torch.stack(list(iter_video_frames(out))).float() / 255  # [T, H, W, 3]
    assert frames.shape == (9, 64, 64, 3)
    given = torch.from_numpy(np.array(Image.open(picture).convert("RGB"))).float()[:, 8:72] / 255  # center crop
    assert (frames[0] - given).abs().mean() < 0.06  # the picture, through the VAE and the mp4
    assert (frames[0, 32, 22] - torch.tensor([220, 30, 30]) / 255).abs().max() < 0.2  # the disc, still red
    info = read_state_info(state)
    assert info["config"]["anchor"] is True and info["anchor_prompt"] == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--image", "missing.png"], "does not exist"),
    (["--image", "start.png", "--no-anchor"], "leave --no-anchor out"),
])
def test_image_flags_are_refused_before_the_model_loads(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _picture(tmp_path / "start.png")
    assert main(["stream", *FAST, "--save-file", "x.mp4", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()  # refused before any file is written


def test_an_image_does_not_restart_a_saved_stream(tmp_path, capsys, one_thread):
    state = tmp_path / "state.safetensors"
    assert main(["stream", *FAST, "--duration", "5f", "--save-file", str(tmp_path / "a.mp4"), "--state",
                 str(state)]) == 0
    picture = _picture(tmp_path / "start.png")
    assert main(["stream", "--image", str(picture), "--save-file", str(tmp_path / "a.mp4"), "--state",
                 str(state)]) == 2
    assert "--image starts a new stream" in capsys.readouterr().err
