"""Does the DiT read each part of the prompt? Flow-matching loss with the true prompt against the same prompt with
one attribute swapped (colour, shape or motion of the synthetic shapes data) and against the empty prompt.

A DiT that uses an attribute loses more when that attribute is swapped; equal losses mean the attribute is ignored.
The "opposite" variant reverses each moving prompt's direction (left <-> right, up <-> down; "still" stays): a
clip played backwards is a clip moving the opposite way, so only a DiT that knows which way time runs in its
latents can tell these apart — a model that reads motion as "moving along this axis" scores them alike.
This isolates the text conditioning from the sampler, the VAE and the detector (which ``openwan eval prompts``
measures together), and shows which attribute is learned when, checkpoint by checkpoint.

    python -m openwan.eval.sensitivity runs/demo-model                    # newest DiT checkpoint of the recipe
    python -m openwan.eval.sensitivity runs/demo-model --step runs/demo-model/dit/step-00003000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from openwan.data.synthetic import COLOURS, MOTIONS, SHAPES, canonical_caption
from openwan.train.trainer import flow_matching_loss

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


def _demo_inputs(work: Path, step: Path | None, num: int, seed: int):
    """The recipe's DiT (EMA weights), ``num`` random training latents with their attributes, and its encoder."""
    from openwan.data.cache import CachedDataset
    from openwan.data.synthetic import parse_caption
    from openwan.models.text_encoder import encode_prompts, pad_context
    from openwan.recipes.demo_model import demo_text_encoder
    from openwan.train.checkpoint import checkpoint_dit, latest_checkpoint

    step = step or latest_checkpoint(work / "dit")
    if step is None:
        raise ValueError(f"no DiT checkpoint under {work / 'dit'}; give one with --step.")
    dit = checkpoint_dit(step, "ema")  # as it was trained, EMA weights
    cache = CachedDataset(work / "cache")
    picks = random.Random(seed).sample(range(len(cache)), min(num, len(cache)))
    latents = torch.stack([cache[i]["latents"] for i in picks]).float()
    attributes = [parse_caption(cache.latents[cache.keys[i]]["caption"]) for i in picks]
    encoder, tokenizer = demo_text_encoder(work)

    def encode(prompts: list[str]) -> torch.Tensor:
        return pad_context(encode_prompts(encoder, tokenizer, prompts, cache.text_len), cache.text_len)

    return Path(step), dit, latents, attributes, encode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the demo recipe's work folder (cache/ and dit/ inside)")
    parser.add_argument("--step", type=Path, default=None, help="a DiT checkpoint folder (default: the newest)")
    parser.add_argument("--num", type=int, default=48, help="training clips to score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        step, dit, latents, attributes, encode = _demo_inputs(args.work, args.step, args.num, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = attribute_sensitivity(dit, latents, attributes, encode, seed=args.seed)
    print(json.dumps({"checkpoint": str(step), "clips": len(attributes), "loss": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
