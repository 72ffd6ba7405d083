"""The umT5-XXL text encoder, as transformers' ``UMT5EncoderModel``, and Wan's prompt handling.

The reference's own T5 encoder computes exactly the maths of ``UMT5EncoderModel`` (per-layer relative
position bias, RMSNorm, no attention scaling, gated GELU-tanh FFN), so the network is transformers'; what is
Wan's is the reading of the release file (``openwan.checkpoints.encoders``) and how prompts become the DiT's
context: clean the text, tokenize to ``text_len`` with EOS, encode with the padding masked, keep each
prompt's own rows, and zero-pad them back to ``text_len`` for the DiT (which attends to the padding rows too).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import ftfy
import torch

from openwan.models.loading import load_strict, read_weights


def load_umt5_encoder(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
):
    """A ``transformers.UMT5EncoderModel`` (in eval mode, no gradients) with the weights at ``path``.

    ``path``: the release's ``models_t5_umt5-xxl-enc-bf16.pth``, a release folder holding it, a transformers
    folder (the "-Diffusers" release's ``text_encoder/``, or that release's root). ``dtype`` None keeps the
    file's dtype (bfloat16 for the release). The model is built on the meta device and takes the file's
    tensors, so the 5.7B encoder is never in memory twice.
    """
    from transformers import UMT5EncoderModel

    config, state, source = read_weights("umt5", path)
    state = _placed(state, dtype, device)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    load_strict(model, state, source)
    # Loading by assignment gives the two tied embedding names two Parameter objects; make them one again.
    model.encoder.embed_tokens.weight = model.shared.weight
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    return model.eval().requires_grad_(False)


def _placed(state: dict[str, torch.Tensor], dtype: torch.dtype | None, device) -> dict[str, torch.Tensor]:
    """Tensors moved to ``device`` and floating ones cast to ``dtype``; tied tensors stay tied."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for key, value in state.items():
        if id(value) not in done:
            cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
            done[id(value)] = value.to(device=device, dtype=cast)
        out[key] = done[id(value)]
    return out


# ---------------------------------------------------------------------------------------------- prompts


def clean_prompt(text: str) -> str:
    """The reference's prompt cleaning: repair mojibake, unescape HTML (twice), collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


_TOKENIZER_SUBFOLDERS = ("google/umt5-xxl", "tokenizer")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


def load_tokenizer(path: str | Path):
    """The umT5 tokenizer from a folder: the release's ``google/umt5-xxl/``, a diffusers ``tokenizer/``, or
    the release root holding either."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.is_dir():
        for sub in _TOKENIZER_SUBFOLDERS:
            if (path / sub).is_dir():
                path = path / sub
                break
    if not path.is_dir() or not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(
            f"{path} is not a tokenizer folder; point at the release's google/umt5-xxl/ folder (or the "
            "diffusers release's tokenizer/), which holds tokenizer.json or spiece.model."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} holds a tokenizer that could not be loaded ({str(err).splitlines()[0]}); restore the "
            "folder from the release."
        ) from None


@torch.no_grad()
def encode_prompts(
    encoder, tokenizer, prompts: str | Sequence[str], text_len: int = 512
) -> list[torch.Tensor]:
    """Each prompt's umT5 features, trimmed to its own tokens (EOS included): a list of [L_i, dim].

    As in the reference: clean, tokenize with EOS appended, pad (id 0) or truncate to ``text_len``, and run
    the encoder with the padding masked out; the rows of the padding are not returned.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    tokens = tokenizer(
        [clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=text_len,
        add_special_tokens=True, return_tensors="pt",
    )
    device = next(encoder.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)  # [B, text_len]
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, text_len, dim]
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [h[:n] for h, n in zip(hidden, lengths)]


def pad_context(context: Sequence[torch.Tensor], text_len: int = 512) -> torch.Tensor:
    """Trimmed prompt features [L_i, dim] zero-padded to a batch [B, text_len, dim], as the DiT takes them."""
    if not context:
        raise ValueError("pad_context needs at least one prompt's features; encode a prompt first.")
    too_long = [u.shape[0] for u in context if u.shape[0] > text_len]
    if too_long:
        raise ValueError(
            f"prompt features of {max(too_long)} tokens exceed text_len={text_len}; raise text_len."
        )
    first = context[0]
    out = first.new_zeros(len(context), text_len, first.shape[-1])
    for i, u in enumerate(context):
        out[i, : u.shape[0]] = u
    return out


__all__ = ["load_umt5_encoder", "load_tokenizer", "clean_prompt", "encode_prompts", "pad_context"]
