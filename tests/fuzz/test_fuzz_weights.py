"""Fuzzing the weight and config readers: random bytes, truncations at a set of offsets, flipped bytes, planted
pickles, NaN/Inf tensors, and a type/range mutation of every field of the bundled DiT config.json and VAE config.

Each input must meet the loaders' contract: either it loads (a mutation that is in fact valid) or a ValueError
whose one-line message names the file; no other exception type, and no pickled code run. A handful go through
``openwan generate`` (exit 2, no traceback). The count of inputs tried, handled and crashed is printed at the end
(``-rA`` or ``-s`` shows it).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from fuzzing import Tally, print_uncaptured
from safetensors.torch import load_file, save_file

from openwan.checkpoints import read, read_state_dict
from openwan.checkpoints.training import read_file
from openwan.cli.main import main
from openwan.models import WanDiT, WanVAE, load_umt5_encoder
from openwan.pipelines.components import BUNDLED
from tiny import PickleBomb

RNG = random.Random(3535)
DIT_FILE = "diffusion_pytorch_model.safetensors"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
# Type and range mutations tried on every config field (and on each entry of a list field).
VALUES = [None, "abc", "", True, -1, 0, 1, 3, 2.5, -0.0, 1e308, 2**63, math.nan, math.inf, -math.inf, [], {}, [1],
          "12"]




@pytest.fixture(scope="module")
def tally(pytestconfig):
    t = Tally()
    yield t
    line = (f"fuzz weights and configs: {t.tried} inputs tried, {t.handled} handled ({t.loaded} valid and loaded, "
            f"{t.handled - t.loaded} refused), {t.crashed} crashed")
    print_uncaptured(pytestconfig, line)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-weights") / "release"
    shutil.copytree(BUNDLED, root)
    return root


def _attempt(tally: Tally, label: str, load, culprit: Path, marker: Path | None = None,
             may_load: bool = False) -> str:
    """Run ``load``; count it handled if it loads (where allowed) or raises a one-line ValueError naming
    ``culprit`` (a file, or the folder holding it), crashed otherwise. Returns the error message ("" if none)."""
    tally.tried += 1
    problem, msg = None, ""
    try:
        load()
        if not may_load:
            problem = "accepted"
        tally.loaded += 1
    except ValueError as err:
        msg = str(err)
        if str(culprit) not in msg or "\n" in msg or "weights_only=False" in msg:
            problem = f"message: {msg[:300]}"
    except Exception as exc:  # noqa: BLE001 - a crash is what this test counts
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    if marker is not None and marker.exists():
        problem = "pickled code ran"
    if problem is None:
        tally.handled += 1
    else:
        tally.loaded -= problem == "accepted"
        tally.crashed += 1
        tally.failures.append(f"{label}: {problem}")
    return msg


def _offsets(length: int) -> list[int]:
    base = {0, 1, 2, 7, 8, 9, 16, 22, 64, 100, 512, 1000, 4096}
    base |= {length // 8, length // 4, length // 2, 3 * length // 4, length - 1000, length - 100, length - 22,
             length - 1}
    return sorted(o for o in base if 0 <= o < length)


def _check(tally: Tally) -> None:
    assert not tally.failures, "\n".join(tally.failures[:20])


def test_random_bytes(release, tmp_path, tally):
    marker = tmp_path / "pickled-code-ran"
    for i in range(24):
        data = bytes(RNG.randrange(256) for _ in range(RNG.choice((1, 8, 9, 100, 3000))))
        if i % 3 == 1:  # a plausible safetensors header length in front
            data = struct.pack("<Q", len(data)) + data
        if i % 3 == 2:  # a pickle/zip-looking start
            data = RNG.choice((b"\x80\x02", b"PK\x03\x04")) + data
        for suffix in (".pth", ".safetensors", ".pt"):
            path = tmp_path / f"random{i}{suffix}"
            path.write_bytes(data)
            reader = read_file if suffix == ".pt" else read_state_dict
            _attempt(tally, path.name, lambda p=path, r=reader: r(p), path, marker)
        config = tmp_path / f"cfg{i}" / "config.json"
        config.parent.mkdir()
        config.write_bytes(data)
        os.symlink(release / "high_noise_model" / DIT_FILE, config.parent / DIT_FILE)
        _attempt(tally, f"config.json random {i}", lambda d=config.parent: WanDiT.from_pretrained(d), config)
    _check(tally)


def test_truncated_and_flipped_files(release, tmp_path, tally):
    for source, loader in ((release / T5_FILE, load_umt5_encoder), (release / "high_noise_model" / DIT_FILE,
                                                                    read_state_dict)):
        data = source.read_bytes()
        for offset in _offsets(len(data)):
            path = tmp_path / f"cut{offset}{source.suffix}"
            path.write_bytes(data[:offset])
            _attempt(tally, f"{source.name} cut at {offset}", lambda p=path, f=loader: f(p), path)
    data = (release / "high_noise_model" / DIT_FILE).read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    for i in range(16):  # flipped bytes: in the header (refused) or in the tensors (loaded, or refused as NaN/Inf)
        flipped = bytearray(data)
        for _ in range(RNG.choice((1, 4, 32))):
            at = RNG.randrange(header) if i % 2 == 0 else RNG.randrange(header, len(data))
            flipped[at] ^= 1 + RNG.randrange(255)
        path = tmp_path / f"flip{i}.safetensors"
        path.write_bytes(bytes(flipped))
        _attempt(tally, f"flip {i}", lambda p=path: read_state_dict(p), path, may_load=i % 2 == 1)
    _check(tally)


def test_planted_pickles(tmp_path, tally):
    marker = tmp_path / "pickled-code-ran"

    class Shell:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    class Eval:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for name, payload in (("open", PickleBomb(marker)), ("shell", Shell()), ("eval", Eval())):
            for wrap in (lambda x: {"w": x}, lambda x: {"state_dict": {"w": x}}, lambda x: x):
                for suffix in (".pth", ".pt"):
                    path = tmp_path / f"{name}{protocol}{suffix}"
                    path.write_bytes(pickle.dumps(wrap(payload), protocol=protocol))
                    reader = read_file if suffix == ".pt" else (lambda p: read("vae", p))
                    _attempt(tally, path.name, lambda p=path, r=reader: r(p), path, marker)
        buffer = io.BytesIO()
        torch.save({"w": PickleBomb(marker)}, buffer)  # the zip format with a planted global
        path = tmp_path / f"zip{protocol}.pth"
        path.write_bytes(buffer.getvalue())
        _attempt(tally, path.name, lambda p=path: load_umt5_encoder(p), path, marker)
    _check(tally)


def test_non_finite_tensors(release, tmp_path, tally):
    state = load_file(release / "high_noise_model" / DIT_FILE)
    names = sorted(state)
    folder = tmp_path / "dit"
    folder.mkdir()
    shutil.copy(release / "high_noise_model" / "config.json", folder)
    for bad in [math.nan, math.inf, -math.inf] * 4:
        name = RNG.choice(names)
        damaged = {k: v.clone() for k, v in state.items()}
        damaged[name].view(-1)[RNG.randrange(damaged[name].numel())] = bad
        save_file(damaged, folder / DIT_FILE)
        msg = _attempt(tally, f"{bad} in {name}", lambda: WanDiT.from_pretrained(folder), folder / DIT_FILE)
        assert f"in tensor '{name}'" in msg
    t5 = torch.load(release / T5_FILE, weights_only=True)
    for bad in (math.nan, math.inf):
        name = RNG.choice(sorted(t5))
        damaged = {k: v.clone() for k, v in t5.items()}
        damaged[name].view(-1)[0] = bad
        path = tmp_path / f"{bad}-{T5_FILE}"
        torch.save(damaged, path)
        msg = _attempt(tally, f"{bad} in t5 {name}", lambda p=path: load_umt5_encoder(p), path)
        assert f"in tensor '{name}'" in msg
    _check(tally)


def _mutations(value):
    yield from VALUES
    if isinstance(value, list):
        yield value + value[:1]
        yield value[:-1]
        # Every entry of a short list; three of a long one (the 16 latent statistics are alike).
        for i in range(len(value)) if len(value) <= 4 else sorted(RNG.sample(range(len(value)), 3)):
            for v in (None, "abc", -1, 0, math.nan, 0.5):
                yield value[:i] + [v] + value[i + 1:]


def test_dit_config_mutations(release, tmp_path, tally):
    original = json.loads((release / "high_noise_model" / "config.json").read_text())
    folder = tmp_path / "dit"
    folder.mkdir()
    os.symlink(release / "high_noise_model" / DIT_FILE, folder / DIT_FILE)
    for key in sorted(original):
        for value in _mutations(original[key]):
            config = dict(original, **{key: value})
            (folder / "config.json").write_text(json.dumps(config))
            # A valid value may load; one the tensors contradict is refused naming the folder's files.
            _attempt(tally, f"dit {key}={value!r}", lambda: WanDiT.from_pretrained(folder), folder, may_load=True)
        missing = {k: v for k, v in original.items() if k != key}
        (folder / "config.json").write_text(json.dumps(missing))
        _attempt(tally, f"dit without {key}", lambda: WanDiT.from_pretrained(folder), folder, may_load=True)
    (folder / "config.json").write_text(json.dumps(dict(original, surplus=1)))
    _attempt(tally, "dit unknown key", lambda: WanDiT.from_pretrained(folder), folder, may_load=True)
    _check(tally)


def test_vae_config_mutations(release, tmp_path, tally):
    original = json.loads((release / "Wan2.1_VAE.json").read_text())
    folder = tmp_path / "vae"
    folder.mkdir()
    os.symlink(release / "Wan2.1_VAE.pth", folder / "Wan2.1_VAE.pth")
    config_file = folder / "Wan2.1_VAE.json"
    for key in sorted(original):
        for value in _mutations(original[key]):
            config_file.write_text(json.dumps(dict(original, **{key: value})))
            _attempt(tally, f"vae {key}={value!r}", lambda: WanVAE.from_pretrained(folder / "Wan2.1_VAE.pth"),
                     config_file, may_load=True)
    _check(tally)


def test_through_generate(release, tmp_path, tally):
    """A handful through the CLI: exit 2, the file named on stderr, no traceback, no output."""
    cases = {
        "empty t5": (T5_FILE, b""),
        "text vae": ("Wan2.1_VAE.pth", b"not weights"),
        "truncated dit": (f"low_noise_model/{DIT_FILE}",
                          (release / "low_noise_model" / DIT_FILE).read_bytes()[:5000]),
        "bad config": ("high_noise_model/config.json", json.dumps(
            dict(json.loads((release / "high_noise_model" / "config.json").read_text()), num_heads=0)).encode()),
        "zero std": ("Wan2.1_VAE.json", json.dumps(
            dict(json.loads((release / "Wan2.1_VAE.json").read_text()), latents_std=[0.0] * 16)).encode()),
    }
    nan_state = load_file(release / "high_noise_model" / DIT_FILE)
    next(iter(nan_state.values())).view(-1)[0] = math.nan
    for label, (name, data) in [*cases.items(), ("nan dit", (f"high_noise_model/{DIT_FILE}", None))]:
        root = tmp_path / label.replace(" ", "-")
        shutil.copytree(release, root)
        if data is None:
            save_file(nan_state, root / name)
        else:
            (root / name).write_bytes(data)
        out = tmp_path / f"{root.name}.mp4"
        err = io.StringIO()
        tally.tried += 1
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(["generate", "--ckpt-dir", str(root), "--prompt", "x", "--save-file", str(out)])
            except BaseException as exc:  # noqa: BLE001 - a crash is what this test counts
                code = type(exc).__name__
        text = err.getvalue()
        if code == 2 and str(root / name) in text and "Traceback" not in text and not out.exists():
            tally.handled += 1
        else:
            tally.crashed += 1
            tally.failures.append(f"generate {label}: {code} {text[-300:]}")
    _check(tally)
