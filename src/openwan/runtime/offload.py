"""Memory modes: move whole models between stages, or stream a DiT's blocks to the GPU one at a time.

Both work through module hooks and ``Parameter.data`` swaps, applied from outside; no forward is replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def on_device(model: nn.Module | None, device: torch.device | str, offload: bool) -> Iterator[nn.Module | None]:
    """Run a stage with ``model`` on ``device``; with ``offload`` it goes back to the CPU afterwards."""
    if model is None:
        yield None
        return
    if _is_streamed(model):  # a block streamer owns placement
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        if offload and torch.device(device).type != "cpu":
            model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _is_streamed(model: nn.Module) -> bool:
    return getattr(model, "_openwan_block_streamer", None) is not None


class BlockStreamer:
    """Keep the model's blocks in (pinned) CPU memory and bring each block to ``device`` just before it runs.

    The blocks are the lists named by ``blocks_attr`` (default: the model's ``STREAMED_BLOCKS``, in the order they
    run — a VACE DiT's context blocks, then its base blocks — else ``blocks``), taken as one sequence.

    The next ``prefetch`` blocks are copied on a side CUDA stream while the current one computes, so the copy is
    hidden behind compute; a block's device copy is dropped as soon as its forward returns. Everything that is
    not a block (embeddings, head) lives on ``device``. Peak memory is the non-block weights plus
    ``prefetch + 1`` blocks plus activations. On a CPU ``device`` the same machinery runs with plain copies, which
    is how the tests check that streaming leaves the numbers unchanged.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, prefetch: int = 1,
                 blocks_attr: str | tuple[str, ...] | None = None):
        self.model = model
        self.device = torch.device(device)
        self.prefetch = max(0, prefetch)
        if blocks_attr is None:
            blocks_attr = getattr(model, "STREAMED_BLOCKS", "blocks")
        names = (blocks_attr,) if isinstance(blocks_attr, str) else tuple(blocks_attr)
        self.blocks: list[nn.Module] = [block for name in names for block in getattr(model, name)]
        self._storage: list[dict[str, torch.Tensor]] = []
        self._loaded: dict[int, torch.cuda.Event | None] = {}
        self._handles: list = []
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self.max_resident = 0  # most blocks on the device at once (for tests and reports)

    # -- setup -------------------------------------------------------------------------------------------
    def attach(self) -> BlockStreamer:
        block_ids = {id(t) for block in self.blocks for _, t in _tensors(block)}
        for p in self.model.parameters():
            if id(p) not in block_ids:
                p.data = p.data.to(self.device)
        for b_name, b in self.model.named_buffers():
            if id(b) not in block_ids:
                _set_buffer(self.model, b_name, b.to(self.device))
        for block in self.blocks:
            storage = {}
            for name, t in _tensors(block):
                host = t.detach().to("cpu")
                if self._cuda:
                    host = host.pin_memory()
                storage[name] = host
                _assign(block, name, host)
            self._storage.append(storage)
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._make_post_hook(i)))
        self.model._openwan_block_streamer = self
        return self

    def detach(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i in list(self._loaded):
            self._release(i)
        self.model._openwan_block_streamer = None
        return self.model

    # -- streaming ---------------------------------------------------------------------------------------
    def _load(self, i: int) -> None:
        if i in self._loaded or i >= len(self.blocks):
            return
        block, storage = self.blocks[i], self._storage[i]
        if self._cuda:
            with torch.cuda.stream(self._stream):
                for name, host in storage.items():
                    _assign(block, name, host.to(self.device, non_blocking=True))
                event = torch.cuda.Event()
                event.record(self._stream)
        else:
            for name, host in storage.items():
                _assign(block, name, host.clone())
            event = None
        self._loaded[i] = event
        self.max_resident = max(self.max_resident, len(self._loaded))

    def _release(self, i: int) -> None:
        self._loaded.pop(i, None)
        block = self.blocks[i]
        for name, host in self._storage[i].items():
            if self._cuda:  # the copy was made on the side stream but used on the compute stream
                _get(block, name).record_stream(torch.cuda.current_stream(self.device))
            _assign(block, name, host)

    def _make_pre_hook(self, i: int):
        def hook(module, args):
            self._load(i)
            event = self._loaded[i]
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            for j in range(i + 1, i + 1 + self.prefetch):
                self._load(j)

        return hook

    def _make_post_hook(self, i: int):
        def hook(module, args, output):
            self._release(i)

        return hook


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def _get(module: nn.Module, name: str) -> torch.Tensor:
    owner, leaf = _owner(module, name)
    return getattr(owner, leaf)


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, leaf = _owner(module, name)
    current = getattr(owner, leaf)
    if isinstance(current, nn.Parameter):
        current.data = tensor
    else:
        owner._buffers[leaf] = tensor


def _set_buffer(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, leaf = _owner(module, name)
    owner._buffers[leaf] = tensor
