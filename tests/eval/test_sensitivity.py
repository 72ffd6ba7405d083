"""The attribute-sensitivity probe: swapped prompts, and losses that tell a text-blind DiT from one that reads."""

import hashlib

import pytest
import torch

from openwan.configs import DIT_PRESETS
from openwan.data.synthetic import parse_caption
from openwan.eval.sensitivity import attribute_sensitivity, swapped_prompts
from openwan.models import WanDiT
from tiny import randomize

ATTRS = [("red", "circle", "left"), ("blue", "triangle", "still"), ("white", "square", "up")]


def test_each_variant_changes_exactly_its_attribute():
    variants = swapped_prompts(ATTRS, seed=3)
    assert [parse_caption(p) for p in variants["true"]] == ATTRS
    assert variants["empty"] == ["", "", ""]
    assert [parse_caption(p) for p in variants["opposite"]] == [("red", "circle", "right"), ATTRS[1],
                                                                 ("white", "square", "down")]
    for k, name in enumerate(["colour", "shape", "motion"]):
        for truth, prompt in zip(ATTRS, variants[name]):
            swapped = parse_caption(prompt)
            assert [swapped[j] == truth[j] for j in range(3)] == [j != k for j in range(3)]


def _encoder(dim: int, length: int = 16):
    """A deterministic toy text encoder: every prompt -> features seeded by its text."""
    def encode(prompts):
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
            out.append(torch.randn(length, dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)
    return encode


def test_a_text_blind_model_scores_every_variant_alike_and_a_reading_one_does_not():
    cfg = DIT_PRESETS["tiny"]
    dit = randomize(WanDiT(cfg).eval(), seed=0)
    latents = torch.randn(len(ATTRS), cfg.in_dim, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    blind = attribute_sensitivity(dit, latents, ATTRS, lambda p: torch.zeros(len(p), 16, cfg.text_dim),
                                  sigmas=(0.5, 0.9))
    assert list(blind) == ["0.5", "0.9"]
    for row in blind.values():
        assert set(row) == {"true", "colour", "shape", "motion", "opposite", "empty"}
        assert len(set(row.values())) == 1  # same context for every variant: bit-identical losses
    reading = attribute_sensitivity(dit, latents, ATTRS, _encoder(cfg.text_dim), sigmas=(0.9,))["0.9"]
    assert len({round(v, 7) for v in reading.values()}) == 6


def test_one_attribute_triple_per_latent():
    dit = WanDiT(DIT_PRESETS["tiny"]).eval()
    with pytest.raises(ValueError, match="one per clip"):
        attribute_sensitivity(dit, torch.zeros(2, 16, 1, 2, 2), ATTRS, _encoder(32))
