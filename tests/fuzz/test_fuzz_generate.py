"""Fuzzing `openwan generate`'s boundaries: every numeric flag, every path flag, and the media it reads.

Each generated input must meet the CLI's contract: exit 2, one line on stderr that names the culprit (the flag, the
file, or — for an input that is in fact valid — the release, which here holds configs and no weights, so a valid
request stops at the loader), no traceback, and no file left in the output folder or beside the inputs. Most cases
run in-process through ``openwan.cli.main.main``; a few through a real process. The count of inputs tried,
handled and crashed is printed at the end (``-rA`` or ``-s`` shows it).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from fuzzing import Tally, print_uncaptured

from openwan.cli.main import main
from openwan.data.video import VideoWriter, save_image, save_video
from openwan.pipelines.components import BUNDLED

LOADER = "holds no DiT weights"
RNG = random.Random(35)
# flag -> (type, low, high, low_open); the ranges `openwan generate --help` documents
NUMERIC = {
    "--sample-steps": (int, 1, 1000, False),
    "--sample-shift": (float, 0, 100, True),
    "--sample-guide-scale": (float, 0, 100, False),
    "--strength": (float, 0, 1, True),
    "--fps": (int, 1, 240, False),
    "--base-seed": (int, -2**63, 2**64 - 1, False),
    "--frame-num": (int, 1, 1001, False),
    "--ulysses-size": (int, 1, 1024, False),
    "--ring-size": (int, 1, 1024, False),
}
FIXED_VALUES = ["nan", "-nan", "inf", "-inf", "-1", "0", "-0", "1e308", "1e400", str(10**30), str(-10**30),
                str(2**64), str(-2**63 - 1), "abc", "", " ", "0x10", "1_000", "5.5", "+3", "1e3", "None", "½"]




@pytest.fixture(scope="module")
def tally(pytestconfig):
    t = Tally()
    yield t
    line = f"fuzz openwan generate: {t.tried} inputs tried, {t.handled} handled, {t.crashed} crashed"
    print_uncaptured(pytestconfig, line)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A weightless copy of the bundled release (two experts) and the inputs: good and broken images and videos."""
    root = tmp_path_factory.mktemp("fuzz")
    release = root / "release"
    for name in ("configuration.json", "high_noise_model/config.json", "low_noise_model/config.json"):
        (release / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED / name, release / name)
    # The same DiT as an image-to-video model (latents and a conditioning image's, 16 + 20 channels), so that
    # i2v, flf2v and extend reach their inputs instead of being refused for the task.
    i2v = json.loads((BUNDLED / "low_noise_model" / "config.json").read_text()) | {"model_type": "i2v", "in_dim": 36}
    (root / "release-i2v").mkdir()
    (root / "release-i2v" / "config.json").write_text(json.dumps(i2v))
    media = root / "media"
    media.mkdir()
    g = torch.Generator().manual_seed(35)
    mp4 = save_video(torch.rand(9, 32, 32, 3, generator=g), media / "good.mp4", fps=16).read_bytes()
    save_image(torch.rand(32, 32, 3, generator=g), media / "good.png")
    png = (media / "good.png").read_bytes()
    videos = {"short.mp4": None, "huge.mp4": None, "empty.mp4": b"", "folder.mp4": None}
    for i in range(6):
        videos[f"random{i}.mp4"] = bytes(RNG.randrange(256) for _ in range(RNG.choice((1, 16, 700, 5000))))
    for offset in sorted({1, 8, 24, 48, 100, 200, 400, len(mp4) // 4, len(mp4) // 2, 3 * len(mp4) // 4,
                          len(mp4) - 200, len(mp4) - 40, len(mp4) - 1}):
        videos[f"cut{offset}.mp4"] = mp4[:offset]
    for i in range(8):  # bytes flipped inside the file
        flipped = bytearray(mp4)
        for _ in range(RNG.choice((1, 10, 100))):
            flipped[RNG.randrange(len(flipped))] ^= 1 + RNG.randrange(255)
        videos[f"flip{i}.mp4"] = bytes(flipped)
    for name, data in videos.items():
        if data is not None:
            (media / name).write_bytes(data)
    save_video(torch.rand(3, 32, 32, 3, generator=g), media / "short.mp4")
    with VideoWriter(media / "huge.mp4", preset="ultrafast") as w:  # 4608x2304 declared in a few KB
        w.write(torch.zeros(1, 2304, 4608, 3))
    (media / "folder.mp4").mkdir()
    images = {"empty.png": b"", "text.png": b"not an image", "cut.png": png[: len(png) // 2],
              "random.png": bytes(RNG.randrange(256) for _ in range(2000))}
    for name, data in images.items():
        (media / name).write_bytes(data)
    (media / "folder.png").mkdir()
    blocker = root / "a-file"
    blocker.write_text("x")
    return {"release": release, "release_i2v": root / "release-i2v", "media": media, "videos": sorted(videos),
            "images": sorted(images) + ["folder.png", "missing.png"], "file": blocker}


def _run(world, tmp_path, args: list[str]) -> tuple[int | str, str]:
    """Run in-process; returns (exit code or the name of an escaping exception, stderr)."""
    err = io.StringIO()
    argv = ["generate", "--prompt", "a red circle", "--ckpt-dir", str(world["release"]), *args]
    if "--save-file" not in args:
        argv += ["--save-file", str(tmp_path / "out" / "o.mp4")]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        except BaseException as exc:  # noqa: BLE001 - a crash is what this test counts
            return type(exc).__name__, err.getvalue()
    return code, err.getvalue()


def _check(tally: Tally, world, tmp_path, args: list[str], culprits: tuple[str, ...], label: str) -> None:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    before = sorted(os.listdir(world["media"]))
    code, err = _run(world, tmp_path, args)
    tally.tried += 1
    lines = err.strip().splitlines()
    if not isinstance(code, int) or code != 2 or "Traceback" in err:
        tally.crashed += 1
        tally.failures.append((label, code, err[-400:]))
        return
    ok = (lines and any(c in lines[-1] for c in culprits) and os.listdir(out) == []
          and sorted(os.listdir(world["media"])) == before and (len(lines) == 1 or "usage:" in err))
    if ok:
        tally.handled += 1
    else:
        tally.failures.append((label, code, err[-400:], os.listdir(out)))


def _parse(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        return None


def _bad(flag: str, text: str) -> bool:
    kind, low, high, low_open = NUMERIC[flag]
    value = _parse(kind, text)
    if value is None or not math.isfinite(value):
        return True
    if (value <= low if low_open else value < low) or value > high:
        return True
    return flag == "--frame-num" and (value - 1) % 4 != 0


def _random_numbers() -> list[str]:
    values = []
    for _ in range(6):
        magnitude = 10 ** RNG.uniform(-3, 25)
        values.append(repr(RNG.choice((-1, 1)) * magnitude))
        values.append(str(RNG.choice((-1, 1)) * int(magnitude)))
    return values


def test_numeric_flags(world, tmp_path, tally):
    for flag in NUMERIC:
        for text in FIXED_VALUES + _random_numbers():
            args = [flag, text] if text.startswith("-") is False else [f"{flag}={text}"]
            culprits = (flag, "frame_num") if _bad(flag, text) else (flag, LOADER, "frame_num", "--size")
            _check(tally, world, tmp_path, args, culprits, f"{flag} {text!r}")
    for values in (["1", "2", "3"], ["nan", "1"], ["1", "inf"], ["-1", "-1"], ["1"] * 7):
        _check(tally, world, tmp_path, ["--sample-guide-scale", *values], ("--sample-guide-scale",), str(values))
    assert not tally.failures, tally.failures


SIZES = ["0*0", "-16*16", "16*", "*", "abc", "1e3*16", "16*16*16", "17*16", "nan*nan", "inf*16", "", "16x16",
         "99999999*99999999", "16384*16384", "4096*4096", "64*64", "1280*720", " 64 * 64 ", "64*-64", "0x40*64"]


def test_size_and_frame_count(world, tmp_path, tally):
    for size in SIZES:
        for frames in ("1", "17", "81", "1001"):
            _check(tally, world, tmp_path, [f"--size={size}", "--frame-num", frames],
                   ("--size", "size ", LOADER), f"--size {size!r} x {frames}")
    assert not tally.failures, tally.failures


def test_output_paths(world, tmp_path, tally):
    out, blocker = tmp_path / "out", world["file"]
    cases = {
        "--save-file": ["o.txt", "o.gif", "o.webm", "o.png", "o", "o.", ".mp4/", "sub/deeper/o.mp4", "o.MP4"],
        "--save-latents": ["l.pt", "l.safetensors/", "l", "l.SAFETENSORS", "l.npz", "sub/l.safetensors"],
        "--strip": ["s.jpg", "s.png/", "s", "s.gif", "sub/s.png"],
    }
    for flag, names in cases.items():
        for name in names:
            if name.endswith("/"):  # an existing folder given as the file
                folder = tmp_path / "folders" / name
                folder.mkdir(parents=True, exist_ok=True)
                for path in (str(folder), f"{folder}/"):
                    _check(tally, world, tmp_path, [flag, path], (flag,), f"{flag} {path}")
                continue
            for where in (out, blocker, out / "missing" / "deep"):
                path = str(where / name)
                _check(tally, world, tmp_path, [flag, path], (flag, LOADER), f"{flag} {path}")
    assert not tally.failures, tally.failures


def test_media_inputs(world, tmp_path, tally):
    media = world["media"]
    for name in world["videos"] + ["missing.mp4"]:
        path = str(media / name)
        i2v_release = ["--ckpt-dir", str(world["release_i2v"])]
        for task in (["--task", "v2v", "--strength", "0.5", "--frame-num", "5"], ["--task", "extend", *i2v_release]):
            _check(tally, world, tmp_path, [*task, "--size", "32*32", "--video", path], (path, LOADER),
                   f"{task[1]} {name}")
    for name in world["images"]:
        path = str(media / name)
        i2v_release = ["--ckpt-dir", str(world["release_i2v"])]
        _check(tally, world, tmp_path, ["--task", "i2v", "--image", path, "--frame-num", "5", *i2v_release], (path,),
               name)
        _check(tally, world, tmp_path, ["--task", "flf2v", "--first-frame", str(media / "good.png"), "--last-frame",
                                        path, *i2v_release], (path,), f"last {name}")
    assert not tally.failures, tally.failures


def test_real_processes(world, tmp_path, tally):
    """Three real `openwan generate` processes, run side by side: exit 2, one line, no traceback, no file."""
    cases = [["--sample-guide-scale", "nan"], ["--save-file", "{out}/o.gif"],
             ["--task", "v2v", "--strength", "0.5", "--video", "{media}/random3.mp4"]]
    procs = []
    for i, args in enumerate(cases):
        out = tmp_path / f"out{i}"
        out.mkdir()
        args = [a.format(out=out, media=world["media"]) for a in args]
        save = [] if "--save-file" in args else ["--save-file", str(out / "o.mp4")]
        procs.append((out, subprocess.Popen([sys.executable, "-m", "openwan", "generate", "--prompt", "x",
                                             "--ckpt-dir", str(world["release"]), *save, *args],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    for out, proc in procs:
        err = proc.communicate(timeout=300)[1]
        tally.tried += 1
        lines = err.strip().splitlines()
        if proc.returncode != 2 or "Traceback" in err:
            tally.crashed += 1
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert len(lines) == 1 and lines[0].startswith("openwan generate: error:") and os.listdir(out) == []
        tally.handled += 1
