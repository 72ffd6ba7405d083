"""Shared test helpers: the reference key listing, and float32 / determinism defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = REPO.parent / "shared" / "reference" / "official-keys.txt"


def official_keys(section: str, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape for one section of official-keys.txt, ``blocks.{i}`` expanded to ``num_layers``.

    ``section`` is matched against the section title (e.g. "WanModel t2v-1.3B", "Wan2.1 VAE").
    """
    if not OFFICIAL_KEYS.is_file():
        pytest.skip(f"{OFFICIAL_KEYS} is not present (it ships in the project's shared/ folder)")
    text = OFFICIAL_KEYS.read_text()
    chunks = re.split(r"^===== ", text, flags=re.M)
    matches = [c for c in chunks if c.splitlines() and section in c.splitlines()[0]]
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
