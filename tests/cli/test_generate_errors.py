"""`openwan generate` refuses bad input before any model is loaded, and leaves no file behind when stopped.

The release used here holds the bundled model's configs but no weights: whatever reaches the loader fails there
naming the missing weights, so every refusal below is shown to come from the checks that run before loading.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from openwan.cli.main import main
from openwan.data.video import save_video
from openwan.pipelines import conditioning as cond
from openwan.pipelines.components import BUNDLED

LOADER = "holds no DiT weights"  # what the loader says of a release without weights


@pytest.fixture(scope="module")
def configs_only(tmp_path_factory):
    """The bundled release's configs (two experts) and a one-DiT release, both without weights."""
    root = tmp_path_factory.mktemp("configs")
    two = root / "two-experts"
    for name in ("configuration.json", "high_noise_model/config.json", "low_noise_model/config.json"):
        (two / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED / name, two / name)
    one = root / "one-dit"
    one.mkdir()
    shutil.copy(BUNDLED / "high_noise_model" / "config.json", one / "config.json")
    save_video(torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(0)), root / "nine.mp4", fps=16)
    return {"two": two, "one": one, "video": root / "nine.mp4", "file": _file(root / "a-file")}


def _file(path):
    path.write_text("x")
    return path


def _generate(capsys, *args) -> tuple[int, str]:
    code = main(["generate", "--prompt", "a red circle", *args])
    return code, capsys.readouterr().err


CASES = [
    (["--sample-guide-scale", "nan"], "--sample-guide-scale nan is out of range"),
    (["--sample-guide-scale", "inf"], "--sample-guide-scale inf is out of range"),
    (["--sample-guide-scale", "-1"], "--sample-guide-scale -1 is out of range"),
    (["--sample-guide-scale", "1", "2", "3"], "--sample-guide-scale takes one value"),
    (["--sample-shift", "0"], "--sample-shift 0 is out of range"),
    (["--sample-steps", "0"], "--sample-steps 0 is out of range"),
    (["--strength", "0"], "--strength 0 is out of range"),
    (["--fps", "0"], "--fps 0 is out of range"),
    (["--fps", "-16"], "--fps -16 is out of range"),
    (["--base-seed", str(2**64)], f"--base-seed {2**64} is out of range"),
    (["--frame-num", "100001"], "--frame-num 100001 is out of range"),
    (["--size", "16384*16384", "--frame-num", "81"], "--size 16384*16384 with --frame-num 81 needs about"),
    (["--save-file", "{tmp}/o.txt"], "cannot write .txt here; use one of .mp4"),
    (["--save-file", "{tmp}/o.gif"], "cannot write .gif here; use one of .mp4"),
    (["--save-file", "{tmp}/o.png"], "cannot write .png here"),  # 17 frames are not an image
    (["--save-latents", "{tmp}/l.pt"], "--save-latents {tmp}/l.pt: openwan cannot write .pt here"),
    (["--save-latents", "{file}/l.safetensors"], "cannot write --save-latents {file}/l.safetensors (Not a directory)"),
    (["--strip", "{tmp}/s.jpg"], "--strip {tmp}/s.jpg: openwan cannot write .jpg here; use one of .png"),
    (["--strip", "{file}/s.png"], "cannot write --strip {file}/s.png"),
    (["--task", "v2v", "--strength", "0.5", "--video", "{tmp}"], "{tmp} is a folder; give a video file"),
    (["--task", "v2v", "--strength", "0.5", "--video", "{video}"],
     "--video {video} has 9 frames at 16 fps; v2v needs at least --frame-num 17"),
    (["--task", "v2v", "--video", "{video}"], "task v2v needs --strength"),
    (["--task", "t2i", "--frame-num", "5"], "--task t2i makes one image"),
    (["--device", "nonsense"], "--device 'nonsense' is not a device"),
    (["--attention", "flash"], "the flash attention backend"),  # no flash-attn here, or a float32 CPU run
    (["--quantize", "int8", "--stream-blocks"], "block streaming keeps its own host copies"),
    (["--compile", "--stream-blocks"], "block streaming keeps its own host copies"),
]


@pytest.mark.parametrize(("args", "message"), CASES)
def test_refused_in_one_sentence_before_loading(configs_only, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    out.mkdir()
    names = {"tmp": out, "file": configs_only["file"], "video": configs_only["video"]}
    args = [a.format(**names) for a in args]
    save = [] if "--save-file" in args else ["--save-file", str(out / "o.mp4")]
    code, err = _generate(capsys, "--ckpt-dir", str(configs_only["two"]), *save, *args)
    assert code == 2 and message.format(**names) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(out) == []


def test_two_guidance_values_only_for_two_experts(configs_only, tmp_path, capsys):
    save = ["--save-file", str(tmp_path / "o.mp4")]
    code, err = _generate(capsys, "--ckpt-dir", str(configs_only["one"]), "--sample-guide-scale", "3", "4", *save)
    assert code == 2 and "only for a two-expert Wan2.2 A14B model" in err
    code, err = _generate(capsys, "--ckpt-dir", str(configs_only["two"]), "--sample-guide-scale", "3", "4", *save)
    assert code == 2 and LOADER in err  # accepted: it went on to load


def test_ordinary_requests_reach_the_loader(configs_only, tmp_path, capsys):
    """The checks refuse nothing ordinary: the bundled model's defaults, v2v on a long enough video, a t2i PNG."""
    base = ["--ckpt-dir", str(configs_only["two"])]
    for args in ([], ["--task", "v2v", "--strength", "0.7", "--frame-num", "9", "--video", str(configs_only["video"])],
                 ["--task", "t2i", "--save-file", str(tmp_path / "i.png")], ["--size", "256*256", "--frame-num", "33"]):
        save = [] if "--save-file" in args else ["--save-file", str(tmp_path / "o.mp4")]
        code, err = _generate(capsys, *base, *save, *args)
        assert code == 2 and LOADER in err, (args, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_on_a_machine_without_it(configs_only, tmp_path, capsys):
    code, err = _generate(capsys, "--ckpt-dir", str(configs_only["two"]), "--device", "cuda", "--save-file",
                          str(tmp_path / "o.mp4"))
    assert code == 2 and "--device cuda: this machine has no CUDA GPU" in err and "Traceback" not in err


def test_the_memory_estimate_passes_every_released_size():
    """Wan2.1/2.2 14B at 1280*720x81 in bf16 and 1.3B at 832*480x81 in fp32 (CPU) stay far under a GPU's / a
    laptop's memory; the refusal is for sizes no device holds."""
    wan14 = cond.activation_bytes(1280, 720, 81, dim=5120, ffn_dim=13824, elem_bytes=2)
    wan13 = cond.activation_bytes(832, 480, 81, dim=1536, ffn_dim=8960, elem_bytes=4)
    bundled = cond.activation_bytes(64, 64, 17, dim=128, ffn_dim=512, patch=(1, 1, 1), elem_bytes=4)
    assert wan14 < 24 * 2**30 and wan13 < 12 * 2**30 and bundled < 2**28
    assert cond.activation_bytes(16384, 16384, 81, dim=128, ffn_dim=512, patch=(1, 1, 1)) > 2**40


@pytest.mark.slow
def test_sigterm_while_writing_leaves_no_file(tmp_path):
    """`timeout -s TERM` (or a scheduler) stopping `openwan generate` on the bundled model as it writes the mp4:
    exit 143, no traceback, and nothing in the output folder (not even the temporary file)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "openwan", "generate", "--prompt", "a red circle moving to the "
                             "right", "--sample-steps", "2", "--save-file", str(out / "o.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".o.mp4.") for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "terminated" in err
    assert os.listdir(out) == []
