"""Context parallel (Ulysses, Ring, 2D), CFG-parallel and FSDP2 on real CPU processes (gloo) equal one process.

Two launches serve all multi-process tests: 2 ranks ("two") and 4 ranks as a 2×2 mesh ("four"); each rank runs
the checks in parallel_worker.py and rank 0 hands back outputs, losses, gradients and bytes sent. The one-process
references are computed here, in the test process, from the same seeds.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from parallel_worker import (
    EVEN,
    LR,
    ODD,
    inputs,
    launch,
    tiny_dit,
    tiny_umt5,
    train_batch,
    train_loss,
    vace_inputs,
)
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict, set_state_dict

from openwan.configs import DIT_PRESETS
from openwan.parallel import DiTParallelConfig, build_mesh, context_parallel_comm, latent_tokens, parallelize_dit

TOL = 1e-5  # max |parallel - one process| / max |one process|


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    return launch(2, "two", out), out


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = tmp_path_factory.mktemp("four_ranks")
    return launch(4, "four", out), out


@torch.no_grad()
def _reference(preset: str, grid, per_token: bool = False) -> torch.Tensor:
    model = tiny_dit(preset)
    return model(*inputs(model, grid, per_token=per_token))


def _reference_step(batches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = tiny_dit()
    loss = torch.stack([train_loss(model, b) for b in batches]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _grad_rel(grads: dict, ref: dict) -> float:
    assert grads.keys() == ref.keys()
    scale = max(g.abs().max() for g in ref.values())
    return max((grads[n] - ref[n]).abs().max() for n in ref).item() / scale.item()


# ------------------------------------------------------------------------------------ one process


def test_world_size_one_is_the_plain_model():
    plain, wrapped = tiny_dit(), tiny_dit()
    parallelize_dit(wrapped, None, DiTParallelConfig(activation_checkpointing=True))
    assert wrapped.token_split is None
    batch = train_batch(plain, seed=1)
    loss_plain, loss_wrapped = train_loss(plain, batch), train_loss(wrapped, batch)
    loss_plain.backward()
    loss_wrapped.backward()
    assert torch.equal(loss_plain, loss_wrapped)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_compiled_blocks_compute_the_plain_model_on_cpu():
    """``compile=True`` (inductor's C++ backend here) keeps the parameter names and the maths of a training step."""
    plain, compiled = tiny_dit(), tiny_dit()
    parallelize_dit(compiled, None, DiTParallelConfig(compile=True))
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)  # nn.Module.compile's mark
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    for seed in (1, 2):  # a second batch reuses the compiled code
        batch = train_batch(plain, seed=seed)
        loss_plain, loss_compiled = train_loss(plain, batch), train_loss(compiled, batch)
        loss_plain.backward()
        loss_compiled.backward()
        assert _rel(loss_compiled.detach(), loss_plain.detach()) < 1e-5
        grads = {n: p.grad for n, p in compiled.named_parameters()}
        assert _grad_rel(grads, {n: p.grad for n, p in plain.named_parameters()}) < 1e-4
        plain.zero_grad()
        compiled.zero_grad()


def test_build_mesh_needs_sizes_that_multiply_to_the_world_size():
    with pytest.raises(ValueError, match="product"):
        build_mesh(ulysses=2)  # this process is a world of one
    with pytest.raises(ValueError, match="cfg size"):
        build_mesh(cfg=3)


def test_token_counts_of_the_release_resolutions():
    cfg = DIT_PRESETS["t2v-14B"]
    assert latent_tokens(cfg, 81, 720, 1280) == 75_600
    assert latent_tokens(cfg, 81, 480, 832) == 32_760


# ------------------------------------------------------------------------------------ two ranks


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
@pytest.mark.parametrize("grid", ["even", "odd"])
def test_context_parallel_forward_equals_one_process(two, mode, grid):
    results, _ = two
    ref = _reference("tiny", EVEN if grid == "even" else ODD)
    assert _rel(results[f"{mode}_{grid}"]["out"], ref) <= TOL


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_per_token_timesteps_follow_the_shard(two, mode):
    results, _ = two
    for grid, label in ((EVEN, "even"), (ODD, "odd")):
        ref = _reference("tiny-ti2v", grid, per_token=True)
        assert _rel(results[f"{mode}_ti2v_{label}"]["out"], ref) <= TOL


@pytest.mark.parametrize("mode", ["ulysses", "ring", "ring_fsdp"])
def test_vace_blocks_under_context_parallel_equal_one_process(two, mode):
    """The VACE context is sharded as the video tokens are, so each rank adds its own tokens' hints."""
    results, _ = two
    model = tiny_dit("tiny-vace")
    for label, grid in (("even", EVEN), ("odd", ODD)):
        with torch.no_grad():
            ref = model(*inputs(model, grid), **vace_inputs(model, grid))
            base = model(*inputs(model, grid))
        assert _rel(ref, base) > 1e-2  # the hints matter here
        assert _rel(results[f"vace_{mode}_{label}"], ref) <= TOL


def test_cfg_parallel_equals_one_process(two):
    results, _ = two
    model = tiny_dit()
    x, t, _ = inputs(model, ODD, batch=1)
    context = inputs(model, ODD, batch=2, seed=5)[2]
    with torch.no_grad():
        assert _rel(results["cfg"]["cond"], model(x, t, context[:1])) <= TOL
        assert _rel(results["cfg"]["uncond"], model(x, t, context[1:])) <= TOL


def test_ulysses_needs_heads_divisible_by_its_size(two):
    results, _ = two
    assert "divides 1" in results["heads_error"]


@pytest.mark.parametrize("name", ["train_ring", "train_ulysses_ac"])
def test_fsdp_context_parallel_training_step_equals_one_process(two, name):
    results, _ = two
    res = results[name]
    loss, grads = _reference_step([train_batch(tiny_dit(), seed=1)])
    assert torch.allclose(res["losses"], loss.expand(2), rtol=TOL, atol=0)
    assert _grad_rel(res["grads"], grads) <= TOL


def test_checkpoint_saved_by_two_ranks_loads_on_one(two):
    results, out = two
    res = results["train_ring"]
    model = tiny_dit()
    optim = torch.optim.AdamW(model.parameters(), lr=LR)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
    dcp.load(state, checkpoint_id=str(out / "train_ring_ckpt"))  # no process group: a world of one
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, res["state"][name]), name
    loss2 = train_loss(model, train_batch(model, seed=2))  # ... and training continues with the same losses
    loss2.backward()
    optim.step()
    with torch.no_grad():
        loss3 = train_loss(model, train_batch(model, seed=3))
    assert torch.allclose(torch.stack([loss2.detach(), loss3]), res["next_losses"], rtol=TOL, atol=0)


def test_text_encoder_under_fsdp_equals_one_process(two):
    results, _ = two
    encoder = tiny_umt5()
    ids = torch.randint(0, encoder.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(results["umt5"], encoder(input_ids=ids).last_hidden_state) <= TOL


# ----------------------------------------------------------------------------------- four ranks


@pytest.mark.parametrize("grid", ["even", "odd"])
def test_2d_context_parallel_equals_one_process(four, grid):
    results, _ = four
    g = EVEN if grid == "even" else ODD
    assert _rel(results[f"2d_{grid}"]["out"], _reference("tiny", g)) <= TOL
    assert _rel(results[f"2d_ti2v_{grid}"]["out"], _reference("tiny-ti2v", g, per_token=True)) <= TOL


def test_cfg_parallel_with_ulysses_equals_one_process(four):
    results, _ = four
    model = tiny_dit()
    x, t, _ = inputs(model, ODD, batch=1)
    context = inputs(model, ODD, batch=2, seed=5)[2]
    with torch.no_grad():
        assert _rel(results["cfg_ulysses"]["cond"], model(x, t, context[:1])) <= TOL
        assert _rel(results["cfg_ulysses"]["uncond"], model(x, t, context[1:])) <= TOL


def test_2d_training_step_equals_one_process(four):
    results, _ = four
    res = results["train_2d"]
    loss, grads = _reference_step([train_batch(tiny_dit(), seed=1)])
    assert torch.allclose(res["losses"], loss.expand(4), rtol=TOL, atol=0)
    assert _grad_rel(res["grads"], grads) <= TOL


def test_data_parallel_times_ring_training_step_equals_one_process(four):
    # dp=2 × ring=2: each dp rank takes one sample of the batch; FSDP sums over the ring, averages over dp.
    results, _ = four
    res = results["train_dp_ring_ac"]
    batch = train_batch(tiny_dit(), seed=1)
    halves = [tuple(t[i : i + 1] for t in batch) for i in range(2)]
    loss, grads = _reference_step(halves)
    assert torch.allclose(res["losses"].mean(), loss, rtol=TOL, atol=0)
    assert _grad_rel(res["grads"], grads) <= TOL


# ------------------------------------------------------------------------------ bytes on the wire


def _tokens(grid) -> int:
    return grid[0] * (grid[1] // 2) * (grid[2] // 2)


def _predicted(ulysses: int, ring: int, grid, **kw) -> dict[str, int]:
    return {k: v for k, v in context_parallel_comm(DIT_PRESETS["tiny"], _tokens(grid), ulysses=ulysses, ring=ring,
                                                   batch=2, dtype_bytes=4, **kw).items() if v}


@pytest.mark.parametrize("mode, ulysses, ring", [("ulysses", 2, 1), ("ring", 1, 2)])
def test_forward_bytes_match_the_analytic_model_on_two_ranks(two, mode, ulysses, ring):
    results, _ = two
    for grid, label in ((EVEN, "even"), (ODD, "odd")):
        assert results[f"{mode}_{label}"]["sent"] == _predicted(ulysses, ring, grid)


def test_forward_bytes_match_the_analytic_model_on_a_2x2_mesh(four):
    results, _ = four
    for grid, label in ((EVEN, "even"), (ODD, "odd")):
        assert results[f"2d_{label}"]["sent"] == _predicted(2, 2, grid)


@pytest.mark.parametrize("name, ulysses, ring, recompute", [
    ("train_ring", 1, 2, False), ("train_ulysses_ac", 2, 1, True), ("train_2d", 2, 2, False)])
def test_training_bytes_match_the_analytic_model(two, four, name, ulysses, ring, recompute):
    res = (two if name in two[0] else four)[0][name]
    fwd = _predicted(ulysses, ring, ODD)
    bwd = _predicted(ulysses, ring, ODD, backward=True)
    if recompute:  # activation checkpointing re-runs the blocks' forward (not the final gather) in the backward
        for kind in ("all_to_all", "ring"):
            if kind in fwd:
                bwd[kind] = bwd.get(kind, 0) + fwd[kind]
    assert res["sent_fwd"] == fwd
    assert res["sent_bwd"] == bwd
