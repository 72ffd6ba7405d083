"""The CLIP ViT-H/14 image encoder of Wan i2v/flf2v, as transformers' ``CLIPVisionModel``.

Wan feeds the DiT the features after the penultimate of the tower's 32 blocks, with no final norm (the
reference's ``use_31_block``). We therefore build a ``CLIPVisionModel`` with ``num_layers - 1`` blocks and
take its ``last_hidden_state``; the last block's weights are never loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from openwan.configs import ImageEncoderConfig
from openwan.models.loading import load_strict, read_weights

OPENAI_CLIP_MEAN = ImageEncoderConfig.mean
OPENAI_CLIP_STD = ImageEncoderConfig.std


def load_clip_encoder(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
):
    """A ``transformers.CLIPVisionModel`` (eval mode, no gradients) holding the blocks Wan runs.

    ``path``: the release's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, a release folder
    holding it, or a transformers folder of the full tower (the "-Diffusers" release's ``image_encoder/``, or
    that release's root); the last block of the file is dropped. ``dtype`` None keeps the file's dtype.
    """
    from transformers import CLIPVisionModel

    config, state, source = read_weights("clip", path)
    state = {k: _placed(v, dtype, device) for k, v in state.items()}
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    # The final norm only feeds pooler_output, which Wan never uses; a file without it gets the identity.
    floating = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    state.setdefault("post_layernorm.weight", torch.ones(config.hidden_size, dtype=floating, device=device))
    state.setdefault("post_layernorm.bias", torch.zeros_like(state["post_layernorm.weight"]))
    load_strict(model, state, source)
    # position_ids is a non-persistent buffer (not in any file): rebuild the one made on the meta device.
    embeddings = model.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand(1, -1)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    return model.eval().requires_grad_(False)


def _placed(value: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
    return value.to(device=device, dtype=cast)


def clip_preprocess(
    images: torch.Tensor,
    *,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> CLIP input [B, 3, size, size], in float32.

    As the reference: bicubic resize (align_corners=False, no antialiasing), map to [0, 1], then normalise
    with the OpenAI CLIP statistics.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_preprocess takes images shaped [B, 3, H, W]; got {tuple(images.shape)}.")
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Wan's CLIP image features: images [B, 3, H, W] in [-1, 1] -> [B, 1 + (size/patch)², width].

    For the release: [B, 257, 1280]. This equals the reference's ``visual(..., use_31_block=True)``: that
    runs the embeddings (class token, position embedding), ``pre_norm`` and ``transformer[:-1]`` and
    returns, skipping the last block, ``post_norm`` and the head. ``model`` has exactly those
    ``num_layers - 1`` blocks, and a ``CLIPVisionModel``'s ``last_hidden_state`` is the output of its last
    block with no norm after it (its ``post_layernorm`` is applied to ``pooler_output`` only). The same
    features are the full tower's ``hidden_states[-2]``, which is what diffusers' Wan i2v pipeline takes.
    """
    param = next(model.parameters())
    pixels = clip_preprocess(images, size=model.config.image_size).to(device=param.device, dtype=param.dtype)
    return model(pixel_values=pixels).last_hidden_state  # [B, N, width]


__all__ = ["load_clip_encoder", "clip_preprocess", "encode_images", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]
