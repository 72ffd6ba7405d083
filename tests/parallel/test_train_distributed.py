"""`openwan train` under torchrun — 2 CPU processes on gloo — equals one process: context parallel (Ulysses, Ring),
data parallel (FSDP2 or all-reduced gradients), sharded checkpoints that continue at another world size, and the
export of a checkpoint to a release file.

The runs share one config: a DiT of the `tiny` preset with every weight random, a latent + text cache of 8 images
(9 tokens: padded on 2 ranks) and 8 five-frame clips (8 tokens), global batch 4, 6 steps, logit-normal σ with the
resolution shift, text dropout 0.5, EMA, warm-up + cosine, and gradient clipping below the gradients' norm (so the
clip acts at every step and only the global norm gives the one-process update). Every random draw is keyed by the
sample's index in the global batch, so dp=2 must reproduce the one-process run exactly — a run that gave both dp
ranks the same samples or the same noise, or averaged the gradients wrongly, would not.

- ``one``: one process (`python -m openwan train`), the reference; checkpoints every 2 steps, 2 kept.
- ``ulysses``: `torchrun --nproc-per-node 2 -m openwan train ... parallel.cp_ulysses=2` (activation checkpointing).
- one torchrun launch of train_worker.py runs, through the same CLI entry: ``ring`` (cp_ring=2, with sample videos),
  ``dp`` (dp=2 under FSDP2), ``dp_nofsdp`` (dp=2, whole model, all-reduced gradients), ``resume_1to2`` (one's
  step-4 checkpoint continued on 2 ranks) and ``bad_mesh`` (parallel.dp=1 on 2 processes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from parallel_worker import tiny_dit
from safetensors.torch import load_file, save_file

from openwan.cli.main import main as openwan_main
from openwan.data.cache import LATENT_INDEX, TEXT_EMPTY, TEXT_INDEX
from openwan.models import WanDiT
from openwan.train import data_from_config, export_dit, list_checkpoints, load_config, read_metrics
from openwan.train.checkpoint import checkpoint_dit

TOL = 1e-5  # relative, per step: losses and gradient norms
# Weights after 6 AdamW steps, relative over all tensors: Adam divides each update by sqrt(v), so where a gradient
# is rounding noise (cross-attention key biases: mathematically zero) rounding-level differences become updates of
# up to lr. Measured ~4e-6.
WEIGHTS_TOL = 1e-4
STEPS = 6
WORKER = Path(__file__).with_name("train_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write_cache(folder: Path, dim: int = 32, text_len: int = 32) -> None:
    """A latent + text cache in the layout openwan.data.cache reads, with random tensors."""
    g = torch.Generator().manual_seed(11)
    latents, texts, index, items = {}, {}, {}, {}
    for i in range(8):
        for kind, bucket, shape in (("image", [1, 48, 48], (16, 1, 6, 6)), ("clip", [5, 32, 32], (16, 2, 4, 4))):
            key, length = f"{kind}{i}", 3 + i % 4
            latents[key] = torch.randn(shape, generator=g)
            texts[key] = torch.randn(length, dim, generator=g)
            index[key] = {"shard": "latents-00000.safetensors", "bucket": bucket, "caption": key}
            items[key] = {"shard": "text-00000.safetensors", "length": length, "caption": key}
    folder.mkdir(parents=True)
    save_file(latents, str(folder / "latents-00000.safetensors"))
    save_file(texts, str(folder / "text-00000.safetensors"))
    save_file({"empty": torch.randn(2, dim, generator=g)}, str(folder / TEXT_EMPTY))
    (folder / LATENT_INDEX).write_text(json.dumps(index))
    (folder / TEXT_INDEX).write_text(json.dumps({"text_len": text_len, "items": items}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_distributed")
    dit = tiny_dit(seed=2)
    (root / "dit").mkdir()
    save_file(dit.state_dict(), str(root / "dit" / "diffusion_pytorch_model.safetensors"))
    (root / "dit" / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
    _write_cache(root / "cache")
    (root / "train.yaml").write_text(textwrap.dedent(f"""
        model: {{preset: tiny, path: {root / "dit"}}}
        data: {{cache_dir: {root / "cache"}}}
        stages:
          - {{name: mixed, steps: {STEPS}, batch_size: 4, buckets: [[1, 48, 48], [5, 32, 32]]}}
        optim: {{lr: 2.0e-3, grad_clip: 0.05}}
        schedule: {{kind: cosine, warmup_steps: 2}}
        timesteps: {{mode: logit_normal, shift: resolution}}
        ema: {{decay: 0.9}}
        text_dropout: 0.5
        checkpoint: {{every: 2, keep_last: 2}}
        log: {{progress: false, tensorboard: false}}
        precision: fp32
        device: cpu
        seed: 5
    """))
    return root


def _argv(root: Path, name: str, *overrides: str) -> list[str]:
    return ["train", "--config", str(root / "train.yaml"), f"output_dir={root / name}", *overrides]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def _continue_from(root: Path, source: str, step: int, name: str) -> Path:
    """A fresh output folder holding only ``source``'s checkpoint of ``step`` (resume=auto picks it up)."""
    folder = f"step-{step:08d}"
    shutil.copytree(root / source / folder, root / name / folder)
    return root / name


@pytest.fixture(scope="module")
def one(setup) -> Path:
    assert openwan_main(_argv(setup, "one")) == 0
    return setup / "one"


@pytest.fixture(scope="module")
def ulysses(setup) -> Path:
    proc = _torchrun("-m", "openwan", *_argv(setup, "ulysses", "parallel.cp_ulysses=2",
                                             "activation_checkpointing=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return setup / "ulysses"


@pytest.fixture(scope="module")
def worker(setup, one) -> dict:
    _continue_from(setup, "one", 4, "resume_1to2")
    sample = ["model.vae=tiny", "model.text_encoder=tiny", "model.tokenizer=byt5", f"sample.every={STEPS}",
              "sample.prompts=[a red ball]", "sample.size=[32, 32]", "sample.frame_num=1", "sample.steps=2"]
    runs = {
        "ring": _argv(setup, "ring", "parallel.cp_ring=2", *sample),
        "dp": _argv(setup, "dp", "parallel.dp=2"),
        "dp_nofsdp": _argv(setup, "dp_nofsdp", "parallel.fsdp=false"),  # dp: auto = 2
        "resume_1to2": _argv(setup, "resume_1to2", "parallel.dp=2"),
        "bad_mesh": _argv(setup, "bad_mesh", "parallel.dp=1"),
    }
    spec = setup / "worker.json"
    spec.write_text(json.dumps({"runs": runs, "result": str(setup / "worker_result.json")}))
    proc = _torchrun(str(WORKER), str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((setup / "worker_result.json").read_text())


# Per-token timesteps with clean first frames (timesteps.first_frame): the ranks' samples hold different numbers of
# noisy tokens, so the loss must be normalised by the count over all data-parallel ranks. Clips only (2 latent
# frames), so every step has frames given clean.
FIRST_FRAME = ["timesteps.first_frame=0.5", "stages.0.buckets=[[5, 32, 32]]"]


@pytest.fixture(scope="module")
def one_first(setup) -> Path:
    assert openwan_main(_argv(setup, "one_first", *FIRST_FRAME)) == 0
    return setup / "one_first"


@pytest.fixture(scope="module")
def worker_first(setup) -> dict:
    runs = {"dp_first": _argv(setup, "dp_first", "parallel.dp=2", *FIRST_FRAME),
            "dp_nofsdp_first": _argv(setup, "dp_nofsdp_first", "parallel.fsdp=false", *FIRST_FRAME)}
    spec = setup / "worker_first.json"
    spec.write_text(json.dumps({"runs": runs, "result": str(setup / "worker_first_result.json")}))
    proc = _torchrun(str(WORKER), str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((setup / "worker_first_result.json").read_text())


# ------------------------------------------------------------------------------------------ helpers


def _records(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")


def _series_diff(ours: list[dict], ref: list[dict], key: str) -> float:
    assert [r["step"] for r in ours] == [r["step"] for r in ref]
    return max(abs(a[key] - b[key]) / abs(b[key]) for a, b in zip(ours, ref))


def _weights_diff(ours: dict, ref: dict) -> float:
    assert ours.keys() == ref.keys()
    scale = max(v.abs().max() for v in ref.values())
    return (max((ours[k] - ref[k]).abs().max() for k in ref) / scale).item()


def _final(out: Path, name: str = "diffusion_pytorch_model.safetensors") -> dict:
    return load_file(str(out / f"step-{STEPS:08d}" / name))


def _assert_same_run(out: Path, ref: Path, label: str, steps: slice = slice(None)) -> None:
    ours, theirs = _records(out), _records(ref)[steps]
    loss, norm = _series_diff(ours, theirs, "loss"), _series_diff(ours, theirs, "grad_norm")
    weights = _weights_diff(_final(out), _final(ref))
    ema = _weights_diff(_final(out, "ema.safetensors"), _final(ref, "ema.safetensors"))
    print(f"{label}: max rel diff loss {loss:.1e}, grad norm {norm:.1e}, final weights {weights:.1e}, EMA {ema:.1e}")
    assert loss <= TOL and norm <= TOL and weights <= WEIGHTS_TOL and ema <= WEIGHTS_TOL
    shapes = [(r["batch_size"], r["latent_shape"]) for r in ours]
    assert shapes == [(r["batch_size"], r["latent_shape"]) for r in theirs]  # the same global batches


# -------------------------------------------------------------------------------------------- tests


def test_the_reference_run_clips_and_mixes_both_buckets(one):
    records = _records(one)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(r["grad_norm"] > 0.05 for r in records)  # the clip acts at every step
    assert {tuple(r["latent_shape"]) for r in records} == {(1, 6, 6), (2, 4, 4)}
    assert all(r["batch_size"] == 4 for r in records)


@pytest.mark.slow
def test_ulysses_under_torchrun_equals_one_process(ulysses, one):
    _assert_same_run(ulysses, one, "ulysses 2 (torchrun -m openwan train)")


@pytest.mark.slow
def test_ring_equals_one_process_and_samples_collectively(worker, setup, one):
    assert worker["ring"]["code"] == 0, worker["ring"]["stderr"]
    _assert_same_run(setup / "ring", one, "ring 2")
    samples = list((setup / "ring" / "samples").rglob("*.png"))  # every rank sampled, rank 0 wrote
    assert [p.relative_to(setup / "ring" / "samples").as_posix() for p in samples] == [
        f"step-{STEPS:08d}/prompt-00.png"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp", "dp_nofsdp"])
def test_data_parallel_equals_one_process_with_the_global_batch(worker, setup, one, name):
    assert worker[name]["code"] == 0, worker[name]["stderr"]
    _assert_same_run(setup / name, one, f"{name} (2 ranks x 2 samples vs 1 process x 4)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp_first", "dp_nofsdp_first"])
def test_clean_first_frames_train_the_same_under_data_parallel(worker_first, setup, one_first, name):
    assert worker_first[name]["code"] == 0, worker_first[name]["stderr"]
    ours, ref = _records(setup / name)[0], _records(one_first)[0]
    loss, norm = (abs(ours[k] - ref[k]) / abs(ref[k]) for k in ("loss", "grad_norm"))
    print(f"{name}: step 1 loss {ours['loss']:.6f} vs one process {ref['loss']:.6f} (rel {loss:.1e}), grad norm "
          f"{ours['grad_norm']:.6f} vs {ref['grad_norm']:.6f} (rel {norm:.1e})")
    assert loss <= 1e-6 and norm <= 1e-6
    _assert_same_run(setup / name, one_first, f"{name} (clean first frames)")


@pytest.mark.slow
def test_one_rank_writes_logs_and_sharded_checkpoints(ulysses):
    assert [r["step"] for r in _records(ulysses)] == list(range(1, STEPS + 1))  # one line per step: rank 0's
    assert [s for s, _ in list_checkpoints(ulysses)] == [4, 6]  # keep_last: 2
    assert not [p for p in ulysses.iterdir() if p.name.startswith(".")]  # no temporary folder left
    step = ulysses / f"step-{STEPS:08d}"
    shards = sorted(p.name for p in (step / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    state = json.loads((step / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2 and state["draws"] == {"noise": 6, "dropout": 6}


@pytest.mark.slow
def test_checkpoint_saved_by_two_ranks_continues_on_one(setup, ulysses):
    out = _continue_from(setup, "ulysses", 4, "resume_2to1")
    assert openwan_main(_argv(setup, "resume_2to1")) == 0  # one process, no process group
    _assert_same_run(out, ulysses, "2 ranks -> 1 process, steps 5-6", steps=slice(4, None))


@pytest.mark.slow
def test_checkpoint_saved_by_one_process_continues_on_two(worker, setup, one):
    assert worker["resume_1to2"]["code"] == 0, worker["resume_1to2"]["stderr"]
    _assert_same_run(setup / "resume_1to2", one, "1 process -> 2 ranks (dp), steps 5-6", steps=slice(4, None))


@pytest.mark.slow
def test_export_gives_a_release_file_that_from_pretrained_loads(setup, ulysses, one):
    step = ulysses / f"step-{STEPS:08d}"
    file = export_dit(ulysses, setup / "release")  # a run folder: its newest checkpoint, read from sharded/
    assert file == setup / "release" / "diffusion_pytorch_model.safetensors"
    dit = WanDiT.from_pretrained(file)
    exported = {k: v for k, v in dit.state_dict().items()}
    gathered = load_file(str(step / "ema.safetensors"))  # rank 0's consolidated copy of the sharded EMA
    assert exported.keys() == gathered.keys() and all(torch.equal(exported[k], gathered[k]) for k in gathered)
    print(f"exported EMA vs one process's: max rel diff {_weights_diff(exported, _final(one, 'ema.safetensors')):.1e}")
    assert _weights_diff(exported, _final(one, "ema.safetensors")) <= WEIGHTS_TOL
    # The same weights as a model, straight from the (sharded) checkpoint, built from its config.json.
    model = checkpoint_dit(ulysses, "ema")
    assert not model.training and all(torch.equal(v, gathered[k]) for k, v in model.state_dict().items())
    # The CLI entry, trained weights, bf16; OUT a .safetensors file: the DiT alone (the run trained from a cache).
    raw_file = setup / "raw" / "diffusion_pytorch_model.safetensors"
    assert openwan_main(["train", "--export", str(step), str(raw_file), "--weights", "model", "--dtype",
                         "bf16"]) == 0
    raw = load_file(str(setup / "raw" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(step / "diffusion_pytorch_model.safetensors"))
    assert raw.keys() == trained.keys() and all(torch.equal(raw[k], trained[k].bfloat16()) for k in trained)


@pytest.mark.slow
def test_a_mesh_that_does_not_fit_the_processes_is_a_config_error(worker, setup, capsys):
    bad = worker["bad_mesh"]
    assert bad["code"] == 2 and "Traceback" not in bad["stderr"]
    assert ("parallel.dp=1 × cp_ring=1 × cp_ulysses=1 = 1 rank, but 2 processes were started (WORLD_SIZE); set "
            "parallel.dp=2 (or auto)") in bad["stderr"]
    assert openwan_main(_argv(setup, "bad_one", "parallel.cp_ring=2")) == 2  # one process
    err = capsys.readouterr().err
    assert "parallel.dp=auto × cp_ring=2 × cp_ulysses=1 needs a number of processes divisible by 2, but 1 " in err


def test_the_global_batch_must_split_over_the_data_parallel_ranks(setup):
    cfg = load_config(setup / "train.yaml")
    with pytest.raises(ValueError, match=r"stages.0.batch_size=4 is the global batch .* make it a multiple of 3"):
        data_from_config(cfg, dp_rank=0, dp_size=3)(0, cfg.stages[0])
