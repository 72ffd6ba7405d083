"""The Wan diffusion transformer (Wan2.1 t2v/i2v/flf2v, Wan2.2 A14B experts and ti2v-5B).

Module names reproduce the official state-dict keys, so released weights load without conversion.
Dtype policy: linear layers run in the weights' dtype; the residual stream, the time embedding, the
modulation arithmetic, the norms and RoPE stay in float32, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from openwan.configs import DiTConfig
from openwan.models.layers import FP32LayerNorm, RMSNorm, apply_rope, attention, interleave_rope, rope_table
from openwan.models.loading import finish_loading, load_strict, read_weights

_ROPE_CACHE_SIZE = 16


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos, sin] embedding of timesteps t (any shape) -> [..., dim] float32; frequencies 10000^(-i/(dim/2)).

    Formed in float64 like the reference: t reaches 1000, where float32 angles would be off by ~1e-4.
    """
    half = dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=t.device) / half)  # [dim/2]
    angles = t.to(torch.float64)[..., None] * freqs  # [..., dim/2]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def _run_fp32(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Linear/activation stack in float32 even when its weights are stored in bf16."""
    x = x.float()
    for layer in seq:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight.float(), layer.bias.float())
        else:
            x = layer(x)
    return x


class _Attention(nn.Module):
    """q/k/v/o projections with optional RMS q/k norms over the full width (before the head split)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, D] -> [B, L, H, Dh]


class SelfAttention(_Attention):
    # The attention kernel, called like layers.attention. openwan.parallel.parallelize_dit sets a
    # context-parallel one per block (an attribute, so the forward below never changes).
    attn_backend = staticmethod(attention)
    # A diffusion cache's output hook (openwan.runtime.cache sets one per block while it samples):
    # ``out_cache(module, compute)`` returns this module's output [B, L, D], calling ``compute()`` when it must.
    out_cache = None

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.out_cache is not None:
            return self.out_cache(self, lambda: self._attend(x, rope, key_lens))
        return self._attend(x, rope, key_lens)

    def _attend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_lens: torch.Tensor | None
                ) -> torch.Tensor:
        x = x.to(self.q.weight.dtype)  # [B, L, D]
        cos, sin = rope
        q = apply_rope(self.heads(self.norm_q(self.q(x))), cos, sin)  # [B, L, H, Dh]
        k = apply_rope(self.heads(self.norm_k(self.k(x))), cos, sin)
        v = self.heads(self.v(x))
        return self.o(self.attn_backend(q, k, v, key_lens=key_lens).flatten(2))


class CrossAttention(_Attention):
    """Attention from video tokens to the context; with image tokens, a second attention to the first
    ``image_tokens`` context rows (own k_img/v_img) is added before the output projection."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image_tokens: int):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.image_tokens = image_tokens
        if image_tokens:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.q.weight.dtype
        x, context = x.to(dtype), context.to(dtype)  # [B, L, D], [B, image_tokens + text_len, D]
        q = self.heads(self.norm_q(self.q(x)))
        image, text = context[:, : self.image_tokens], context[:, self.image_tokens :]
        out = attention(q, self.heads(self.norm_k(self.k(text))), self.heads(self.v(text)))
        if self.image_tokens:
            k_img = self.heads(self.norm_k_img(self.k_img(image)))
            out = out + attention(q, k_img, self.heads(self.v_img(image)))
        return self.o(out.flatten(2))


class WanBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps) if cfg.cross_attn_norm else nn.Identity()  # affine
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, eps, cfg.image_tokens)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))

    def forward(
        self,
        x: torch.Tensor,  # [B, L, D] float32 residual stream
        e0: torch.Tensor,  # [B, 1 or L, 6, D] float32 time projection
        context: torch.Tensor,  # [B, Lc, D]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [L, Dh] (interleave_rope tables)
        key_lens: torch.Tensor | None = None,  # [B] keys at positions >= key_lens are padding (context parallel)
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0).unbind(2)  # [B, 1|L, D]
        # addcmul: modulate and gate in one pass over the activations each (same maths as a*b + c)
        y = self.self_attn(torch.addcmul(shift1, self.norm1(x), 1 + scale1), rope, key_lens)
        x = torch.addcmul(x, y.float(), gate1)
        x = x + self.cross_attn(self.norm3(x), context).float()
        y = self.ffn(torch.addcmul(shift2, self.norm2(x), 1 + scale2).to(self.ffn[0].weight.dtype))
        return torch.addcmul(x, y.float(), gate2)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # x [B, L, D] float32, e [B, 1 or L, D] float32 (the time embedding, not its projection)
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)  # [B, 1|L, D]
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale).to(self.head.weight.dtype))


class ImageEmbedding(nn.Module):
    """CLIP image tokens -> context rows. flf2v adds a learned position per token of its 2x257 tokens."""

    def __init__(self, image_dim: int, dim: int, image_tokens: int):
        super().__init__()
        # LayerNorm eps 1e-5 (torch's default) in the reference, unlike the blocks' 1e-6.
        self.proj = nn.Sequential(
            FP32LayerNorm(image_dim, eps=1e-5),
            nn.Linear(image_dim, image_dim),
            nn.GELU(),
            nn.Linear(image_dim, dim),
            FP32LayerNorm(dim, eps=1e-5),
        )
        if image_tokens == 514:
            self.emb_pos = nn.Parameter(torch.empty(1, image_tokens, image_dim))
        else:
            self.register_parameter("emb_pos", None)

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        x = clip_fea.float()  # [B, N, image_dim]
        if self.emb_pos is not None:
            x = x + self.emb_pos.float()
        x = self.proj[0](x).to(self.proj[1].weight.dtype)
        return self.proj[4](self.proj[1:4](x))  # [B, N, D]


class WanDiT(nn.Module):
    """The Wan DiT: ``forward(x, t, context, clip_fea=None, y=None) -> [B, out_dim, F, H, W]`` (float32).

    Built on the meta device (``with torch.device("meta"): WanDiT(cfg)``) it skips initialisation; call
    ``init_weights()`` after materialising it, or load weights with ``assign=True``.
    """

    CONFIG = DiTConfig  # what from_config builds from a dict

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if tuple(cfg.window_size) != (-1, -1):
            raise ValueError("local attention windows are not supported; set window_size to (-1, -1).")
        self.cfg = cfg
        self.gradient_checkpointing = False
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.img_emb = ImageEmbedding(cfg.image_dim, dim, cfg.image_tokens) if cfg.image_tokens else None
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # Context parallelism (openwan.parallel.parallelize_dit) sets a splitter that keeps this rank's share
        # of the tokens from the first block to the head; None runs the whole sequence here.
        self.token_split = None
        # A diffusion cache (openwan.runtime.cache) sets a hook around the block stack while it samples:
        # ``cache(model, x, e0, run)`` returns the stack's output, calling ``run(rows, x_rows)`` for the batch rows
        # (None: all) it computes. None runs the blocks.
        self.cache = None
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @classmethod
    def from_config(cls, cfg: DiTConfig | Mapping) -> WanDiT:
        """Random init from a config of this class's kind (``CONFIG``) or an official-style dict (the keys of a
        release's config.json)."""
        if not isinstance(cfg, cls.CONFIG):
            if not isinstance(cfg, Mapping):
                raise ValueError(f"from_config takes a {cls.CONFIG.__name__} or a config dict; got "
                                 f"{type(cfg).__name__}.")
            cfg = cls.CONFIG.from_dict(dict(cfg))
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanDiT:
        """The DiT stored at ``path`` (official or diffusers layout; a release folder, a diffusers
        ``transformer/`` folder or one weights file), its floating weights in ``dtype`` (None: the file's), on
        ``device``, in eval mode. :mod:`openwan.checkpoints` reads the file; the model is built here."""
        config, state, source = read_weights("dit", path)
        return cls.from_state(config, state, source=source, dtype=dtype, device=device)

    @classmethod
    def from_state(cls, cfg: DiTConfig, state: Mapping[str, torch.Tensor], *, source: str | Path = "state dict",
                   dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> WanDiT:
        """Built on the meta device and given ``state`` (official key names) strictly, without a copy."""
        with torch.device("meta"):
            model = cls(cfg)
        load_strict(model, state, source, dtype=dtype)
        return finish_loading(model, device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Training init: xavier-uniform linears and patch embedding, N(0, 0.02) text/time embeddings,
        modulation N(0, 1/dim), unit norms, and a zero head so the model first predicts v = 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, RMSNorm)):
                m.reset_parameters()
        # Fans of the flattened [dim, in_dim * prod(patch)] kernel, as for a linear layer on a patch.
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.cfg.dim, -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        for mod in [b.modulation for b in self.blocks] + [self.head.modulation]:
            nn.init.normal_(mod, std=self.cfg.dim**-0.5)
        nn.init.zeros_(self.head.head.weight)
        if self.img_emb is not None and self.img_emb.emb_pos is not None:
            nn.init.zeros_(self.img_emb.emb_pos)

    # ---------------------------------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The velocity [B, out_dim, F, H, W] in float32.

        x [B, C, F, H, W] noisy latents; t [B] or per-token [B, L] (L = F*H*W / prod(patch_size));
        context [B, L_text <= text_len, text_dim]; clip_fea [B, image_tokens, image_dim] (Wan2.1 i2v/flf2v);
        y [B, in_dim - C, F, H, W] (i2v conditioning: mask + image latents).
        """
        self._check_inputs(x, t, context, clip_fea, y)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        pt, ph, pw = self.cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)

        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # [B, D, f, h, w]
        x = rearrange(x, "b d f h w -> b (f h w) d").float()  # residual stream in float32

        e, e0 = self._time_embeddings(t)  # [B, 1|L, D], [B, 1|L, 6, D]

        context = self._embed_context(context, clip_fea)  # [B, image_tokens + text_len, D]
        rope = self._rope(grid, x.device)
        key_lens = None
        if self.token_split is not None:  # x, per-token e/e0 and rope become this rank's padded shard
            x, e, e0, rope, key_lens = self.token_split.shard(x, e, e0, rope)
        if self.cache is None:
            x = self._run_blocks(x, e0, context, rope, key_lens)
        else:
            def run(rows, h):  # the block stack on some rows of the batch (None: every row)
                if rows is None:
                    return self._run_blocks(h, e0, context, rope, key_lens)
                lens = None if key_lens is None else key_lens[rows]
                return self._run_blocks(h, e0[rows], context[rows], rope, lens)

            x = self.cache(self, x, e0, run)

        x = self.head(x, e).float()  # [B, L, pt*ph*pw*out_dim]
        f, h, w = grid
        if self.token_split is not None:
            x = self.token_split.gather(x, f * h * w)
        return rearrange(
            x, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw
        )

    def _run_blocks(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor], key_lens: torch.Tensor | None) -> torch.Tensor:
        """The residual stream [B, L, D] after every block."""
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, e0, context, rope, key_lens, use_reentrant=False)
            else:
                x = block(x, e0, context, rope, key_lens)
        return x

    def _time_embeddings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The time embedding e [B, 1|L, D] and its projection e0 [B, 1|L, 6, D], float32.

        Per-token timesteps [B, L] take a few distinct values (one per latent frame, or fewer): the MLPs run once
        per distinct value and the rows are gathered, not once per token (for a small DiT whose first frames
        are given clean, a visible share of its training FLOPs). Each row is the same function of its t. (The unique
        values have a data-dependent count: a host sync on GPU, a graph break under a whole-model torch.compile.)"""
        values, inverse = (t, None) if t.ndim == 1 else torch.unique(t, return_inverse=True)
        e = _run_fp32(self.time_embedding, sinusoidal_embedding(values, self.cfg.freq_dim))  # [B or U, D]
        e0 = _run_fp32(self.time_projection, e).unflatten(-1, (6, self.cfg.dim))  # [B or U, 6, D]
        if inverse is None:
            return e[:, None], e0[:, None]
        return e[inverse], e0[inverse]  # [B, L, D], [B, L, 6, D]

    def _embed_context(self, context: torch.Tensor, clip_fea: torch.Tensor | None) -> torch.Tensor:
        # The reference zero-pads every prompt to text_len rows and attends to all of them, padding included.
        context = F.pad(context, (0, 0, 0, self.cfg.text_len - context.shape[1]))  # [B, text_len, text_dim]
        context = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))
        if self.img_emb is None:
            return context
        return torch.cat([self.img_emb(clip_fea).to(context.dtype), context], dim=1)  # image tokens first

    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, device)
        if key not in self._rope_cache:
            if len(self._rope_cache) >= _ROPE_CACHE_SIZE:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = interleave_rope(*rope_table(grid, self.cfg.rope_split, device))
        return self._rope_cache[key]

    def _check_inputs(self, x, t, context, clip_fea, y) -> None:
        cfg = self.cfg
        if x.ndim != 5:
            raise ValueError(
                f"x must be latents of shape [B, C, F, H, W]; got {tuple(x.shape)} — add a batch dimension."
            )
        b, c, f, h, w = x.shape
        c_y = 0
        if y is not None:
            if y.ndim != 5 or y.shape[0] != b or y.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"y must have x's batch size and latent grid, [{b}, C_y, {f}, {h}, {w}]; "
                    f"got {tuple(y.shape)}."
                )
            c_y = y.shape[1]
        if c + c_y != cfg.in_dim:
            hint = f" pass y with the {cfg.in_dim - c} conditioning channels (mask + image latents)." if (
                y is None and c < cfg.in_dim) else ""
            raise ValueError(
                f"x + y channels must equal in_dim = {cfg.in_dim} for this model; got {c} + {c_y}.{hint}"
            )
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(
                f"the latent grid {f}x{h}x{w} is not divisible by the patch size {pt}x{ph}x{pw}; choose a "
                "video whose pixel height and width are multiples of 16 (32 with the Wan2.2 VAE)."
            )
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise ValueError(
                f"context must be text-encoder states of shape [{b}, L, {cfg.text_dim}]; got "
                f"{tuple(context.shape)} — encode the prompts with the model's umT5 encoder, one per sample."
            )
        if context.shape[1] > cfg.text_len:
            raise ValueError(
                f"context has {context.shape[1]} tokens but the model takes at most text_len = "
                f"{cfg.text_len}; truncate the prompt to {cfg.text_len} tokens."
            )
        self._check_clip(clip_fea, b)
        tokens = (f // pt) * (h // ph) * (w // pw)
        if not isinstance(t, torch.Tensor):
            raise ValueError(
                f"t must be a tensor of timesteps, shape [{b}] or [{b}, {tokens}]; wrap it in torch.tensor."
            )
        if not ((t.ndim == 1 and t.shape[0] == b) or (t.ndim == 2 and tuple(t.shape) == (b, tokens))):
            raise ValueError(
                f"t must hold one timestep per sample, shape [{b}], or one per token, shape [{b}, {tokens}]; "
                f"got {tuple(t.shape)}."
            )

    def _check_clip(self, clip_fea, b: int) -> None:
        n, d = self.cfg.image_tokens, self.cfg.image_dim
        if n == 0:
            if clip_fea is not None:
                raise ValueError("this model takes no CLIP image features; pass clip_fea=None.")
            return
        what = "CLIP features of the image"
        if n == 514:
            what = "first- and last-frame CLIP features concatenated"
        if clip_fea is None:
            raise ValueError(f"this model needs clip_fea, the {what}, of shape [{b}, {n}, {d}]; pass it.")
        if tuple(clip_fea.shape) != (b, n, d):
            raise ValueError(
                f"clip_fea must be the {what}, of shape [{b}, {n}, {d}]; got {tuple(clip_fea.shape)}."
            )
