"""Scale-out on torch.distributed: the device mesh, context-parallel attention (Ulysses, Ring, 2D), CFG-parallel
and ``parallelize_dit`` (context parallel, activation checkpointing, compile, FSDP2), applied from outside."""

from openwan.parallel.context import (
    ContextParallelAttention,
    TokenSplit,
    cfg_parallel_forward,
    context_parallel_comm,
    count_sent_bytes,
    latent_tokens,
    ring_attention,
)
from openwan.parallel.mesh import MESH_DIMS, build_mesh, dim_group, dim_size, init_distributed
from openwan.parallel.parallelize import DiTParallelConfig, parallelize_dit, shard_text_encoder

__all__ = [
    "MESH_DIMS",
    "ContextParallelAttention",
    "DiTParallelConfig",
    "TokenSplit",
    "build_mesh",
    "cfg_parallel_forward",
    "context_parallel_comm",
    "count_sent_bytes",
    "dim_group",
    "dim_size",
    "init_distributed",
    "latent_tokens",
    "parallelize_dit",
    "ring_attention",
    "shard_text_encoder",
]
