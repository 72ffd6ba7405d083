"""The demo model's text encoder: the ``demo`` umT5 preset, pre-trained on captions with T5's span corruption
and, optionally, a vocabulary objective.

Wan's umT5 comes pre-trained on text. A randomly initialised one gives each byte a vector that barely depends on
the word it sits in, so a DiT has to find "left" against "right" in a bag of byte vectors (they differ in four or
five of ~35 rows). A few minutes of self-supervised pre-training (mask byte spans, have a 1-layer decoder write
them back, as T5 was trained) makes each byte's state carry its word. The corpus is captions drawn from the
*training* combinations only, so the held-out combinations stay unseen by every part of the model. The encoder is
then frozen, as Wan's is.

Span corruption teaches each byte its word, not which words mean the same: "box" and "square" stay as far apart as
their spellings, so the DiT would have to learn every synonym and every phrasing of a direction from its own share
of the data. The vocabulary objective (``vocabulary_weight``) gives the encoder the knowledge a pre-trained umT5
brings: linear heads read each caption's colour, shape and motion from its mean state (:func:`synonym_gap`
measures it). docs/demo_model.md gives what each objective does to the DiT.

The corpus is phrased as the DiT's training data is (``captions``: the dataset's templates, or its varied grammar,
as ``openwan data synth --captions`` writes them), so that the heads see every verb, direction phrase and way of
not moving that the DiT will; :func:`openwan.data.synthetic.parse_caption` gives each caption its labels. Where
no kind is given, the ``CAPTIONS`` environment variable (as ``recipes/demo_model.sh`` sets it) names it, else the
templates; the kind is recorded in the encoder's folder (``captions.txt``) and a folder of another kind is refused.

    python recipes/demo_text.py OUT_DIR [--steps N] [--vocabulary-weight W] [--captions templates|varied] [--probe]
    # writes OUT_DIR/model.safetensors + config
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ByT5Tokenizer, UMT5EncoderModel, UMT5ForConditionalGeneration

from openwan.configs import TEXT_ENCODER_PRESETS
from openwan.data.synthetic import (
    CAPTION_KINDS,
    COLOURS,
    MOTIONS,
    SHAPE_NOUNS,
    SHAPES,
    make_caption,
    parse_caption,
    split_combinations,
)

TEXT_SEED = 0
TEXT_VOCABULARY_WEIGHT = 1.0  # the recipe's weight of the vocabulary objective beside span corruption
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "motion": MOTIONS}  # parse_caption's order
SENTINEL = 259  # ByT5's <extra_id_0>; <extra_id_k> is 259 + k
PAD, EOS = 0, 1


def random_demo_text_encoder(seed: int = TEXT_SEED):
    """The ``demo`` umT5 encoder with a fixed random init and ByT5's byte-level tokenizer (no download)."""
    torch.manual_seed(seed)
    return UMT5EncoderModel(TEXT_ENCODER_PRESETS["demo"].to_hf()).eval(), ByT5Tokenizer()


def caption_corpus(num: int, seed: int = 0, split: str = "train", captions: str = "templates") -> list[str]:
    """``num`` captions of ``split``'s combinations, phrasing drawn as the dataset draws it (``captions``:
    "templates" or "varied", as :func:`make_caption` takes it)."""
    rng = np.random.default_rng(seed)
    combos = split_combinations(split)
    return [make_caption(*combos[int(rng.integers(len(combos)))], rng, captions) for _ in range(num)]


def caption_kind(captions: str | None = None) -> str:
    """``captions``, else the ``CAPTIONS`` environment variable, else "templates"; checked."""
    kind = captions or os.environ.get("CAPTIONS") or "templates"
    if kind not in CAPTION_KINDS:
        raise ValueError(f"captions (or the CAPTIONS environment variable) must be one of {', '.join(CAPTION_KINDS)}; "
                         f"got {kind!r}.")
    return kind


def attribute_labels(captions: list[str]) -> torch.Tensor:
    """[len(captions), 3] indices of each caption's colour, shape and motion in :data:`ATTRIBUTES`."""
    return torch.tensor([[list(names).index(value) for names, value in zip(ATTRIBUTES.values(), parse_caption(c))]
                         for c in captions])


def mean_state(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, D] mean of ``states`` [B, L, D] over the tokens ``mask`` [B, L] keeps: the caption's state that the
    vocabulary heads read and :func:`synonym_gap` compares."""
    mask = mask[..., None].to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1)


def span_corrupt(ids: list[int], rng: np.random.Generator, density: float = 0.2,
                 mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5 span corruption of one byte sequence (without its EOS): about ``density`` of the bytes, in spans of
    ``mean_span`` on average, are replaced by sentinels in the input and spelled out after them in the target."""
    n = len(ids)
    num_masked = max(1, round(n * density))
    num_spans = max(1, min(num_masked, round(num_masked / mean_span)))
    # Split the masked and the kept bytes into num_spans runs each, then interleave kept, masked, kept, ...
    masked_lengths = _random_partition(num_masked, num_spans, rng)
    kept_lengths = _random_partition(n - num_masked, num_spans, rng, allow_zero_first=True)
    inputs, targets, pos = [], [], 0
    for k, (keep, mask) in enumerate(zip(kept_lengths, masked_lengths)):
        inputs += ids[pos:pos + keep]
        pos += keep
        inputs.append(SENTINEL + k)
        targets += [SENTINEL + k, *ids[pos:pos + mask]]
        pos += mask
    inputs += ids[pos:]
    return inputs + [EOS], targets + [EOS]


def _random_partition(total: int, parts: int, rng: np.random.Generator, allow_zero_first: bool = False) -> list[int]:
    """``total`` split into ``parts`` positive lengths (the first may be 0 when ``allow_zero_first``)."""
    if allow_zero_first:
        return [a - 1 if i == 0 else a for i, a in enumerate(_random_partition(total + 1, parts, rng))]
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else []
    bounds = [0, *map(int, cuts), total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, (ids != PAD).long()


def pretrain_text_encoder(steps: int = 2000, batch_size: int = 128, lr: float = 2e-3, seed: int = TEXT_SEED,
                          corpus_size: int = 50_000, log_every: int = 200, vocabulary_weight: float = 0.0,
                          captions: str = "templates"):
    """Span-corruption pre-training of the ``demo`` umT5 (encoder + a 1-layer decoder, the decoder is dropped).

    ``vocabulary_weight`` > 0 adds the vocabulary objective: three linear heads read the colour, the shape and the
    motion from the mean of the encoder's states on the whole caption (cross-entropy each, heads dropped after).
    Span corruption teaches each byte its word, but not that "box" means what "square" means — a pre-trained umT5
    knows that from its text; this small one learns it from which captions share an attribute. ``captions``: the
    corpus's phrasing, "templates" or "varied" (:func:`caption_corpus`).
    Returns (encoder in eval mode, tokenizer, per-step losses: span corruption plus the weighted vocabulary term)."""
    hf = TEXT_ENCODER_PRESETS["demo"].to_hf()
    hf.is_encoder_decoder, hf.num_decoder_layers, hf.decoder_start_token_id = True, 1, PAD
    torch.manual_seed(seed)
    model = UMT5ForConditionalGeneration(hf).train()
    tokenizer = ByT5Tokenizer()
    rng = np.random.default_rng(seed)
    texts = caption_corpus(corpus_size, seed, captions=captions)
    corpus = [tokenizer(c, add_special_tokens=False).input_ids for c in texts]
    heads = torch.nn.ModuleList()
    if vocabulary_weight > 0:  # the labels (50,000 captions parsed) only when the heads read them
        labels = attribute_labels(texts)
        heads.extend(torch.nn.Linear(hf.d_model, len(names)) for names in ATTRIBUTES.values())
    optim = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    losses, start = [], time.perf_counter()
    for step in range(steps):
        picked = rng.integers(len(corpus), size=batch_size)
        pairs = [span_corrupt(corpus[int(i)], rng) for i in picked]
        inputs, mask = _pad([p[0] for p in pairs])
        targets, _ = _pad([p[1] for p in pairs])
        loss = model(input_ids=inputs, attention_mask=mask, labels=targets.masked_fill(targets == PAD, -100)).loss
        if heads:
            ids, mask = _pad([corpus[int(i)] + [EOS] for i in picked])
            states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = mean_state(states, mask)
            loss = loss + vocabulary_weight * sum(torch.nn.functional.cross_entropy(head(pooled), labels[picked, k])
                                                  for k, head in enumerate(heads))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"text pre-training step {step + 1}/{steps}: loss {np.mean(losses[-log_every:]):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    encoder = UMT5EncoderModel(TEXT_ENCODER_PRESETS["demo"].to_hf())
    kept = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", "shared."))}
    missing = encoder.load_state_dict(kept, strict=False).missing_keys
    if missing:
        raise RuntimeError(f"pre-trained text encoder lacks {missing[:3]}")
    return encoder.eval(), tokenizer, losses


def pretrained_text_encoder(folder: str | Path, steps: int = 2000, vocabulary_weight: float = 0.0,
                            captions: str | None = None):
    """(encoder, tokenizer) from ``folder`` (a transformers folder), pre-training and writing it there first when
    it is not there yet, on captions of the kind :func:`caption_kind` gives for ``captions``. The folder appears
    whole or not at all (written beside it, then renamed); one pre-trained on another kind of captions is refused
    (a folder that records none holds the templates')."""
    folder, kind = Path(folder), caption_kind(captions)
    if (folder / "config.json").is_file():
        recorded = (folder / "captions.txt").read_text().strip() if (folder / "captions.txt").is_file() else "templates"
        if recorded != kind:
            raise ValueError(f"the text encoder in {folder} was pre-trained on {recorded} captions, not {kind}; "
                             "move it away (and the caches and DiT built on it) or use another work folder.")
    else:
        encoder, _, losses = pretrain_text_encoder(steps, vocabulary_weight=vocabulary_weight, captions=kind)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        encoder.save_pretrained(partial)
        (partial / "losses.txt").write_text("".join(f"{x:.5f}\n" for x in losses))
        (partial / "captions.txt").write_text(kind + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return UMT5EncoderModel.from_pretrained(folder).eval(), ByT5Tokenizer()


def attribute_readout(encoder, tokenizer, attribute: str = "motion",
                      checkpoints: tuple[int, ...] = (100, 200, 400, 600), seed: int = 0,
                      text_len: int = 64) -> tuple[list[float], dict[str, float]]:
    """How readily a DiT-like cross-attention finds ``attribute`` (colour, shape or motion) in the encoder's states:
    a per-token MLP into 192 dims (the DiT's text embedding), 3 learned queries attending over the padded states (as
    the DiT's cross-attention does, unmasked) and a linear read of the attribute, trained on 4,000 training-split
    captions. Returns the accuracy on 1,000 held-out-combination captions after each of ``checkpoints`` Adam steps,
    and after the last one per value of the attribute."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}.")
    nn = torch.nn
    column = list(ATTRIBUTES).index(attribute)

    def states_and_labels(captions):
        ids = tokenizer(captions, padding="max_length", max_length=text_len, truncation=True, return_tensors="pt")
        with torch.no_grad():
            states = encoder(**ids).last_hidden_state * ids.attention_mask[..., None]  # zeros past the end, as fed
        return states, attribute_labels(captions)[:, column]

    train_x, train_y = states_and_labels(caption_corpus(4000, seed=5))
    test_x, test_y = states_and_labels(caption_corpus(1000, seed=6, split="heldout"))
    torch.manual_seed(seed)
    dim, heads, values = 192, 3, ATTRIBUTES[attribute]
    embed = nn.Sequential(nn.Linear(train_x.shape[-1], dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
    queries = nn.Parameter(0.02 * torch.randn(heads, dim // heads))
    kv, head = nn.Linear(dim, 2 * dim), nn.Linear(dim, len(values))

    def logits(x):
        k, v = (t.unflatten(-1, (heads, dim // heads)) for t in kv(embed(x)).chunk(2, -1))  # [B, L, heads, d]
        weights = torch.einsum("hd,blhd->bhl", queries, k).mul((dim // heads) ** -0.5).softmax(-1)
        return head(torch.einsum("bhl,blhd->bhd", weights, v).flatten(1))

    optim = torch.optim.Adam([*embed.parameters(), queries, *kv.parameters(), *head.parameters()], lr=3e-4)
    generator, accuracy, right = torch.Generator().manual_seed(seed), [], None
    for step in range(1, max(checkpoints) + 1):
        pick = torch.randint(len(train_x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(logits(train_x[pick]), train_y[pick])
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step in checkpoints:
            with torch.no_grad():
                right = logits(test_x).argmax(-1) == test_y
            accuracy.append(float(right.float().mean()))
    by_value = {v: float(right[test_y == i].float().mean()) for i, v in enumerate(values) if (test_y == i).any()}
    return accuracy, by_value


def synonym_gap(encoder, tokenizer, text_len: int = 64) -> float:
    """How much nearer each other the encoder puts captions that name one shape with different nouns ("box" and
    "square"; "ball", "disc" and "circle") than captions naming different shapes, all else equal: the mean cosine
    similarity of their centred mean states over same-shape pairs minus that over different-shape pairs. About 0
    when a noun's spelling is all the encoder knows of it; up to 2 when it knows which nouns are synonyms."""
    nouns = [(shape, noun) for shape, names in SHAPE_NOUNS.items() for noun in names]
    ids = tokenizer([f"a red {noun} moving to the left" for _, noun in nouns], padding="max_length",
                    max_length=text_len, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder(**ids).last_hidden_state
    pooled = mean_state(states, ids.attention_mask)
    pooled = torch.nn.functional.normalize(pooled - pooled.mean(0), dim=-1)
    similarity = pooled @ pooled.T
    pairs = [(i, j) for i in range(len(nouns)) for j in range(i)]
    same = [similarity[i, j] for i, j in pairs if nouns[i][0] == nouns[j][0]]
    other = [similarity[i, j] for i, j in pairs if nouns[i][0] != nouns[j][0]]
    return float(torch.stack(same).mean() - torch.stack(other).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--vocabulary-weight", type=float, default=TEXT_VOCABULARY_WEIGHT,
                        help="weight of the vocabulary objective (heads read colour, shape and motion from the mean "
                             "state) beside span corruption; 0: span corruption alone (default: the recipe's, "
                             "%(default)s)")
    parser.add_argument("--captions", default=None, choices=list(CAPTION_KINDS),
                        help="the corpus's phrasing, as `openwan data synth --captions` (default: the CAPTIONS "
                             "environment variable, else templates)")
    parser.add_argument("--probe", action="store_true",
                        help="then compare how fast a DiT-like cross-attention reads the motion and the shape from "
                             "its states and from the random encoder's")
    args = parser.parse_args(argv)
    encoder, tokenizer = pretrained_text_encoder(args.out, args.steps, args.vocabulary_weight, args.captions)
    print(f"text encoder: {args.out}")
    if args.probe:
        for name, (enc, tok) in (("random", random_demo_text_encoder()), ("pre-trained", (encoder, tokenizer))):
            print(f"{name} encoder: shape nouns' synonym gap {synonym_gap(enc, tok):.2f}")
            for attribute in ("motion", "shape"):
                accuracy, by_value = attribute_readout(enc, tok, attribute)
                print(f"{name} encoder: held-out {attribute} read after 100/200/400/600 steps: "
                      f"{', '.join(f'{a:.1%}' for a in accuracy)} (at 600: "
                      f"{', '.join(f'{v} {a:.1%}' for v, a in by_value.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
