"""The attribute-sensitivity probe: swapped prompts, and losses that tell a text-blind DiT from one that reads."""

import hashlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from openwan.configs import DIT_PRESETS
from openwan.data.synthetic import parse_caption, render_clip
from openwan.eval.sensitivity import attribute_sensitivity, direction_from_first_frame, swapped_prompts
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


CLIPS = [("red", "circle", "left"), ("green", "square", "right"), ("blue", "triangle", "still"),
         ("yellow", "circle", "up"), ("white", "square", "down")]


def _sign(prompt: str) -> float:
    return {"left": 1.0, "up": 1.0, "right": -1.0, "down": -1.0}.get(parse_caption(prompt)[2], 0.0) if prompt else 0.0


class _Predictor(nn.Module):
    """Velocity whose x0 = x_σ − σ·v is the clip itself, or the clip played backwards where the prompt's direction
    (the context's one number) disagrees with the clip's: a DiT that takes its direction from ``follows``."""

    cfg = SimpleNamespace(patch_size=(1, 1, 1))  # one token per latent pixel: t reshapes to the latents' grid

    def __init__(self, clips: torch.Tensor, signs: torch.Tensor, follows: str):
        super().__init__()
        self.clips, self.signs, self.follows = clips, signs, follows

    def forward(self, x_t, t, context):
        sigma = (t / 1000).view(x_t.shape[0], 1, *x_t.shape[2:])
        told = context[:, 0, 0]
        backwards = {"position": torch.zeros_like(told, dtype=torch.bool), "prompt": told == -self.signs,
                     "nothing": torch.ones_like(told, dtype=torch.bool)}[self.follows]
        x0 = torch.where(backwards.view(-1, 1, 1, 1, 1), self.clips.flip(2), self.clips)
        return (x_t - x0) / sigma


@pytest.mark.parametrize("follows, expected", [("position", {"true": 1.0, "opposite": 1.0, "empty": 1.0}),
                                               ("prompt", {"true": 1.0, "opposite": 0.0, "empty": 1.0}),
                                               ("nothing", {"true": 0.0, "opposite": 0.0, "empty": 0.0})])
def test_direction_probe_tells_where_the_direction_comes_from(follows, expected):
    # Pixel clips stand in for latents (decode = identity): the probe's noising, x0 and detector run as they are.
    clips = torch.stack([render_clip(*a, seed=i, size=32, frames=9) for i, a in enumerate(CLIPS)])
    clips = clips.permute(0, 4, 1, 2, 3) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]
    moving = [a for a in CLIPS if a[2] != "still"]
    dit = _Predictor(clips[[i for i, a in enumerate(CLIPS) if a[2] != "still"]],
                     torch.tensor([_sign(f"red circle moving {a[2]}") for a in moving]), follows)
    encode = lambda prompts: torch.tensor([_sign(p) for p in prompts]).view(-1, 1, 1)  # noqa: E731
    assert direction_from_first_frame(dit, lambda z: z, clips, CLIPS, encode) == expected


def test_direction_probe_needs_moving_clips():
    with pytest.raises(ValueError, match="none of the clips moves"):
        direction_from_first_frame(_Predictor(None, None, "position"), lambda z: z, torch.zeros(1, 3, 9, 32, 32),
                                   [("red", "circle", "still")], lambda p: torch.zeros(len(p), 1, 1))


def _work_folder(root):
    """A demo-recipe work folder in miniature: 4 synthetic clips cached with the bundled model's VAE and text
    encoder, and a DiT training checkpoint (step-00000001) whose EMA weights are the bundled low-noise expert."""
    from safetensors.torch import save_file

    from openwan.checkpoints.training import CONFIG_FILE, EMA_FILE, STATE_FILE
    from openwan.data.buckets import Bucket
    from openwan.data.cache import build_latent_cache, build_text_cache
    from openwan.data.manifest import read_manifest
    from openwan.data.synthetic import make_dataset
    from openwan.models import WanVAE, load_umt5_encoder
    from openwan.models.text_encoder import load_tokenizer
    from openwan.pipelines.components import BUNDLED

    records = read_manifest(make_dataset(root / "data", 4, seed=0, paths="reversible"))
    expert = WanDiT.from_pretrained(BUNDLED / "low_noise_model", dtype=torch.float32)
    build_latent_cache(records, WanVAE.from_pretrained(BUNDLED), [Bucket(17, 64, 64)], root / "cache")
    build_text_cache(records, load_umt5_encoder(BUNDLED), load_tokenizer(BUNDLED), root / "cache",
                     text_len=expert.cfg.text_len)
    step = root / "dit" / "step-00000001"
    step.mkdir(parents=True)
    (step / CONFIG_FILE).write_text((BUNDLED / "low_noise_model" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in expert.state_dict().items()}, step / EMA_FILE)
    (step / STATE_FILE).write_text("{}")
    return root


@pytest.mark.slow
def test_the_tool_runs_on_a_work_folder_with_its_release(tmp_path, capsys):
    """``python -m openwan.eval.sensitivity WORK --release R``: the newest checkpoint's EMA DiT, the cached latents,
    and the text encoder and VAE of the release; a work folder without a checkpoint is refused in one sentence."""
    import json

    from openwan.eval.sensitivity import main

    assert main([str(tmp_path / "empty")]) == 2
    assert "no DiT checkpoint under" in capsys.readouterr().err
    work = _work_folder(tmp_path / "work")
    assert main([str(work), "--num", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(work / "dit" / "step-00000001") and report["clips"] == 4
    assert set(report["loss"]) == {"0.5", "0.8", "0.95"}
    assert set(report["loss"]["0.5"]) == {"true", "colour", "shape", "motion", "opposite", "empty"}
    assert set(report["direction_from_first_frame"]) == {"true", "opposite", "empty"}
