"""Wan2.1 VACE: the Wan DiT plus VACE context blocks (reference-to-video, control-to-video, masked editing).

The VACE context — inactive and reactive latents (32 channels) and the mask folded to 64 channels at latent
resolution, on the same latent grid as the noise — is patch-embedded into a second token stream. Each VACE block is
a :class:`~openwan.models.dit.WanBlock` on that stream (the first one adds the video tokens to it through
``before_proj``); its ``after_proj`` gives a "hint" that is added, times the context scale, to the residual stream
after the base block named in ``vace_layers``. Module names reproduce the official ``VaceWanModel`` keys.
Without a VACE context (or at scale 0) the network is exactly the base text-to-video DiT.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from openwan.configs import DiTConfig, VaceConfig
from openwan.models.dit import WanBlock, WanDiT
from openwan.models.loading import read_weights


class VaceBlock(WanBlock):
    """A Wan block over the VACE stream c: ``forward(c, x, ...) -> (c, hint)``, both [B, L, D] float32."""

    def __init__(self, cfg: DiTConfig, first: bool):
        super().__init__(cfg)
        # Only the first VACE block sees the video tokens (c = before_proj(c) + x); the others carry c on.
        self.before_proj = nn.Linear(cfg.dim, cfg.dim) if first else None
        self.after_proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], key_lens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.before_proj is not None:
            c = self.before_proj(c.to(self.before_proj.weight.dtype)).float() + x  # [B, L, D]
        c = super().forward(c, e0, context, rope, key_lens)
        return c, self.after_proj(c.to(self.after_proj.weight.dtype)).float()


class WanVaceDiT(WanDiT):
    """The VACE DiT: ``forward(x, t, context, vace_context=None, vace_context_scale=1.0) -> [B, 16, F, H, W]``.

    ``vace_context`` [B, vace_in_dim, F, H, W] is on x's latent grid (reference frames included); the scale is a
    number or one per sample [B]. ``vace_context=None`` runs the base DiT alone.
    """

    CONFIG = VaceConfig  # what from_config builds from a dict
    STREAMED_BLOCKS = ("vace_blocks", "blocks")  # in the order they run, for openwan.runtime.offload.BlockStreamer

    def __init__(self, cfg: VaceConfig):
        if not isinstance(cfg, VaceConfig):
            raise ValueError(f"WanVaceDiT needs a VaceConfig (openwan.configs.VACE_PRESETS); got {type(cfg).__name__}.")
        super().__init__(cfg)  # initialises the base modules unless on the meta device
        self.vace_patch_embedding = nn.Conv3d(cfg.vace_in_dim, cfg.dim, kernel_size=cfg.patch_size,
                                              stride=cfg.patch_size)
        self.vace_blocks = nn.ModuleList(VaceBlock(cfg, first=i == 0) for i in range(len(cfg.vace_layers)))
        self.hint_after = {layer: i for i, layer in enumerate(cfg.vace_layers)}  # base block -> hint index
        self._vace: tuple[torch.Tensor, torch.Tensor, bool] | None = None  # set during one forward only
        if not any(p.is_meta for p in self.parameters()):
            self._init_vace()

    @classmethod
    def from_pretrained(cls, path, *, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> WanVaceDiT:
        """The VACE DiT stored at ``path`` (official or diffusers layout, folder or file), as WanDiT.from_pretrained."""
        config, state, source = read_weights("dit", path)
        if not isinstance(config, VaceConfig):
            raise ValueError(f"{source} holds a Wan DiT without VACE blocks; give a Wan2.1-VACE release "
                             "(its config.json has vace_layers), or load it with WanDiT.from_pretrained.")
        return cls.from_state(config, state, source=source, dtype=dtype, device=device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The base DiT's training init, then the VACE part's (zero projections: a fresh VACE DiT is the base)."""
        super().init_weights()
        if "vace_blocks" in self._modules:
            self._init_vace()

    @torch.no_grad()
    def _init_vace(self) -> None:
        nn.init.xavier_uniform_(self.vace_patch_embedding.weight.view(self.cfg.dim, -1))
        nn.init.zeros_(self.vace_patch_embedding.bias)
        for block in self.vace_blocks:
            nn.init.normal_(block.modulation, std=self.cfg.dim**-0.5)
            for proj in (block.before_proj, block.after_proj):
                if proj is not None:  # the reference starts both at zero
                    nn.init.zeros_(proj.weight)
                    nn.init.zeros_(proj.bias)

    # ---------------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor | None = None,
                y: torch.Tensor | None = None, vace_context: torch.Tensor | None = None,
                vace_context_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """The velocity [B, out_dim, F, H, W] in float32; see :meth:`WanDiT.forward` for x, t and context."""
        if vace_context is None:
            return super().forward(x, t, context, clip_fea, y)
        scale = self._check_vace(x, vace_context, vace_context_scale)
        c = self.vace_patch_embedding(vace_context.to(self.vace_patch_embedding.weight.dtype))  # [B, D, f, h, w]
        c = rearrange(c, "b d f h w -> b (f h w) d").float()
        if self.token_split is not None:  # context parallel: this rank's tokens, as x's (an elementwise hint)
            c = self.token_split.shard_tokens(c)
        # A diffusion cache may run some batch rows alone; that is only sound when every row has the same context.
        same_rows = all(torch.equal(c[0], row) for row in c[1:]) and bool((scale == scale[0]).all())
        self._vace = (c, scale, same_rows)
        try:
            return super().forward(x, t, context, clip_fea, y)
        finally:
            self._vace = None

    def _run_blocks(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor], key_lens: torch.Tensor | None) -> torch.Tensor:
        """The residual stream [B, L, D] after every base block, each hint added after its block."""
        if self._vace is None:
            return super()._run_blocks(x, e0, context, rope, key_lens)
        c, scale, same_rows = self._vace
        if c.shape[0] != x.shape[0]:  # internal invariant: WanDiT.cache runs a subset of identical rows
            if not same_rows:
                raise RuntimeError("a subset of batch rows was run with per-row VACE contexts")
            c, scale = c[:1].expand(x.shape[0], -1, -1), scale[:1].expand(x.shape[0])
        hints = []
        for block in self.vace_blocks:
            c, hint = self._call(block, c, x, e0, context, rope, key_lens)
            hints.append(hint)
        scale = scale[:, None, None]  # [B, 1, 1]
        for i, block in enumerate(self.blocks):
            x = self._call(block, x, e0, context, rope, key_lens)
            if i in self.hint_after:
                x = x + hints[self.hint_after[i]] * scale
        return x

    def _call(self, block: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_vace(self, x: torch.Tensor, vace_context: torch.Tensor, scale) -> torch.Tensor:
        """The scale as a float32 tensor [B]; ValueError for a context or scale that does not fit x."""
        want = (x.shape[0], self.cfg.vace_in_dim, *x.shape[2:])
        if vace_context.ndim != 5 or tuple(vace_context.shape) != want:
            raise ValueError(f"vace_context must be [B, vace_in_dim, F, H, W] = {list(want)} (x's batch and latent "
                             f"grid); got {list(vace_context.shape)} — build it with openwan.pipelines.vace.")
        scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
        if scale.ndim == 0:
            scale = scale.expand(x.shape[0])
        if scale.shape != (x.shape[0],) or not bool(torch.isfinite(scale).all()):
            raise ValueError(f"vace_context_scale must be a finite number or one per sample ({x.shape[0]}); got "
                             f"{scale.tolist()}.")
        return scale


def load_any_dit(path: str | Path, *, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> WanDiT:
    """The DiT at ``path``: a :class:`WanVaceDiT` when its config is a VACE one, else a :class:`WanDiT`."""
    config, state, source = read_weights("dit", path)
    cls = WanVaceDiT if isinstance(config, VaceConfig) else WanDiT
    return cls.from_state(config, state, source=source, dtype=dtype, device=device)
