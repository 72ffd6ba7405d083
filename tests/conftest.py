"""Shared test helpers: the official key listing, float32 / determinism defaults, and the ``gpu`` tier's skip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

OFFICIAL_KEYS = Path(__file__).resolve().parent / "fixtures" / "official-keys.txt"


def official_keys(section: str, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape for one section of tests/fixtures/official-keys.txt, ``blocks.{i}`` expanded to ``num_layers``.

    ``section`` is matched against the section title (e.g. "WanModel t2v-1.3B", "Wan2.1 VAE").
    """
    text = OFFICIAL_KEYS.read_text()
    chunks = re.split(r"^===== ", text, flags=re.M)[1:]  # [0] is the file's header comment
    matches = [c for c in chunks if section in c.splitlines()[0]]
    assert len(matches) == 1, f"section {section!r} matched {len(matches)} sections"
    out: dict[str, tuple[int, ...]] = {}
    for line in matches[0].splitlines()[1:]:
        m = re.match(r"^(\S+) \(([\d, ]*)\)$", line.strip())
        if not m:
            continue  # notes such as the RoPE table description
        key = m.group(1)
        shape = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
        if "{i}" in key and num_layers is not None and key.startswith("blocks."):
            for i in range(num_layers):
                out[key.replace("{i}", str(i), 1)] = shape
        else:
            out[key] = shape
    return out


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need CUDA; elsewhere they are reported as skipped (``-ra``), never silently dropped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False); run `make test-gpu` "
                                   "on a machine with a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _float32_and_seed():
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors run faster on one thread than on two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
