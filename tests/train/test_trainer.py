"""The DiT trainer on tiny models: it overfits a handful of clips, encodes raw batches like a cache would, applies
text dropout, writes sample videos without disturbing training, skips empty batches, and refuses what it cannot do."""

from __future__ import annotations

import copy

import pytest
import torch

from openwan.configs import DIT_PRESETS
from openwan.diffusion.objective import noised
from openwan.models import WanDiT
from openwan.models.text_encoder import encode_prompts, pad_context
from openwan.train import ListBatches, Trainer, flow_matching_loss, load_config, read_metrics
from tiny import tiny_components


def _cfg(tmp_path, *overrides):
    return load_config(None, ["model.preset=tiny", f"output_dir={tmp_path}", "log.progress=false",
                              "checkpoint.every=0", *overrides])


@torch.no_grad()
def _x0_error(dit, batches) -> float:
    """How well the model denoises its training clips: E |x_σ − σ·v̂ − x0|² over fixed σ and ε."""
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for batch in batches:
        x0, context = batch["latents"], batch["context"]
        for _ in range(8):
            s = torch.rand(x0.shape[0], generator=g)
            noise = torch.randn(x0.shape, generator=g)
            s5 = s.view(-1, 1, 1, 1, 1)
            x_t = (1 - s5) * x0 + s5 * noise
            v = dit(x_t, s * 1000, context)
            total += ((x_t - s5 * v - x0) ** 2).mean().item()
    return total / (8 * len(batches))


@torch.no_grad()
def _generation_error(dit, batches, steps: int = 10) -> float:
    """Relative error |x̂0 − x0|² / |x0|² of clips generated from fixed noise with each clip's context (Euler)."""
    g = torch.Generator().manual_seed(7)
    sigmas = torch.linspace(1, 0, steps + 1)
    total = 0.0
    for batch in batches:
        x0, context = batch["latents"], batch["context"]
        x = torch.randn(x0.shape, generator=g)
        for i in range(steps):
            x = x + (sigmas[i + 1] - sigmas[i]) * dit(x, sigmas[i].expand(x.shape[0]) * 1000, context)
        total += ((x - x0) ** 2).mean().item() / (x0**2).mean().item()
    return total / len(batches)


@pytest.mark.slow
def test_tiny_dit_overfits_a_handful_of_clips(tmp_path):
    # Four clips (two images, two 5-frame videos), each a flat colour in latent space with its own caption state.
    # Flat: the DiT has no absolute position embedding (RoPE only), so from pure noise it cannot place a pattern.
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(16, 1, 1, 1, generator=g).expand(16, f, 4, 4).clone() for f in (1, 1, 2, 2)]
    contexts = [torch.randn(8, 32, generator=g) for _ in clips]
    batches = [{"latents": torch.stack(clips[i:i + 2]), "context": torch.stack(contexts[i:i + 2])} for i in (0, 2)]
    cfg = _cfg(tmp_path, "stages.0.steps=300", "optim.lr=3e-3", "schedule.warmup_steps=20", "text_dropout=0",
               "ema.decay=0", "optim.weight_decay=0")
    dit = WanDiT(DIT_PRESETS["tiny"].replace(dim=128, ffn_dim=256, num_heads=4))  # 2 blocks, 0.5M parameters
    trainer = Trainer(cfg, dit=dit, data=ListBatches(batches))
    before = (_x0_error(trainer.dit, batches), _generation_error(trainer.dit, batches))
    trainer.fit()
    after = (_x0_error(trainer.dit, batches), _generation_error(trainer.dit, batches))
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    print(f"x0 error {before[0]:.3f} -> {after[0]:.3f}; generated-clip rel. error {before[1]:.3f} -> {after[1]:.3f}; "
          f"training loss (mean of 50 steps) {first:.3f} -> {last:.3f}")
    assert len(losses) == 300
    assert after[1] < 0.3 < 1.5 < before[1]  # the clips come back from noise (measured ~0.1 over seeds, from ~2)
    assert after[0] < 0.25 * before[0]  # measured ~0.1x
    assert last < 0.6 * first
    assert (tmp_path / "step-00000300" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = WanDiT.from_pretrained(tmp_path / "step-00000300")  # a full fine-tune checkpoint is a DiT folder
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trainer.dit.state_dict().values()))


def test_raw_batch_gives_the_same_first_loss_as_its_cached_form(tmp_path):
    parts = tiny_components("tiny")
    vae, encoder, tokenizer = parts["vae"], parts["text_encoder"], parts["tokenizer"]
    video = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    captions = ["a red ball rolls", "waves at night"]
    raw = {"key": ["a", "b"], "video": video, "caption": captions}
    with torch.no_grad():
        cached = {"key": ["a", "b"], "latents": vae.encode(video),
                  "context": pad_context(encode_prompts(encoder, tokenizer, captions, 32), 32),
                  "context_empty": encode_prompts(encoder, tokenizer, [""], 32)[0]}
    losses = []
    for batch in (raw, cached):
        cfg = _cfg(tmp_path / str(len(losses)), "stages.0.steps=1", "text_dropout=0.5", "seed=3")
        trainer = Trainer(cfg, dit=copy.deepcopy(parts["dit"]), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                          data=ListBatches([batch]))
        losses.append(trainer.fit()["loss"])
    print(f"first-step loss raw {losses[0]!r}, cached {losses[1]!r}")
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)


def test_text_dropout_swaps_in_the_empty_prompt(tmp_path):
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(4, 16, 1, 4, 4, generator=g), "context": torch.randn(4, 6, 32, generator=g),
             "context_empty": torch.randn(3, 32, generator=g)}
    empty = torch.cat([batch["context_empty"], torch.zeros(3, 32)])  # zero-padded to the batch's rows
    always = Trainer(_cfg(tmp_path / "a", "text_dropout=1"), data=ListBatches([batch]))
    _, context = always.prepare_batch(batch)
    assert all(torch.equal(c, empty) for c in context)
    never = Trainer(_cfg(tmp_path / "b", "text_dropout=0"), data=ListBatches([batch]))
    assert torch.equal(never.prepare_batch(batch)[1], batch["context"])
    half = Trainer(_cfg(tmp_path / "c", "text_dropout=0.5"), data=ListBatches([batch]))
    dropped = [sum(torch.equal(c, empty) for c in half.prepare_batch(batch)[1]) for _ in range(50)]
    assert 0.35 < sum(dropped) / 200 < 0.65
    with pytest.raises(ValueError, match="context_empty"):
        half.prepare_batch({k: v for k, v in batch.items() if k != "context_empty"})


def test_samples_are_written_and_do_not_disturb_training(tmp_path):
    parts = tiny_components("tiny")
    g = torch.Generator().manual_seed(4)
    batches = [{"latents": torch.randn(1, 16, 2, 4, 4, generator=g), "caption": ["a cat"]} for _ in range(2)]
    runs = {}
    for every in (0, 2):
        overrides = ["stages.0.steps=4", "optim.lr=1e-3", "ema.decay=0.5", f"sample.every={every}",
                     "sample.prompts=[a red ball]", "sample.size=[32, 32]", "sample.frame_num=5", "sample.steps=2"]
        cfg = _cfg(tmp_path / str(every), *overrides)
        Trainer(cfg, dit=copy.deepcopy(parts["dit"]), vae=parts["vae"], text_encoder=parts["text_encoder"],
                tokenizer=parts["tokenizer"], data=ListBatches(batches)).fit()
        runs[every] = [r["loss"] for r in read_metrics(tmp_path / str(every) / "metrics.jsonl")]
    assert runs[0] == runs[2]  # sampling (with the EMA weights swapped in) left weights and RNG streams alone
    for step in (2, 4):
        video = tmp_path / "2" / "samples" / f"step-{step:08d}" / "prompt-00.mp4"
        assert video.is_file() and video.stat().st_size > 0


def test_skips_empty_batches_and_reports_bad_inputs(tmp_path):
    good = {"latents": torch.randn(1, 16, 1, 4, 4), "context": torch.randn(1, 4, 32)}
    empty = {"key": [], "latents": torch.zeros(0, 16, 1, 4, 4), "context": torch.zeros(0, 4, 32)}
    trainer = Trainer(_cfg(tmp_path, "stages.0.steps=3", "text_dropout=0"), data=ListBatches([None, empty, good]))
    trainer.fit()
    assert trainer.step == 3 and trainer.data_state["state"]["position"] == 9  # 3 good batches, 6 skipped
    with pytest.raises(ValueError, match="needs 'latents'"):
        trainer.prepare_batch({"context": good["context"]})
    with pytest.raises(ValueError, match="latents must be"):
        trainer.prepare_batch({"latents": torch.randn(1, 4, 1, 4, 4), "context": good["context"]})
    with pytest.raises(ValueError, match="need a VAE"):
        trainer.prepare_batch({"video": torch.zeros(1, 3, 1, 32, 32), "context": good["context"]})
    with pytest.raises(ValueError, match="text encoder"):
        trainer.prepare_batch({"latents": good["latents"], "caption": ["x"]})

    class Mesh:  # two ranks, but not laid out as the config's parallel section says (dp: auto = 2)
        mesh_dim_names = ("dp", "cfg", "ring", "ulysses")

        def size(self):
            return 2

        def __getitem__(self, name):
            return type("Dim", (), {"size": lambda self: 2 if name == "ulysses" else 1})()

    with pytest.raises(ValueError, match="parallel section asks for"):
        Trainer(_cfg(tmp_path), mesh=Mesh(), data=ListBatches([good]))
    with pytest.raises(ValueError, match="parallel.dp=auto × cp_ring=1 × cp_ulysses=2 needs a number of processes "
                                         "divisible by 2, but 1 process was started"):
        Trainer(_cfg(tmp_path, "parallel.cp_ulysses=2"), data=ListBatches([good]))
    with pytest.raises(ValueError, match="LoRA training runs in one process"):
        Trainer(_cfg(tmp_path, "lora.rank=2", "parallel.cp_ulysses=2"), mesh=Mesh(), data=ListBatches([good]))
    with pytest.raises(ValueError, match="text-to-video"):
        Trainer(_cfg(tmp_path), dit=WanDiT(DIT_PRESETS["tiny-i2v"]), data=ListBatches([good]))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(_cfg(tmp_path, "resume=never"), data=ListBatches([good])).fit()
    with pytest.raises(ValueError, match="needs exactly one data source"):
        Trainer(_cfg(tmp_path / "nodata")).fit()


def test_flow_matching_loss_is_the_velocity_mse():
    dit = WanDiT(DIT_PRESETS["tiny"])  # zero head: predicts v = 0, so the loss is E|ε − x0|²
    x0, noise = torch.randn(2, 16, 1, 4, 4), torch.randn(2, 16, 1, 4, 4)
    loss = flow_matching_loss(dit, x0, torch.randn(2, 3, 32), torch.tensor([0.2, 0.9]), noise)
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())


def test_per_frame_sigmas_reach_each_frame_and_its_tokens():
    """Diffusion forcing: σ [B, F] noises each latent frame at its own level and gives its tokens that t."""
    dit = tiny_components()["dit"]
    x0, noise, context = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4), torch.randn(2, 3, 32)
    shared = torch.tensor([0.3, 0.8])
    torch.testing.assert_close(flow_matching_loss(dit, x0, context, shared[:, None].expand(2, 3), noise),
                               flow_matching_loss(dit, x0, context, shared, noise))
    sigmas = torch.tensor([[0.1, 0.5, 0.9], [1.0, 0.0, 0.4]])
    seen = {}
    hook = dit.register_forward_pre_hook(lambda module, args: seen.update(x=args[0], t=args[1]))
    flow_matching_loss(dit, x0, context, sigmas, noise)
    hook.remove()
    tokens_per_frame = 2 * 2  # the tiny preset's 2x2 spatial patches over 4x4 latents
    assert seen["t"].shape == (2, 3 * tokens_per_frame)
    for f in range(3):
        s = sigmas[:, f]
        assert torch.equal(seen["t"][:, f * tokens_per_frame:(f + 1) * tokens_per_frame],
                           (s * 1000)[:, None].expand(2, tokens_per_frame))
        torch.testing.assert_close(seen["x"][:, :, f], (1 - s.view(2, 1, 1, 1)) * x0[:, :, f]
                                   + s.view(2, 1, 1, 1) * noise[:, :, f])


@pytest.mark.parametrize("per_frame", [0.0, 0.5, 1.0])
def test_draw_noise_per_frame(tmp_path, per_frame):
    batch = {"latents": torch.randn(1, 16, 1, 4, 4), "context": torch.randn(1, 4, 32)}
    trainer = Trainer(_cfg(tmp_path, f"timesteps.per_frame={per_frame}"), data=ListBatches([batch]))
    x0 = torch.zeros(64, 16, 5, 4, 4)
    sigmas, noise, _ = trainer.draw_noise(x0)
    assert noise.shape == x0.shape and ((0 <= sigmas) & (sigmas <= 1)).all()
    if per_frame == 0:
        assert sigmas.shape == (64,)
        return
    assert sigmas.shape == (64, 5)
    distinct = (sigmas != sigmas[:, :1]).any(1).float().mean().item()  # samples whose frames differ
    assert abs(distinct - per_frame) < 0.2


def test_clean_first_frame_is_context_not_target():
    """σ 0 on the first frame (Wan2.2 TI2V-style): the DiT sees it clean at t 0, and the loss is the velocity MSE
    of the other frames alone."""
    dit = WanDiT(DIT_PRESETS["tiny"])  # zero head: predicts v = 0
    x0, noise = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4)
    sigmas = torch.tensor([[0.0, 0.6, 0.6], [0.0, 0.9, 0.9]])
    loss = flow_matching_loss(dit, x0, torch.randn(2, 3, 32), sigmas, noise)
    torch.testing.assert_close(loss, ((noise - x0)[:, :, 1:] ** 2).mean())
    x_t, t = noised(x0, sigmas, noise, dit.cfg.patch_size)
    assert torch.equal(x_t[:, :, 0], x0[:, :, 0]) and (t[:, :4] == 0).all() and (t[:, 4:] > 0).all()


@pytest.mark.parametrize("first_frame, per_frame", [(1.0, 0.0), (0.3, 0.0), (0.3, 0.4)])
def test_draw_noise_first_frame(tmp_path, first_frame, per_frame):
    batch = {"latents": torch.randn(1, 16, 1, 4, 4), "context": torch.randn(1, 4, 32)}
    trainer = Trainer(_cfg(tmp_path, f"timesteps.first_frame={first_frame}", f"timesteps.per_frame={per_frame}"),
                      data=ListBatches([batch]))
    sigmas, _, _ = trainer.draw_noise(torch.zeros(200, 16, 5, 4, 4))
    assert sigmas.shape == (200, 5)
    clean = sigmas[:, 0] == 0
    assert (sigmas[:, 1:] > 0).all() and abs(clean.float().mean().item() - first_frame) < 0.1
    assert (sigmas[clean, 1:] == sigmas[clean, 1:2]).all()  # the rest share one level
    if first_frame < 1:  # of the others, per_frame / (1 - first_frame) draw a level per frame
        distinct = (sigmas[~clean] != sigmas[~clean][:, :1]).any(1).float().mean().item()
        assert abs(distinct - per_frame / (1 - first_frame)) < 0.15
    one_frame, _, _ = trainer.draw_noise(torch.zeros(8, 16, 1, 4, 4))  # an image: no frame to give
    assert (one_frame > 0).all()


def test_first_frame_and_per_frame_share_the_samples(tmp_path):
    with pytest.raises(ValueError, match="at most 1"):
        _cfg(tmp_path, "timesteps.first_frame=0.6", "timesteps.per_frame=0.6")


def test_per_frame_must_be_a_fraction(tmp_path):
    with pytest.raises(ValueError, match="timesteps.per_frame must be a fraction"):
        _cfg(tmp_path, "timesteps.per_frame=1.5")


def test_noise_mix_draws_each_distribution_at_its_fraction(tmp_path):
    """timesteps.mix: 30% of the samples draw from a distribution far below the main one (shift 0.02 against 50),
    so the share of low σ counts them; the draws are per sample, the same in any batch split."""
    batch = {"latents": torch.randn(1, 16, 1, 4, 4), "context": torch.randn(1, 4, 32)}
    overrides = ["timesteps.mode=logit_normal", "timesteps.shift=50", "timesteps.mix=[{fraction: 0.3, shift: 0.02}]"]
    trainer = Trainer(_cfg(tmp_path, *overrides), data=ListBatches([batch]))
    assert trainer.cfg.timesteps.mix[0].shift == 0.02 and trainer.cfg.timesteps.mix[0].logit_std == 1.0
    sigmas, _, _ = trainer.draw_noise(torch.zeros(400, 16, 1, 4, 4))
    low = sigmas < 0.5
    assert abs(low.float().mean().item() - 0.3) < 0.07
    assert (sigmas[low] < 0.2).float().mean() > 0.95 and (sigmas[~low] > 0.8).float().mean() > 0.95
    again = Trainer(_cfg(tmp_path / "b", *overrides), data=ListBatches([batch]))
    assert torch.equal(again.draw_noise(torch.zeros(400, 16, 1, 4, 4))[0], sigmas)


def test_an_expert_run_draws_only_its_noise_levels(tmp_path):
    """timesteps.min_sigma / max_sigma (a Wan2.2-style expert): per-frame and mixed draws stay in the range too,
    while a clean first frame keeps σ 0."""
    batch = {"latents": torch.randn(1, 16, 1, 4, 4), "context": torch.randn(1, 4, 32)}
    common = ["timesteps.mode=logit_normal", "timesteps.per_frame=0.5", "timesteps.first_frame=0.3",
              "timesteps.mix=[{fraction: 0.3, shift: 0.02}]"]
    for lo, hi in ((0.875, 1.0), (0.0, 0.4)):
        trainer = Trainer(_cfg(tmp_path / f"{lo}", *common, f"timesteps.min_sigma={lo}", f"timesteps.max_sigma={hi}"),
                          data=ListBatches([batch]))
        sigmas, _, _ = trainer.draw_noise(torch.zeros(300, 16, 5, 4, 4))
        clean = sigmas[:, 0] == 0
        assert 0.2 < clean.float().mean() < 0.4
        rest = torch.cat([sigmas[~clean].flatten(), sigmas[clean, 1:].flatten()])
        assert float(rest.min()) >= lo and float(rest.max()) <= hi
    with pytest.raises(ValueError, match="timesteps.min_sigma and timesteps.max_sigma must be two noise levels"):
        _cfg(tmp_path / "bad", "timesteps.min_sigma=0.9", "timesteps.max_sigma=0.5")


@pytest.mark.parametrize("mix, message", [
    ("[{fraction: 0.6}, {fraction: 0.5}]", "fractions that add up to at most 1"),
    ("[{fraction: 0.5, shift: 0}]", r"timesteps.mix.0.shift must be a positive number"),
    ("[{fraction: 0.5, logit_std: -1}]", r"timesteps.mix.0.logit_std must be a positive number"),
    ("[{fraction: 0.5, sigma: 1}]", "unknown config field 'timesteps.mix.0.sigma'"),
])
def test_noise_mix_is_checked(tmp_path, mix, message):
    with pytest.raises(ValueError, match=message):
        _cfg(tmp_path, f"timesteps.mix={mix}")


def test_a_stage_can_train_at_its_own_noise_levels(tmp_path):
    """stages.N.timesteps replaces the run's section for that stage: a run at high noise (shift 50) whose second
    stage draws far lower (shift 0.02), so the logged σ of each step says which stage drew it."""
    batch = {"latents": torch.randn(4, 16, 1, 4, 4), "context": torch.randn(4, 4, 32)}
    stages = ("stages=[{name: high, steps: 3, batch_size: 4}, {name: low, steps: 3, batch_size: 4, "
              "timesteps: {mode: logit_normal, shift: 0.02}}]")
    cfg = _cfg(tmp_path, stages, "timesteps.mode=logit_normal", "timesteps.shift=50", "log.every=1", "text_dropout=0")
    assert cfg.stage_timesteps(cfg.stages[0]) is cfg.timesteps and cfg.stage_timesteps(cfg.stages[1]).shift == 0.02
    Trainer(cfg, data=ListBatches([batch])).fit()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "sigma_mean" in r]
    assert [r["stage"] for r in rows] == ["high"] * 3 + ["low"] * 3
    assert all(r["sigma_mean"] > 0.8 and r["shift"] == 50 for r in rows[:3])
    assert all(r["sigma_mean"] < 0.2 and r["shift"] == 0.02 for r in rows[3:])


def test_a_stage_s_noise_levels_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"stages.0.timesteps.logit_std must be a positive number"):
        _cfg(tmp_path, "stages.0.timesteps={mode: logit_normal, logit_std: 0}")
