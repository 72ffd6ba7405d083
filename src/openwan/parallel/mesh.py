"""The device mesh: joining a torchrun job and laying its ranks out as ("dp", "cfg", "ring", "ulysses").

The last dimension varies fastest, so the ranks of a Ulysses group are neighbours — on one node, where the
all-to-all is cheap — and Ring groups span nodes. "cfg" puts the conditional and unconditional branches of
classifier-free guidance on different ranks (generation); "dp" holds different samples (training).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("dp", "cfg", "ring", "ulysses")


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the job torchrun started (``env://``) and return (rank, world_size); (0, 1) without torchrun.

    NCCL with one GPU per local rank when CUDA is available, gloo otherwise. Safe to call twice.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def close_distributed(wait: bool = True) -> None:
    """Leave the process group, if one is open: with ``wait``, first until every rank gets here (so rank 0 has
    finished writing before its peers exit — a gloo rank that exits while a peer is still connected can abort
    it). Pass ``wait=False`` on paths where a peer may already have died, which would leave the barrier hanging."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def build_mesh(*, dp: int = 1, cfg: int = 1, ring: int = 1, ulysses: int = 1,
               device_type: str | None = None) -> DeviceMesh:
    """A 4-D mesh with dims ``MESH_DIMS`` over all ranks of the default process group (sizes of 1 are kept)."""
    sizes = {"dp": dp, "cfg": cfg, "ring": ring, "ulysses": ulysses}
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"the {name} size must be a positive integer; got {size!r}.")
    if cfg not in (1, 2):
        raise ValueError(f"CFG-parallel splits two branches, so the cfg size must be 1 or 2; got {cfg}.")
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    product = dp * cfg * ring * ulysses
    if product != world:
        raise ValueError(
            f"dp × cfg × ring × ulysses = {dp} × {cfg} × {ring} × {ulysses} = {product}, but {world} processes "
            f"were started; choose sizes whose product is {world}."
        )
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return init_device_mesh(device_type, (dp, cfg, ring, ulysses), mesh_dim_names=MESH_DIMS)


def dim_size(mesh: DeviceMesh | None, name: str) -> int:
    """Size of the named mesh dimension; 1 if there is no mesh or no such dimension."""
    if mesh is None or name not in (mesh.mesh_dim_names or ()):
        return 1
    return mesh[name].size()


def dim_group(mesh: DeviceMesh | None, name: str) -> dist.ProcessGroup | None:
    """This rank's process group along the named dimension; None where that dimension has size 1."""
    return mesh[name].get_group() if dim_size(mesh, name) > 1 else None


def flat_group(mesh: DeviceMesh, names: tuple[str, ...]) -> dist.ProcessGroup | None:
    """One group over the named dimensions (this rank's slice of them), ranks in mesh order; None if size 1."""
    names = tuple(n for n in names if dim_size(mesh, n) > 1)
    if not names:
        return None
    if len(names) == 1:
        return mesh[names[0]].get_group()
    return mesh[names]._flatten("_".join(names)).get_group()


def flat_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """All ranks of ``mesh`` as one 1-D mesh (what FSDP shards over)."""
    if mesh.ndim == 1:
        return mesh
    return mesh._flatten("_".join(mesh.mesh_dim_names or ("all",)))
