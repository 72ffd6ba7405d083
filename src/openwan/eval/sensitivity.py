"""Does the DiT read each part of the prompt? Flow-matching loss with the true prompt against the same prompt with
one attribute swapped (colour, shape or motion of the synthetic shapes data) and against the empty prompt.

A DiT that uses an attribute loses more when that attribute is swapped; equal losses mean the attribute is ignored.
The "opposite" variant reverses each moving prompt's direction (left <-> right, up <-> down; "still" stays): a
model that reads motion as "moving along this axis" scores it like the true prompt, and so does one that takes the
direction from somewhere other than the prompt.
This isolates the text conditioning from the sampler, the VAE and the detector (which ``openwan eval prompts``
measures together), and shows which attribute is learned when, checkpoint by checkpoint.

A second probe asks where the DiT takes its direction from (:func:`direction_from_first_frame`): with the first
latent frame almost clean and the rest pure noise, it decodes the DiT's x0 for moving clips and counts how
often the object moves the clip's true way — with the true prompt, the opposite direction, and the empty prompt.
A DiT that reads the direction from the prompt follows the opposite prompt the wrong way; one that reads it from
where the object starts (in data whose paths give the direction away) moves the true way whatever it is told, and
one that knows neither moves it either way about equally.

    python -m openwan.eval.sensitivity WORK                    # the newest DiT checkpoint of the demo recipe's WORK
    python -m openwan.eval.sensitivity WORK --step WORK/dit/step-00003000 --release MY_RELEASE
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from openwan.checkpoints.training import latest_checkpoint, read_checkpoint_dit
from openwan.configs import DiTConfig
from openwan.data.cache import CachedDataset
from openwan.data.synthetic import COLOURS, MOTIONS, SHAPES, canonical_caption, parse_caption
from openwan.diffusion.objective import flow_matching_loss, noised
from openwan.eval.detector import detect
from openwan.models import WanDiT, WanVAE, load_umt5_encoder
from openwan.models.text_encoder import encode_prompts, load_tokenizer, pad_context
from openwan.pipelines.components import BUNDLED

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "motion": list(MOTIONS)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swapped_prompts(attributes: Sequence[tuple[str, str, str]], seed: int = 0) -> dict[str, list[str]]:
    """Canonical prompts for ``attributes`` ("true"), the same with one attribute replaced by another value drawn
    at random (one variant per attribute), with the direction reversed ("opposite"), and the empty prompt."""
    rng = random.Random(seed)
    variants = {"true": [canonical_caption(*a) for a in attributes]}
    for k, (name, values) in enumerate(ATTRIBUTES.items()):
        prompts = []
        for a in attributes:
            other = list(a)
            other[k] = rng.choice([v for v in values if v != a[k]])
            prompts.append(canonical_caption(*other))
        variants[name] = prompts
    variants["opposite"] = [canonical_caption(c, s, OPPOSITE.get(m, m)) for c, s, m in attributes]
    variants["empty"] = [""] * len(attributes)
    return variants


@torch.no_grad()
def attribute_sensitivity(dit, latents: torch.Tensor, attributes: Sequence[tuple[str, str, str]],
                          encode: Callable[[list[str]], torch.Tensor], sigmas: Sequence[float] = (0.5, 0.8, 0.95),
                          seed: int = 0) -> dict[str, dict[str, float]]:
    """{σ: {variant: loss}} for latents [B, C, F, h, w] (the DiT's training inputs) with their true attributes;
    ``encode(prompts)`` gives the DiT's context [B, L, text_dim]. One noise draw (``seed``) serves every variant."""
    if latents.shape[0] != len(attributes):
        raise ValueError(f"got {latents.shape[0]} latents but {len(attributes)} attribute triples; give one per clip.")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=latents.dtype)
    contexts = {name: encode(prompts) for name, prompts in swapped_prompts(attributes, seed).items()}
    table = {}
    for sigma in sigmas:
        s = torch.full((latents.shape[0],), float(sigma))
        table[f"{sigma:g}"] = {name: float(flow_matching_loss(dit, latents, ctx, s, noise))
                               for name, ctx in contexts.items()}
    return table


@torch.no_grad()
def direction_from_first_frame(dit, decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                               attributes: Sequence[tuple[str, str, str]],
                               encode: Callable[[list[str]], torch.Tensor], first_sigma: float = 0.1,
                               rest_sigma: float = 1.0, seed: int = 0) -> dict[str, float]:
    """{variant: fraction of the moving clips whose predicted video moves the clip's true way}, for the "true",
    "opposite" and "empty" prompts. The first latent frame is noised to ``first_sigma``, the others to
    ``rest_sigma``; the DiT's x0 = x_σ − σ·v is decoded by ``decode`` (latents -> video [B, 3, T, H, W] in
    [-1, 1]) and read by the detector: the sign of its displacement along the clip's axis."""
    moving = [i for i, a in enumerate(attributes) if a[2] in OPPOSITE]
    if not moving:
        raise ValueError("none of the clips moves; give clips moving left, right, up or down.")
    latents, attributes = latents[moving], [attributes[i] for i in moving]
    sigmas = torch.full((latents.shape[0], latents.shape[2]), float(rest_sigma))
    sigmas[:, 0] = first_sigma
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=latents.dtype)
    x_t, t = noised(latents, sigmas, noise, dit.cfg.patch_size)
    s = sigmas.to(latents)[:, None, :, None, None]
    prompts = swapped_prompts(attributes, seed)
    fractions = {}
    for name in ("true", "opposite", "empty"):
        videos = decode(x_t - s * dit(x_t, t, encode(prompts[name])))
        right_way = 0
        for (_, _, motion), video in zip(attributes, videos):
            found = detect((video.permute(1, 2, 3, 0).float() + 1) / 2).displacement or (0.0, 0.0)
            along = found[0] if motion in ("left", "right") else found[1]
            right_way += along != 0 and (along < 0) == (motion in ("left", "up"))
        fractions[name] = right_way / len(attributes)
    return fractions


def _inputs(work: Path, step: Path | None, release: Path, num: int, seed: int):
    """The run's DiT (EMA weights), ``num`` random training latents with their attributes, a prompt encoder and the
    VAE. The text encoder and the VAE come from ``release``, the folder the recipe wrote from this work folder: the
    ones the caches were built with."""
    step = step or latest_checkpoint(work / "dit")
    if step is None:
        raise ValueError(f"no DiT checkpoint under {work / 'dit'}; give one with --step.")
    config, weights = read_checkpoint_dit(step, "ema")  # as it was trained, EMA weights
    dit = WanDiT.from_state(DiTConfig.from_dict(config), weights, source=step)
    cache = CachedDataset(work / "cache")
    picks = random.Random(seed).sample(range(len(cache)), min(num, len(cache)))
    latents = torch.stack([cache[i]["latents"] for i in picks]).float()
    attributes = [parse_caption(cache.latents[cache.keys[i]]["caption"]) for i in picks]
    encoder, tokenizer = load_umt5_encoder(release, dtype=torch.float32), load_tokenizer(release)

    def encode(prompts: list[str]) -> torch.Tensor:
        return pad_context(encode_prompts(encoder, tokenizer, prompts, cache.text_len), cache.text_len)

    return Path(step), dit, latents, attributes, encode, WanVAE.from_pretrained(release, dtype=torch.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the demo recipe's work folder (cache/ and dit/ inside)")
    parser.add_argument("--step", type=Path, default=None, help="a DiT checkpoint folder (default: the newest)")
    parser.add_argument("--release", type=Path, default=BUNDLED,
                        help="the release folder written from this work folder, whose text encoder and VAE built its "
                             "caches (default: the bundled model)")
    parser.add_argument("--num", type=int, default=48, help="training clips to score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        step, dit, latents, attributes, encode, vae = _inputs(args.work, args.step, args.release, args.num, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = attribute_sensitivity(dit, latents, attributes, encode, seed=args.seed)
    direction = direction_from_first_frame(dit, vae.decode, latents, attributes, encode, seed=args.seed)
    print(json.dumps({"checkpoint": str(step), "clips": len(attributes), "loss": table,
                      "direction_from_first_frame": direction}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
