"""The encoders' configs and presets: umT5 (text) and the CLIP ViT-H/14 vision tower (images)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openwan.configs.fields import _from_dict, _to_dict

# ------------------------------------------------------------------------------------- text encoder


@dataclass(frozen=True)
class TextEncoderConfig:
    """umT5 encoder. ``to_hf`` gives the transformers ``UMT5Config`` that computes the same maths."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_hf(self):  # -> transformers.UMT5Config
        from transformers import UMT5Config

        return UMT5Config(
            vocab_size=self.vocab_size,
            d_model=self.dim,
            d_kv=self.dim_attn // self.num_heads,
            d_ff=self.ffn_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance,
            layer_norm_epsilon=self.eps,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
        )


TEXT_ENCODER_PRESETS: dict[str, TextEncoderConfig] = {
    "umt5-xxl": TextEncoderConfig(),
    # Byte-level vocabulary (ByT5's 384 ids) so a tokenizer that ships with transformers serves it.
    "tiny": TextEncoderConfig(vocab_size=384, dim=32, dim_attn=32, ffn_dim=64, num_heads=4, num_layers=2,
                              text_len=32),
    "demo": TextEncoderConfig(vocab_size=384, dim=64, dim_attn=64, ffn_dim=128, num_heads=4, num_layers=2,
                              text_len=64),
}

# ------------------------------------------------------------------------------------ image encoder


@dataclass(frozen=True)
class ImageEncoderConfig:
    """The vision tower of open-clip XLM-RoBERTa-large ViT-H/14, as used by Wan i2v/flf2v.

    Only ``num_layers - 1`` blocks are run (features after the penultimate block, no final norm).
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    eps: float = 1e-5
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageEncoderConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_hf(self):  # -> transformers.CLIPVisionConfig (only the blocks that are used)
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(
            hidden_size=self.width,
            intermediate_size=int(self.width * self.mlp_ratio),
            num_hidden_layers=self.num_layers - 1,
            num_attention_heads=self.num_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.eps,
            num_channels=3,
        )


IMAGE_ENCODER_PRESETS: dict[str, ImageEncoderConfig] = {
    "clip-vit-h-14": ImageEncoderConfig(),
    # 224 px / 14 = 257 tokens like the release, so it feeds the tiny i2v DiT (image_dim 32).
    "tiny": ImageEncoderConfig(image_size=224, patch_size=14, width=32, num_layers=3, num_heads=2),
}
