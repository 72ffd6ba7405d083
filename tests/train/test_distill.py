"""Consistency distillation in the DiT trainer, on tiny random DiTs saved as real teacher folders: it brings a 2-step
student closer to the guided teacher's 20-step result (closer than the teacher's own 2 guided steps), resumes bit for
bit, trains a LoRA on the teacher's weights, loads a two-expert teacher, and refuses bad settings before computing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from openwan.configs import DIT_PRESETS
from openwan.diffusion import sample, student_sigmas, teacher_sigmas
from openwan.diffusion.consistency import guided_velocity
from openwan.models import WanDiT
from openwan.train import ListBatches, Trainer, load_config, read_metrics
from openwan.train import checkpoint as ckpt
from openwan.train.distill import load_teacher
from tiny import randomize

SHIFT, SCALE = 3.0, 5.0


def _save_dit(dit: WanDiT, folder: Path) -> Path:
    """A DiT folder as releases hold one: official keys in diffusion_pytorch_model.safetensors + config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dit.cfg.to_dict()))
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return _save_dit(randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=3), tmp_path_factory.mktemp("teacher"))


def _batches(samples: int = 4, frames: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    empty = torch.randn(3, 32, generator=g)  # the empty prompt's states, as a text cache stores them
    return [{"latents": torch.randn(samples, 16, frames, 4, 4, generator=g),
             "context": torch.randn(samples, 6, 32, generator=g), "context_empty": empty} for _ in range(2)]


def _cfg(out: Path, teacher: Path, *overrides: str):
    return load_config(None, ["model.preset=tiny", f"output_dir={out}", "log.progress=false", "text_dropout=0",
                              "checkpoint.every=0", "schedule.kind=constant", "optim.weight_decay=0",
                              f"distill.teacher={teacher}", f"distill.guide_scale={SCALE}", f"distill.shift={SHIFT}",
                              "distill.teacher_steps=8", "distill.student_steps=2", *overrides])


@torch.no_grad()
def _error_to_teacher(model, teacher, batches, steps: int, guide: float) -> float:
    """Relative error |x − x_T|² / |x_T|² of ``model``'s Euler samples on the ``steps``-step student grid, at guidance
    ``guide``, against the teacher's 20-step guided samples, from fixed noise, over every batch's contexts."""
    g = torch.Generator().manual_seed(9)
    total = 0.0
    for batch in batches:
        x = torch.randn(batch["latents"].shape, generator=g)
        c = batch["context"]
        neg = batch["context_empty"][None].expand(c.shape[0], -1, -1)

        def guided(net, scale, c=c, neg=neg):
            return lambda z, t: guided_velocity(net, z, t.float().expand(z.shape[0]), c, neg, scale)

        ref = sample(guided(teacher, SCALE), x, teacher_sigmas(20, SHIFT), "euler")
        out = sample(guided(model, guide), x, student_sigmas(steps, SHIFT), "euler")
        total += ((out - ref) ** 2).mean().item() / (ref**2).mean().item()
    return total / len(batches)


@pytest.mark.parametrize("objective", ["consistency", "trajectory"])
def test_distillation_brings_the_student_to_the_guided_teacher(tmp_path, teacher_dir, objective):
    batches = _batches()
    teacher = WanDiT.from_pretrained(teacher_dir, dtype=torch.float32)
    trainer = Trainer(_cfg(tmp_path, teacher_dir, "stages.0.steps=40", "stages.0.batch_size=4", "optim.lr=3e-3",
                           "ema.decay=0.9", f"distill.objective={objective}"), data=ListBatches(batches))
    if objective == "trajectory":  # pairs start at the student's points: 0 and 4 of the teacher's 8 steps
        n, _ = trainer.distill._draw(trainer, batches[0]["latents"])
        assert set(n.tolist()) <= {0, 4}
    before = _error_to_teacher(trainer.dit.eval(), teacher, batches, 2, 1.0)  # the student starts as the teacher
    naive = _error_to_teacher(teacher, teacher, batches, 2, SCALE)  # the teacher itself in 2 guided steps
    trainer.fit()
    after = _error_to_teacher(trainer.dit.eval(), teacher, batches, 2, 1.0)
    print(f"2-step error vs the 20-step guided teacher: student {before:.4f} -> {after:.4f}; "
          f"teacher in 2 guided steps {naive:.4f}")
    assert after < 0.65 * before
    assert after < 0.85 * naive
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10])


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]


def test_a_resumed_distillation_run_equals_an_uninterrupted_one(tmp_path, teacher_dir):
    # The EMA target is state the checkpoint must carry; text dropout draws from the second random stream.
    overrides = ("stages.0.steps=4", "stages.0.batch_size=2", "checkpoint.every=2", "checkpoint.keep_last=5",
                 "optim.lr=1e-2", "text_dropout=0.5", "ema.decay=0.5", "distill.loss=pseudo_huber")
    run = tmp_path / "run"
    Trainer(_cfg(run, teacher_dir, *overrides), data=ListBatches(_batches(2))).fit()
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("run.lock"))
    shutil.rmtree(resumed / ckpt.checkpoint_name(4))
    Trainer(_cfg(resumed, teacher_dir, *overrides), data=ListBatches(_batches(2))).fit()  # resume=auto: step 2
    assert _losses(resumed) == _losses(run) and len(_losses(run)) == 4
    step4 = ckpt.checkpoint_name(4)
    files = sorted(p.name for p in (run / step4).iterdir())
    assert not any("teacher" in name for name in files)  # the teacher is never saved
    for name in ("diffusion_pytorch_model.safetensors", "ema.safetensors"):
        a, b = load_file(str(run / step4 / name)), load_file(str(resumed / step4 / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_lora_distillation_trains_an_adapter_on_the_teacher(tmp_path, teacher_dir):
    teacher = WanDiT.from_pretrained(teacher_dir, dtype=torch.float32)
    trainer = Trainer(_cfg(tmp_path, teacher_dir, "stages.0.steps=3", "stages.0.batch_size=2", "lora.rank=4",
                           "optim.lr=1e-2", "ema.decay=0.5"), data=ListBatches(_batches(2)))
    trainer.fit()
    trained = [n for n, p in trainer.dit.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    live = dict(trainer.dit.named_parameters())
    moved = any(not torch.equal(live[n], torch.zeros_like(live[n])) for n in trained if ".lora_B." in n)
    assert moved  # lora_B starts at zero: the adapter learnt something
    for name, p in teacher.named_parameters():  # the student's base weights are the teacher's, untouched
        module, leaf = name.rsplit(".", 1)
        base = live.get(f"{module}.base_layer.{leaf}", live.get(name))
        assert torch.equal(base, p), name
    files = {p.name for p in ckpt.latest_checkpoint(tmp_path).iterdir()}
    assert {"adapter.safetensors", "lora.safetensors", "ema.safetensors"} <= files
    assert "diffusion_pytorch_model.safetensors" not in files


def test_a_two_expert_teacher_switches_at_the_release_boundary(tmp_path):
    high = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=4)
    low = randomize(WanDiT(DIT_PRESETS["tiny"]), std=0.1, seed=5)
    _save_dit(high, tmp_path / "high_noise_model")
    _save_dit(low, tmp_path / "low_noise_model")
    (tmp_path / "configuration.json").write_text(json.dumps({"boundary": 0.8}))
    teacher = load_teacher(tmp_path, torch.device("cpu"))
    assert teacher.boundary == 0.8 and not any(p.requires_grad for p in teacher.parameters())
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(3, 16, 1, 4, 4, generator=g), torch.randn(3, 6, 32, generator=g)
    t = torch.tensor([800.0, 799.0, 300.0])  # high (at the boundary), low, low
    with torch.no_grad():
        out = teacher(x, t, context)
        torch.testing.assert_close(out[:1], high(x[:1], t[:1], context[:1]), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[1:], low(x[1:], t[1:], context[1:]), rtol=0, atol=1e-6)
    # One student starts as the low-noise expert; an expert student as its side's, drawing only its side's pairs:
    # the student grid is t = 1000, 750, 0 (2 steps of the 8-step teacher grid), so high takes n = 0..3.
    for expert, model, starts in ((None, low, None), ("high", high, [0, 1, 2, 3]), ("low", low, [4, 5, 6, 7])):
        extra = [] if expert is None else [f"distill.expert={expert}"]
        cfg = _cfg(tmp_path / f"run-{expert}", tmp_path, "stages.0.steps=1", "stages.0.batch_size=2", *extra)
        trainer = Trainer(cfg, data=ListBatches(_batches(2)))
        names = dict(model.named_parameters())
        assert all(torch.equal(p, names[n]) for n, p in trainer.dit.named_parameters())
        if starts is not None:
            assert trainer.distill.starts.tolist() == starts
            drawn = torch.cat([trainer.distill._draw(trainer, torch.zeros(2, 16, 1, 4, 4))[0] for _ in range(20)])
            assert set(drawn.tolist()) == set(starts)


def test_an_expert_student_needs_a_two_expert_teacher(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match=r"distill\.expert=high needs a two-expert teacher"):
        Trainer(_cfg(tmp_path, teacher_dir, "distill.expert=high"), data=ListBatches(_batches(2)))


@pytest.mark.parametrize("override,field", [
    ("distill.student_steps=0", "distill.student_steps"),
    ("distill.student_steps=3", "distill.student_steps"),  # does not divide teacher_steps = 8
    ("distill.teacher_steps=0", "distill.teacher_steps"),
    ("distill.guide_scale=-1", "distill.guide_scale"),
    ("distill.shift=0", "distill.shift"),
    ("distill.huber_c=0", "distill.huber_c"),
    ("ema.decay=0", "distill.target"),  # the ema target needs the run's EMA
    ("distill.objective=dmd", "distill.objective"),
])
def test_bad_settings_name_their_field(tmp_path, teacher_dir, override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        _cfg(tmp_path, teacher_dir, override)


def test_a_distill_section_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match=r"distill\.teacher must be"):
        load_config(None, ["distill.guide_scale=2"])


def test_missing_teacher_or_student_init_is_refused_before_any_compute(tmp_path, teacher_dir):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"distill\.teacher=.*does not exist"):
        Trainer(_cfg(out, tmp_path / "nowhere"), data=ListBatches(_batches(2)))
    with pytest.raises(ValueError, match=r"distill\.student_init=.*does not exist"):
        Trainer(_cfg(out, teacher_dir, f"distill.student_init={tmp_path / 'nowhere'}"), data=ListBatches(_batches(2)))
    assert not out.exists()
    batches = [{k: v for k, v in b.items() if k != "context_empty"} for b in _batches(2)]
    with pytest.raises(ValueError, match="context_empty"):
        Trainer(_cfg(out, teacher_dir, "stages.0.steps=1"), data=ListBatches(batches)).fit()


def test_the_demo_config_distils_the_bundled_model_at_its_sampling_defaults():
    from openwan.pipelines.components import BUNDLED
    from openwan.pipelines.defaults import FAMILY_DEFAULTS

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "demo-distill.yaml")
    assert (repo / cfg.distill.teacher).resolve() == Path(BUNDLED).resolve()
    defaults = FAMILY_DEFAULTS["tiny"]  # what the bundled model samples with
    assert (cfg.distill.guide_scale, cfg.distill.shift) == (defaults.guide_scale, defaults.sample_shift)
    student = (cfg.distill.student_steps, cfg.distill.shift, 1.0)
    assert (cfg.sample.steps, cfg.sample.shift, cfg.sample.guide_scale) == student
    assert cfg.data.cache_dir == "runs/demo-model/cache"  # where recipes/demo_model.sh writes its caches


def test_a_negative_prompt_is_encoded_once_and_replaces_the_empty_one(tmp_path, teacher_dir):
    overrides = ("stages.0.steps=1", "stages.0.batch_size=2", "model.text_encoder=tiny", "model.tokenizer=byt5",
                 "distill.negative_prompt=blurry, still")
    trainer = Trainer(_cfg(tmp_path, teacher_dir, *overrides), data=ListBatches(_batches(2)))
    batch = _batches(2)[0]
    negative = trainer.distill.negative_context(trainer, batch)
    assert torch.equal(negative, trainer.encode_text(["blurry, still"])[0])
    assert not torch.equal(negative[: batch["context_empty"].shape[0]], batch["context_empty"])
    assert trainer.distill.negative_context(trainer, batch) is negative  # encoded once
    trainer.fit()
