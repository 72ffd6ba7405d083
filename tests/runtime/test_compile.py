"""Regional torch.compile: a compiled tiny DiT (each block compiled) gives eager's numbers."""

from __future__ import annotations

import copy

import pytest
import torch

from openwan.configs import DIT_PRESETS, VAE_PRESETS
from openwan.models import WanDiT, WanVAE
from openwan.runtime.compile import compile_blocks, compiled_regions, cpu_compiler_problem, is_compiled
from tiny import randomize

needs_compiler = pytest.mark.skipif(cpu_compiler_problem() is not None, reason=str(cpu_compiler_problem()))


@pytest.mark.slow  # ~35 s of inductor C++ builds on 2 shared cores
@needs_compiler
@torch.no_grad()
def test_compiled_dit_equals_eager():
    torch._dynamo.reset()
    dit = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.05)
    x = torch.randn(1, dit.cfg.in_dim, 2, 8, 8)
    t = torch.tensor([700.0])
    context = torch.randn(1, 12, dit.cfg.text_dim)
    ref = dit(x, t, context)
    compiled = compile_blocks(copy.deepcopy(dit))
    assert is_compiled(compiled) and not is_compiled(dit)
    assert list(compiled.state_dict()) == list(dit.state_dict())  # official key names unchanged
    out = compiled(x, t, context)
    assert ref.abs().mean() > 1e-2
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
    # the graph really ran: a changed weight reaches the compiled output
    compiled.blocks[0].ffn[2].weight.add_(0.1)
    assert ((compiled(x, t, context) - ref).abs().max() / ref.abs().max()).item() > 1e-3


def test_regions_are_the_dit_blocks_and_the_vae_decoders_stateless_parts():
    dit = WanDiT(DIT_PRESETS["tiny"])
    assert compiled_regions(dit) == list(dit.blocks)
    vae = WanVAE(VAE_PRESETS["tiny"])
    names = {type(m).__name__ for m in compiled_regions(vae)}
    assert names == {"AttentionBlock", "RMSNorm"}
    with pytest.raises(ValueError, match="compile_blocks takes a WanDiT or a WanVAE; got Linear"):
        compile_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_blocks(dit, mode="fast")
    assert not is_compiled(dit)


@pytest.mark.slow  # ~50 s of inductor C++ builds on 2 shared cores
@needs_compiler
@torch.no_grad()
def test_compiled_vae_decoder_equals_eager():
    vae = randomize(WanVAE(VAE_PRESETS["tiny"]), std=0.1)
    z = torch.randn(1, vae.cfg.z_dim, 3, 4, 4)
    ref = vae.decode(z)
    out = compile_blocks(copy.deepcopy(vae)).decode(z)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
