"""Block streaming (``openwan generate --stream-blocks``, which attaches a BlockStreamer to each DiT) on a GPU: the
peak memory is the non-block weights plus a few blocks plus activations, far below the resident model, and the
result is the resident model's."""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch
from torch import nn

from openwan.checkpoints.release import save_release
from openwan.configs import DIT_PRESETS
from openwan.models import WanDiT
from openwan.pipelines import WanPipeline
from openwan.runtime.offload import BlockStreamer
from tiny import tiny_components

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextlib.contextmanager
def peak_memory():
    """Yields a dict; on exit its "bytes" is the peak GPU memory of the block above what was allocated before it."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = {}
    yield result
    torch.cuda.synchronize()
    result["bytes"] = torch.cuda.max_memory_allocated() - base


def test_streamed_dit_peak_memory_stays_far_below_the_resident_model():
    dit = WanDiT(DIT_PRESETS["t2v-1.3B"].replace(num_layers=16))  # released widths, 16 of its 30 blocks
    nn.init.xavier_uniform_(dit.head.head.weight)  # a real output to compare (the training init's head is zero)
    dit = dit.to(torch.bfloat16).eval()
    resident = nbytes(dit)
    block = max(nbytes(b) for b in dit.blocks)
    non_block = resident - sum(nbytes(b) for b in dit.blocks)
    g = torch.Generator(CUDA).manual_seed(0)
    inputs = (torch.randn(1, 16, 5, 30, 52, generator=g, device=CUDA), torch.tensor([500.0], device=CUDA),
              torch.randn(1, 512, 4096, generator=g, device=CUDA, dtype=torch.bfloat16))

    with torch.no_grad(), peak_memory() as streamed_peak:
        streamer = BlockStreamer(dit, CUDA, prefetch=1).attach()  # as --stream-blocks does
        streamed = dit(*inputs)
    streamer.detach()
    assert streamer.max_resident == 2  # the running block and the one being prefetched
    assert all(p.device.type == "cpu" for p in dit.blocks.parameters())  # every block's device copy was dropped

    dit.to("cpu")
    with torch.no_grad(), peak_memory() as full_peak:
        dit.to(CUDA)
        full = dit(*inputs)
    # Same kernels on the same values on the compute stream (the side stream only copies): bit-identical.
    assert torch.equal(streamed, full)

    activations = full_peak["bytes"] - resident
    assert activations > 0
    # Three blocks: running, prefetched, and the previous one until its side-stream copy's last use is retired.
    assert streamed_peak["bytes"] <= non_block + 3 * block + activations + 64 * 2**20, (streamed_peak, resident)
    assert streamed_peak["bytes"] < resident / 2, (streamed_peak, resident)


def test_generation_with_streamed_blocks_equals_resident(tmp_path):
    """The pipeline's --stream-blocks path on CUDA (pinned host blocks, side-stream copies, events) in bf16."""
    release = save_release(tmp_path / "tiny", **tiny_components("tiny"))
    noise = torch.randn(16, 2, 4, 4)
    plain = WanPipeline.from_pretrained(release, device="cuda")
    streamed = WanPipeline.from_pretrained(release, device="cuda", stream_blocks=True)
    assert plain.dtype == streamed.dtype == torch.bfloat16
    a = plain("a cat", size=(32, 32), frame_num=5, sample_steps=3, latents=noise, progress=False)
    b = streamed("a cat", size=(32, 32), frame_num=5, sample_steps=3, latents=noise, progress=False)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.video, b.video)
    assert streamed._streamers[0].max_resident == 2
    assert all(p.device.type == "cpu" for p in streamed.dit.blocks.parameters())
