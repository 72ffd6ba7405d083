"""``openwan stream`` on the bundled model: a file of the requested length, resume, previews, refusals."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch

from openwan.cli.main import main
from openwan.data.video import iter_video_frames
from openwan.pipelines.stream_output import FRAME_BOUNDARY, MJPEGServer
from openwan.pipelines.stream_state import read_state_info

FAST = ["--prompt", "a red circle moving to the right", "--window", "2", "--steps-per-shift", "1"]


def frames_in(path) -> int:
    return sum(1 for _ in iter_video_frames(path))


def test_streams_a_file_of_the_requested_duration_and_resumes_it(tmp_path, capsys, one_thread):
    out, state = tmp_path / "out.mp4", tmp_path / "state.safetensors"
    assert main(["stream", *FAST, "--duration", "0.5s", "--save-file", str(out), "--state", str(state)]) == 0
    assert frames_in(out) == 8  # 0.5 s x 16 fps
    assert "streamed 8 frames" in capsys.readouterr().err
    # the same --state file resumes: the file grows to the new total, its first half second kept
    first = torch.stack([f for f in iter_video_frames(out)]).float()
    assert main(["stream", "--duration", "13f", "--save-file", str(out), "--state", str(state)]) == 0
    assert "resuming" in capsys.readouterr().err
    grown = torch.stack([f for f in iter_video_frames(out)]).float()
    assert grown.shape[0] == 13
    assert (grown[:8] - first).abs().mean() < 3  # re-encoded once: within a few levels of 255
    # a resume only grows the video: a total before the state's frame is refused, the file left as it was
    assert main(["stream", "--duration", "12f", "--save-file", str(out), "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert "ends before" in err and "already at frame 13" in err and "Traceback" not in err
    assert frames_in(out) == 13


def test_raw_preview_writes_rgb24_frames_and_prints_the_ffplay_line(monkeypatch, capsys, one_thread):
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw))
    assert main(["stream", *FAST, "--duration", "9f", "--preview", "raw"]) == 0
    err = capsys.readouterr().err
    assert "ffplay -f rawvideo -pixel_format rgb24 -video_size 64x64 -framerate 16 -i -" in err
    assert len(raw.getvalue()) == 9 * 64 * 64 * 3


def test_mjpeg_server_serves_the_newest_frame():
    server = MJPEGServer(0)
    try:
        def publish():
            for _ in range(20):
                server.write(torch.rand(1, 16, 16, 3))
                time.sleep(0.05)

        threading.Thread(target=publish, daemon=True).start()
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={FRAME_BOUNDARY}"
            head = response.read(200)
        assert head.startswith(f"--{FRAME_BOUNDARY}\r\nContent-Type: image/jpeg".encode())
        assert b"\r\n\r\n\xff\xd8" in head  # a JPEG starts after the part's headers
    finally:
        server.close()


@pytest.mark.parametrize("argv, message", [
    (["--duration", "ten", "--save-file", "x.mp4"], "--duration 'ten' is not a time"),
    (["--duration", "1s", "--save-file", "x.avi"], "ending in .mp4"),
    (["--duration", "1s"], "nothing would see the frames"),
    (["--then", "2s", "b", "--then", "1s", "c", "--save-file", "x.mp4"], "start at 0 s and increase"),
    (["--preview", "mjpeg", "--port", "70000"], "not a TCP port"),
    (["--window", "0", "--save-file", "x.mp4"], "window must be an integer"),
])
def test_bad_input_is_one_sentence_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["stream", "--prompt", "a red ball", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_prompt_and_no_state_is_refused(capsys):
    assert main(["stream", "--save-file", "x.mp4"]) == 2
    assert "give --prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_stream_resumes_into_the_same_file(tmp_path):
    """SIGKILL mid-stream, then the same command: the file ends with the frames an uninterrupted run makes."""
    cmd = [sys.executable, "-m", "openwan", "stream", *FAST, "--state-every", "4f"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed, state = tmp_path / "killed.mp4", tmp_path / "state.safetensors"
    proc = subprocess.Popen([*cmd, "--save-file", str(killed), "--state", str(state)], env=env,
                            stderr=subprocess.DEVNULL)  # endless: only the kill ends it
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and frames_in(killed) >= 30):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = int(read_state_info(state)["emitted"])
    total = f"{at + 32}f"  # wherever the kill landed, the resume has frames to add
    subprocess.run([*cmd, "--duration", total, "--save-file", str(killed), "--state", str(state)], env=env,
                   check=True, stderr=subprocess.DEVNULL)
    straight = tmp_path / "straight.mp4"
    subprocess.run([*cmd, "--duration", total, "--save-file", str(straight)], env=env, check=True,
                   stderr=subprocess.DEVNULL)
    a = torch.stack(list(iter_video_frames(killed))).float()
    b = torch.stack(list(iter_video_frames(straight))).float()
    assert at >= 4 and a.shape == b.shape == (at + 32, 64, 64, 3)
    assert (a - b).abs().mean() < 3  # the same frames, through one more encode for the part before the kill
    # a resume whose --duration ends before the state is refused before the model loads
    shorter = subprocess.run([*cmd, "--duration", f"{at - 1}f", "--save-file", str(killed), "--state", str(state)],
                             env=env, capture_output=True, text=True)
    assert shorter.returncode == 2 and f"already at frame {at + 32}" in shorter.stderr
    assert frames_in(killed) == at + 32  # the refusal left the file as it was
