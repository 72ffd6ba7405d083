"""``parallelize_dit``: the one function that applies parallelism to a WanDiT, from outside.

In order: context parallelism (a token splitter on the model and an attention backend on each block's
self-attention — attributes the model already calls, no forward is replaced), activation checkpointing per
block, optional per-block ``torch.compile``, then FSDP2 per block and at the root. On one rank it changes
nothing but checkpointing and compile. ``shard_text_encoder`` puts the umT5 encoder under FSDP2 the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from openwan.parallel.context import ContextParallelAttention, TokenSplit
from openwan.parallel.mesh import dim_group, dim_size, flat_group, flat_mesh


@dataclass(frozen=True)
class DiTParallelConfig:
    """What ``parallelize_dit`` applies besides the context parallelism the mesh asks for."""

    fsdp: bool = True  # shard parameters, gradients and optimizer state over all ranks of the mesh
    activation_checkpointing: bool = False  # recompute each block in the backward
    compile: bool = False  # torch.compile each block, in place
    param_dtype: torch.dtype | None = None  # FSDP's compute dtype; None: bfloat16 on CUDA, float32 on CPU
    reduce_dtype: torch.dtype = torch.float32  # gradient reduce-scatter dtype
    reshard_after_forward: bool = True  # free gathered parameters after each block's forward


def parallelize_dit(model: nn.Module, mesh: DeviceMesh | None, cfg: DiTParallelConfig = DiTParallelConfig()
                    ) -> nn.Module:
    """Apply ``mesh`` (dims as ``build_mesh`` makes them: "dp", "cfg", "ring", "ulysses") and ``cfg`` to a
    WanDiT in place and return it. ``mesh`` None or of size 1 is the one-process model.

    Under context parallelism every rank of a ring × ulysses group must get the same inputs, and the model's
    output comes back whole on each of them; training computes the same loss on each. FSDP then sums the
    gradients over a context-parallel group (each rank holds its tokens' share) and averages over the rest.
    """
    ring, ulysses = dim_size(mesh, "ring"), dim_size(mesh, "ulysses")
    heads = model.cfg.num_heads
    if heads % ulysses:
        raise ValueError(f"Ulysses splits the {heads} attention heads over its {ulysses} ranks; choose a ulysses "
                         f"size that divides {heads} and put the other ranks on ring.")
    if ring * ulysses > 1:
        apply_context_parallel(model, mesh)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing = True  # the model checkpoints each block through torch.utils.checkpoint
    if cfg.compile:
        for block in dit_blocks(model):
            block.compile()  # in place: parameter names (official keys) are unchanged
    if cfg.fsdp and mesh is not None and mesh.size() > 1:
        apply_fsdp(model, mesh, cfg, blocks=dit_blocks(model), samples=mesh.size() // (ring * ulysses))
    return model


def dit_blocks(model: nn.Module) -> list[nn.Module]:
    """Every transformer block of a DiT: its ``blocks``, and first a VACE DiT's ``vace_blocks`` (the lists its
    ``STREAMED_BLOCKS`` names, in the order they run)."""
    return [block for name in getattr(model, "STREAMED_BLOCKS", ("blocks",)) for block in getattr(model, name)]


def apply_context_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Shard the tokens over the mesh's ring × ulysses ranks and give every block the matching attention (a VACE
    DiT's context blocks too: its VACE tokens lie on the video's latent grid and are sharded the same way)."""
    model.token_split = TokenSplit(flat_group(mesh, ("ring", "ulysses")))
    backend = ContextParallelAttention(dim_group(mesh, "ulysses"), dim_group(mesh, "ring"))
    for block in dit_blocks(model):
        block.self_attn.attn_backend = backend


def shard_text_encoder(encoder: nn.Module, mesh: DeviceMesh, cfg: DiTParallelConfig = DiTParallelConfig()
                       ) -> nn.Module:
    """FSDP2 over all ranks of ``mesh`` for a transformers umT5 encoder (each block, then the root)."""
    stack = getattr(encoder, "encoder", encoder)
    blocks = getattr(stack, "block", None)
    if blocks is None:
        raise ValueError("shard_text_encoder takes a transformers UMT5EncoderModel (from load_umt5_encoder).")
    if mesh.size() > 1:
        apply_fsdp(encoder, mesh, cfg, blocks=blocks, samples=mesh.size())
    return encoder


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, cfg: DiTParallelConfig, blocks, samples: int) -> None:
    """fully_shard each block, then the root; gradients are summed and divided by ``samples``."""
    param_dtype = cfg.param_dtype
    if param_dtype is None:
        param_dtype = torch.bfloat16 if mesh.device_type == "cuda" else torch.float32
    # The model places its own casts (residual stream, RoPE, time embedding stay float32): FSDP must not
    # cast the inputs of a block or of the root.
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=cfg.reduce_dtype, cast_forward_inputs=False)
    fsdp_mesh = flat_mesh(mesh)
    for block in blocks:
        fully_shard(block, mesh=fsdp_mesh, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mesh=fsdp_mesh, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(float(samples))
            if mesh.device_type == "cpu":
                module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; divide after the sum
