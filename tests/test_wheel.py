"""`python -m build` makes a wheel that works outside the checkout: installed into a fresh virtual environment, its
`openwan generate` finds the bundled demo model (package data) and writes a video.

The fresh environment sees the test environment's packages (torch, transformers, ...) through a .pth file, so
nothing is downloaded; the wheel itself goes in with --no-deps. The checkout's own openwan (an editable install)
must not be what runs: the test checks that ``openwan.__file__`` lies inside the new environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import av
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the built wheel installed; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # sdist first, then the wheel from the sdist (build's default): the sdist must carry the weights too.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", REPO, cwd=tmp)
    wheels = sorted((tmp / "dist").glob("openwan-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    bin_dir = venv / "bin"
    site = Path(_run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp).strip())
    # The test environment's packages, after the new venv's own: a path line adds the folder, but the .pth files in
    # it (the checkout's editable install) are not run.
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps", "--no-index",
         "--quiet", wheels[0], cwd=tmp)
    return bin_dir


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1"}


@pytest.mark.slow
def test_the_wheel_carries_the_bundled_model_and_generates(installed, tmp_path):
    where = _run(installed / "python", "-c",
                 "import openwan; from openwan.pipelines.components import BUNDLED; print(openwan.__file__); "
                 "print(BUNDLED)", cwd=tmp_path, env=_clean_env()).split()
    venv = installed.parent.resolve()
    assert all(Path(p).resolve().is_relative_to(venv) for p in where), f"not the wheel's openwan: {where}"
    assert not any(Path(p).resolve().is_relative_to(REPO) for p in where)
    video = tmp_path / "out.mp4"
    printed = _run(installed / "openwan", "generate", "--prompt", "a red circle moving to the right", "--frame-num",
                   "5", "--sample-steps", "2", "--save-file", video, cwd=tmp_path, env=_clean_env())
    assert "bundled demo model" in printed and f"saved {video}" in printed
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3)
