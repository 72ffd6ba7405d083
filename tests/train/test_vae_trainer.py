"""VAE training: 2D -> 3D inflation is exact for images, each stage learns, checkpoints resume exactly."""

from __future__ import annotations

import argparse
import copy
import json
import logging

import pytest
import torch

from conftest import official_keys
from openwan.checkpoints.convert import convert_vae
from openwan.configs import VAE_PRESETS, VAEConfig
from openwan.models.image_vae import ImageVAE
from openwan.models.vae import WanVAE
from openwan.train.checkpoint import list_checkpoints
from openwan.train.optim import lr_scale_at
from openwan.train.vae_losses import PatchDiscriminator3d, load_perceptual
from openwan.train.vae_models import (
    cell_colours,
    decode_raw,
    export_image_vae,
    export_wan_vae,
    inflate_image_vae,
    latent_stats,
    load_trained_vae,
    widen_decoder,
    with_latent_stats,
)
from openwan.train.vae_trainer import VAETrainConfig, VAETrainer, run_stage

TINY = VAE_PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (biases and norm gains too), so no path hides behind a zero or a one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def squares(n: int, frames: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Clips [n, 3, frames, size, size] in [-1, 1]: a coloured square moving right over a grey background."""
    g = torch.Generator().manual_seed(seed)
    video = torch.full((n, 3, frames, size, size), -0.5)
    for i in range(n):
        colour = torch.rand(3, generator=g) * 2 - 1
        side = int(torch.randint(4, 7, (1,), generator=g))
        x0, y0 = torch.randint(0, size - side, (2,), generator=g).tolist()
        for t in range(frames):
            x = min(x0 + t, size - side)
            video[i, :, t, y0:y0 + side, x:x + side] = colour[:, None, None]
    return video


def batches(frames: int, count: int = 2, size: int = 16) -> list[dict]:
    return [{"video": squares(2, frames, size, seed=k)} for k in range(count)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------ inflation


def test_image_vae_is_the_wan_vae_with_one_frame_kernels():
    with torch.device("meta"):  # full size, no memory
        flat = ImageVAE(VAEConfig()).state_dict()
    release = official_keys("Wan2.1 VAE")
    assert set(flat) == {k for k in release if ".time_conv." not in k}
    for key, shape in release.items():
        if key in flat:
            expected = shape[:2] + (1,) + shape[3:] if len(shape) == 5 else shape
            assert tuple(flat[key].shape) == expected, key


def test_inflation_codes_a_single_image_exactly():
    image_vae = _randomized(ImageVAE(TINY)).eval()
    vae = inflate_image_vae(image_vae).eval()
    image = squares(2, 1, 16) + 0.1 * torch.randn(2, 3, 1, 16, 16)
    with torch.no_grad():
        mu2, log_var2 = image_vae.encode_moments(image)
        mu3, log_var3 = vae.encode_moments(image)
        out2, out3 = image_vae.decode_raw(mu2), decode_raw(vae, mu2)
        public = vae.decode(vae.encode(image))  # scaling round trip, then the clamp
    print(f"single image 2D vs inflated 3D: mu {rel(mu3, mu2):.2e}, log_var {rel(log_var3, log_var2):.2e}, "
          f"decode {rel(out3, out2):.2e}, public encode/decode {rel(public, out2.clamp(-1, 1)):.2e}")
    assert (mu3 - mu2).abs().max() <= 1e-6 * mu2.abs().max()
    assert (log_var3 - log_var2).abs().max() <= 1e-6 * log_var2.abs().max()
    assert (out3 - out2).abs().max() <= 1e-6 * out2.abs().max()
    assert rel(public, out2.clamp(-1, 1)) <= 1e-5
    assert out2.abs().max() > 0.05 and mu2.abs().max() > 0.05  # a real signal, not zeros


def test_inflated_vae_starts_as_every_fourth_frame_held():
    image_vae = _randomized(ImageVAE(TINY)).eval()
    vae = inflate_image_vae(image_vae).eval()
    clip = squares(1, 9, 16) + 0.1 * torch.randn(1, 3, 9, 16, 16)
    with torch.no_grad():
        mu3, _ = vae.encode_moments(clip)  # [1, z, 3, 2, 2]
        mu2, _ = image_vae.encode_moments(clip[:, :, ::4])  # frames 0, 4, 8
        out3 = decode_raw(vae, mu3)  # [1, 3, 9, 16, 16]
        held = image_vae.decode_raw(mu3).repeat_interleave(4, dim=2)[:, :, 3:]  # 1 frame, then 4 copies each
    assert rel(mu3, mu2) <= 1e-5
    assert rel(out3, held) <= 1e-5


def test_stage_checks_the_model_kind():
    with pytest.raises(ValueError, match="ImageVAE"):
        VAETrainer(WanVAE(TINY), VAETrainConfig(stage=1))
    with pytest.raises(ValueError, match="inflate"):
        VAETrainer(ImageVAE(TINY), VAETrainConfig(stage=2))
    with pytest.raises(ValueError, match="stage"):
        VAETrainConfig(stage=4)


# ---------------------------------------------------------------------------------------- the stages


def _falls(history: list[dict], key: str = "rec", factor: float = 0.6) -> None:
    first = sum(h[key] for h in history[:2]) / 2
    last = sum(h[key] for h in history[-3:]) / 3
    print(f"{key}: first {first:.4f} -> last {last:.4f}")
    assert last < factor * first


def test_stage1_image_vae_learns_and_says_perceptual_is_off(caplog):
    cfg = VAETrainConfig(stage=1, steps=14, lr=2e-3)
    with caplog.at_level(logging.INFO, logger="openwan.train"):
        trainer = VAETrainer(ImageVAE(TINY), cfg)
    off = [r for r in caplog.records if "perceptual loss OFF" in r.getMessage()]
    assert len(off) == 1 and "no perceptual network weights" in off[0].getMessage()
    history = trainer.fit(batches(1))
    assert "perceptual" not in history[-1]
    _falls(history)


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = VAETrainConfig(stage=1, steps=11, lr=1.0, warmup_steps=2, min_lr_ratio=0.1)
    scales = [lr_scale_at(cfg, s) for s in range(cfg.steps)]
    assert scales[:3] == [0.5, 1.0, 1.0]  # warm-up, then the cosine's start
    assert scales[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(scales[2:], scales[3:]))
    assert {lr_scale_at(VAETrainConfig(steps=11), s) for s in range(11)} == {1.0}  # default: constant
    with pytest.raises(ValueError, match="min_lr_ratio must be a number in"):
        VAETrainConfig(min_lr_ratio=1.5)


def test_mse_term_is_logged_and_weighted():
    trainer = VAETrainer(ImageVAE(TINY), VAETrainConfig(stage=1, steps=1, l1_weight=0.0, l2_weight=2.0))
    metrics = trainer.fit(batches(1, count=1))[-1]
    assert metrics["rec"] == pytest.approx(2.0 * metrics["l2"], rel=1e-6) and metrics["l2"] > 0


def test_stage2_inflated_vae_learns_on_clips():
    vae = inflate_image_vae(ImageVAE(TINY))
    history = VAETrainer(vae, VAETrainConfig(stage=2, steps=12, lr=2e-3)).fit(batches(5))
    _falls(history)


def test_freeze_encoder_trains_the_decoder_and_keeps_the_latent_space(tmp_path):
    vae = _randomized(inflate_image_vae(ImageVAE(TINY)))
    stats = ([0.1 * k for k in range(TINY.z_dim)], [1.0 + 0.1 * k for k in range(TINY.z_dim)])
    start = export_wan_vae(with_latent_stats(vae, *stats), tmp_path / "start")
    before = load_trained_vae(start).state_dict()
    cfg = VAETrainConfig(stage=2, steps=6, lr=2e-3, freeze_encoder=True)
    path = run_stage(cfg, batches(5), tmp_path / "out", init=start)
    after = load_trained_vae(path)
    frozen = [k for k in before if k.startswith(("encoder.", "conv1."))]
    assert frozen and all(torch.equal(before[k], after.state_dict()[k]) for k in frozen)
    assert not torch.equal(before["conv2.weight"], after.state_dict()["conv2.weight"])  # the decoder side moved
    assert any(not torch.equal(before[k], v) for k, v in after.state_dict().items() if k.startswith("decoder."))
    assert after.cfg.latents_mean == pytest.approx(stats[0]) and after.cfg.latents_std == pytest.approx(stats[1])
    with pytest.raises(ValueError, match="froze the encoder"):  # resuming needs the flag it ran with
        run_stage(VAETrainConfig(stage=2, steps=8, lr=2e-3), batches(5), tmp_path / "out", resume=True)
    with torch.no_grad():  # same latents as before, byte for byte
        torch.testing.assert_close(after.eval().encode(batches(5)[0]["video"]),
                                   load_trained_vae(start).eval().encode(batches(5)[0]["video"]), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["3d", "image"])
def test_widened_decoder_decodes_as_before(kind):
    vae = _randomized(inflate_image_vae(ImageVAE(TINY)) if kind == "3d" else ImageVAE(TINY)).eval()
    z = torch.randn(2, TINY.z_dim, 2 if kind == "3d" else 3, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = decode_raw(vae, z)
        exact = widen_decoder(vae, 12, init_scale=0.0).eval()
        near = widen_decoder(vae, 12).eval()
        assert rel(decode_raw(exact, z), before) < 1e-5
        assert 0 < rel(decode_raw(near, z), before) < 2e-2  # the added channels are live, and quiet
    assert type(near) is type(vae) and near.cfg.decoder_width == 12 and near.cfg.dim == TINY.dim
    assert near.cfg == TINY.replace(decoder_dim=12)
    old, new = vae.state_dict(), near.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("decoder."))
    assert new["decoder.head.2.weight"].shape[1] == 12 and old["decoder.head.2.weight"].shape[1] == 8
    assert widen_decoder(vae, TINY.dim) is vae
    with pytest.raises(ValueError, match="can only be widened"):
        widen_decoder(near, 10)


def test_the_export_records_the_noise_range_its_decoder_was_trained_on(tmp_path):
    """A --decode-noise stage writes its range into the VAE's .json; loading and converting keep it; a later clean
    fine-tune and a stage that retrains the encoder (a new latent space) clear it."""
    start = export_wan_vae(_randomized(inflate_image_vae(ImageVAE(TINY))), tmp_path / "start")
    assert load_trained_vae(start).cfg.decode_noise is None and "decode_noise" not in json.loads(
        start.with_suffix(".json").read_text())
    noisy = run_stage(VAETrainConfig(stage=2, steps=2, lr=1e-3, freeze_encoder=True, decode_noise=(0.0, 0.15)),
                      batches(5), tmp_path / "noisy", init=start)
    assert json.loads(noisy.with_suffix(".json").read_text())["decode_noise"] == [0.0, 0.15]
    assert load_trained_vae(noisy).cfg.decode_noise == (0.0, 0.15)
    assert WanVAE.from_pretrained(convert_vae(noisy, tmp_path / "official", "official")).cfg.decode_noise == (0.0, 0.15)
    clean = run_stage(VAETrainConfig(stage=2, steps=2, lr=1e-3, freeze_encoder=True), batches(5), tmp_path / "clean",
                      init=noisy)
    assert load_trained_vae(clean).cfg.decode_noise is None
    retrained = run_stage(VAETrainConfig(stage=2, steps=2, lr=1e-3), batches(5), tmp_path / "retrained", init=noisy)
    assert load_trained_vae(retrained).cfg.decode_noise is None
    sidecar = noisy.with_suffix(".json")  # a range that is not one is refused, naming the field
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "decode_noise": [0.2, 0.1]}))
    with pytest.raises(ValueError, match="decode_noise must be null or two noise levels"):
        load_trained_vae(noisy)


def test_freeze_encoder_trains_a_widened_decoder_on_the_same_latents(tmp_path):
    start = export_wan_vae(_randomized(inflate_image_vae(ImageVAE(TINY))), tmp_path / "start")
    cfg = VAETrainConfig(stage=2, steps=4, lr=2e-3, freeze_encoder=True, save_every=2)
    path = run_stage(cfg, batches(5), tmp_path / "out", init=start, decoder_dim=12)
    wide, narrow = load_trained_vae(path), load_trained_vae(start)
    assert wide.cfg.decoder_dim == 12 and json.loads(path.with_suffix(".json").read_text())["decoder_dim"] == 12
    assert "decoder_dim" not in json.loads(start.with_suffix(".json").read_text())  # Wan2.1 configs stay as they were
    # The old channels now read the added ones: those weights started at zero and have been trained.
    assert wide.state_dict()["decoder.head.2.weight"][:, 8:].abs().sum() > 0
    with torch.no_grad():
        video = batches(5)[0]["video"]
        torch.testing.assert_close(wide.eval().encode(video), narrow.eval().encode(video), rtol=0, atol=0)
    with pytest.raises(ValueError, match="8 channels wide, not 16|12 channels wide, not 16"):
        run_stage(cfg, batches(5), tmp_path / "out", resume=True, decoder_dim=16)


def test_freeze_encoder_needs_a_trained_3d_vae(tmp_path):
    with pytest.raises(ValueError, match="stage 2 or 3"):
        VAETrainConfig(stage=1, freeze_encoder=True)
    image = export_image_vae(ImageVAE(TINY), tmp_path)
    with pytest.raises(ValueError, match="Wan2.1_VAE.pth"):
        run_stage(VAETrainConfig(stage=2, steps=1, freeze_encoder=True), batches(5), tmp_path / "out", init=image)


def test_stage3_gan_starts_after_n_steps_and_the_vae_learns():
    cfg = VAETrainConfig(stage=3, steps=12, lr=2e-3, gan_start=4, disc_dim=8, disc_layers=2)
    trainer = VAETrainer(inflate_image_vae(ImageVAE(TINY)), cfg)
    disc_before = [p.clone() for p in trainer.disc.parameters()]
    history = trainer.fit(batches(5))
    assert all("disc" not in h and "gan_g" not in h for h in history[:4])
    assert all("disc" in h and h["gan_weight"] > 0 for h in history[4:])
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, trainer.disc.parameters()))
    _falls(history, factor=0.7)


def test_discriminator_takes_clips_and_images():
    disc = PatchDiscriminator3d(dim=8, layers=3)
    assert disc(torch.zeros(2, 3, 5, 32, 32)).shape == (2, 1, 2, 4, 4)
    assert disc(torch.zeros(2, 3, 1, 32, 32)).shape == (2, 1, 1, 4, 4)


# ---------------------------------------------------------------------------------------- perceptual


def _alexnet_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's AlexNet layout (features.{0,3,6,8,10})."""
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = 0.05 * torch.randn(shape, generator=g)
        state[f"features.{i}.bias"] = 0.01 * torch.randn(shape[0], generator=g)
    state["classifier.1.weight"] = torch.zeros(4, 4)  # present in torchvision files, unused
    return state


def test_perceptual_loss_from_local_files(tmp_path, caplog):
    torchvision_file = tmp_path / "alexnet.pth"
    torch.save(_alexnet_features(), torchvision_file)
    # The same backbone in the lpips package's layout, plus LPIPS heads of all ones (= the channel sum).
    lpips = {key.replace("features.", f"net.slice{_alex_slice(int(key.split('.')[1]))}."): v
             for key, v in _alexnet_features().items() if key.startswith("features.")}
    heads = {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}
    torch.save({**lpips, **heads}, tmp_path / "lpips_alex.pth")
    with caplog.at_level(logging.INFO, logger="openwan.train"):
        plain = load_perceptual(torchvision_file)
        with_heads = load_perceptual(tmp_path / "lpips_alex.pth")
    assert any("perceptual loss ON: alexnet" in r.getMessage() for r in caplog.records)
    x = squares(2, 2, 32)
    y = (x + 0.3 * torch.randn(x.shape)).clamp(-1, 1).requires_grad_(True)
    assert plain(x, x).item() == 0.0
    d = plain(y, x)
    assert d.item() > 0
    d.backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in plain.parameters())
    torch.testing.assert_close(with_heads(y, x), plain(y, x), rtol=1e-5, atol=0)
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no VGG16 or AlexNet"):
        load_perceptual(tmp_path / "bad.pth")


def _alex_slice(index: int) -> int:
    """The lpips package's AlexNet slice holding feature ``index``."""
    return 1 + sum(index >= start for start in (2, 5, 8, 10))


def test_trainer_uses_the_perceptual_loss_when_given(tmp_path):
    path = tmp_path / "alexnet.pth"
    torch.save(_alexnet_features(), path)
    cfg = VAETrainConfig(stage=1, steps=2, lr=1e-3, perceptual_weights=(str(path),))
    history = VAETrainer(ImageVAE(TINY), cfg).fit(batches(1, size=32))
    assert all(h["perceptual"] > 0 for h in history)
    assert history[0]["rec"] == pytest.approx(3 * history[0]["l1"] + 3 * history[0]["perceptual"], rel=1e-5)


# -------------------------------------------------------------------------------- checkpoints, resume


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    cfg = VAETrainConfig(stage=3, steps=4, lr=1e-3, gan_start=1, disc_dim=8, disc_layers=2, save_every=0)
    data = batches(5, count=3)
    start = inflate_image_vae(_randomized(ImageVAE(TINY)))
    torch.manual_seed(1)  # the discriminator's initialisation
    expected = VAETrainer(copy.deepcopy(start), cfg).fit(data)
    torch.manual_seed(1)
    VAETrainer(copy.deepcopy(start), cfg, out_dir=tmp_path).fit(data, steps=2)
    ((_, checkpoint),) = list_checkpoints(tmp_path)
    resumed = VAETrainer(WanVAE(TINY), cfg, out_dir=tmp_path)  # different weights until the checkpoint loads
    resumed.load_checkpoint(checkpoint)
    rest = resumed.fit(data)
    keys = ("loss", "l1", "kl", "gan_g", "disc")
    assert [[h[k] for k in keys] for h in rest] == [[h[k] for k in keys] for h in expected[2:]]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


class _Stateful:
    """A data source that saves its position (like the DiT trainer's SamplerLoader)."""

    def __init__(self, items):
        self.items, self.position = items, 0

    def __iter__(self):
        while self.position < len(self.items):
            self.position += 1
            yield self.items[self.position - 1]
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_resume_with_a_stateful_source_and_checkpoint_rotation(tmp_path):
    cfg = VAETrainConfig(stage=1, steps=5, lr=1e-3, save_every=1, keep_last=2)
    items = batches(1, count=3) + [None]  # a batch whose clips were all unreadable is skipped
    start = _randomized(ImageVAE(TINY))
    expected = VAETrainer(copy.deepcopy(start), cfg).fit(_Stateful(items))
    VAETrainer(copy.deepcopy(start), cfg, out_dir=tmp_path).fit(_Stateful(items), steps=3)
    stale = tmp_path / ".tmp-step-00000004-1"
    stale.mkdir()  # what a write killed before its rename leaves
    (stale / "model.safetensors").write_bytes(b"half written")
    names = [p.name for _, p in list_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000003"]  # the DiT trainer's layout: atomic step folders, keep_last
    files = sorted(p.name for p in (tmp_path / names[-1]).iterdir())
    assert files == ["checksums.json", "model.safetensors", "optimizer.pt", "rng.safetensors", "trainer_state.json"]
    resumed = VAETrainer(ImageVAE(TINY), cfg, out_dir=tmp_path)
    resumed.load_checkpoint(tmp_path / names[-1])
    rest = resumed.fit(_Stateful(items))
    assert not stale.exists()  # removed when the resumed run started
    assert [h["loss"] for h in rest] == [h["loss"] for h in expected[3:]]


# ------------------------------------------------------------------------------ latent stats, export


def test_export_loads_with_from_pretrained_and_carries_latent_stats(tmp_path):
    vae = _randomized(inflate_image_vae(ImageVAE(TINY))).eval()
    data = batches(5, count=2)
    mean, std = latent_stats(vae, data, max_batches=2)
    with torch.no_grad():
        mus = torch.cat([vae.encode_moments(b["video"])[0] for b in data]).double()
    per_channel = mus.transpose(0, 1).flatten(1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), per_channel.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), per_channel.std(1, correction=0))

    path = export_wan_vae(with_latent_stats(vae, mean, std), tmp_path)
    assert path.name == "Wan2.1_VAE.pth"
    plain = WanVAE.from_pretrained(path)  # official layout: loads strictly, no conversion
    assert plain.cfg.latents_mean == pytest.approx(mean)  # the loader reads the statistics beside the .pth
    path.with_suffix(".json").rename(tmp_path / "aside.json")
    assert WanVAE.from_pretrained(path).cfg.latents_mean == TINY.latents_mean  # the .pth alone carries none
    (tmp_path / "aside.json").rename(path.with_suffix(".json"))
    loaded = load_trained_vae(path)
    assert json.loads(path.with_suffix(".json").read_text())["latents_mean"] == pytest.approx(mean)
    assert loaded.cfg.latents_mean == pytest.approx(mean) and loaded.cfg.latents_std == pytest.approx(std)
    with torch.no_grad():
        z = loaded.encode(data[0]["video"])
    # normalised with the measured statistics: about zero mean and unit spread per channel over the sample
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 0.5


def test_cli_runs_the_three_stages(tmp_path):
    from PIL import Image

    from openwan.cli import train_vae
    from openwan.data.manifest import ClipRecord, write_manifest

    records = []
    for k, frame in enumerate(squares(4, 1, 16)[:, :, 0]):
        pixels = ((frame.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(tmp_path / f"img{k}.png")
        records.append(ClipRecord(path=f"img{k}.png", caption="", frames=1, fps=16, width=16, height=16))
    manifest = write_manifest(records, tmp_path / "clips.jsonl")
    parser = argparse.ArgumentParser()
    train_vae.add_parser(parser.add_subparsers())
    common = ["--manifest", str(manifest), "--preset", "tiny", "--size", "16", "--frames", "1", "--steps", "2",
              "--batch-size", "2", "--workers", "0", "--device", "cpu", "--disc-dim", "8"]

    def cli(*extra):
        args = parser.parse_args(["train-vae", *extra, *common])
        return args.run(args)

    assert cli("--stage", "1", "--out", str(tmp_path / "s1")) == 0
    image_vae = tmp_path / "s1" / "image_vae.pth"
    assert cli("--stage", "2", "--out", str(tmp_path / "s2"), "--init", str(image_vae), "--colour-weight", "2") == 0
    wan_vae = tmp_path / "s2" / "Wan2.1_VAE.pth"
    logged = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["colour"] > 0 for m in logged) and "colour" not in load_trained_vae(wan_vae).state_dict()
    assert cli("--stage", "3", "--out", str(tmp_path / "s3"), "--init", str(wan_vae)) == 0
    assert load_trained_vae(tmp_path / "s3" / "Wan2.1_VAE.pth").cfg.dim == TINY.dim
    with pytest.raises(ValueError, match="already holds checkpoints"):
        cli("--stage", "3", "--out", str(tmp_path / "s3"), "--init", str(wan_vae))
    assert cli("--stage", "3", "--out", str(tmp_path / "s3"), "--resume", "--steps", "3") == 0


def test_run_stage_needs_the_previous_stage(tmp_path):
    with pytest.raises(ValueError, match="image_vae.pth"):
        run_stage(VAETrainConfig(stage=2, steps=1), batches(5), tmp_path)


# ------------------------------------------------------------------------------------ the colour probe


def test_cell_colours_average_the_pixels_each_latent_cell_encodes():
    video = torch.randn(2, 3, 9, 16, 16)
    cells = cell_colours(WanVAE(TINY), video)  # 1 + 4 + 4 frames -> 3 latent frames of 2 x 2 cells
    assert cells.shape == (2, 3, 3, 2, 2)
    torch.testing.assert_close(cells[:, :, 0, 1, 0], video[:, :, 0, 8:, :8].mean(dim=(2, 3)))
    torch.testing.assert_close(cells[:, :, 2, 0, 1], video[:, :, 5:9, :8, 8:].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(cell_colours(WanVAE(TINY), video[:, :, :1]), cells[:, :, :1])  # an image alone
    per_frame = cell_colours(ImageVAE(TINY), video)  # an image VAE encodes each frame alone
    assert per_frame.shape == (2, 3, 9, 2, 2)
    torch.testing.assert_close(per_frame[:, :, 4, 1, 1], video[:, :, 4, 8:, 8:].mean(dim=(2, 3)))


def test_colour_probe_is_trained_weighted_and_resumed(tmp_path):
    cfg = VAETrainConfig(stage=1, steps=12, lr=2e-3, l1_weight=1.0, colour_weight=3.0, save_every=0)
    data = batches(1, count=3)
    start = _randomized(ImageVAE(TINY))
    trainer = VAETrainer(copy.deepcopy(start), cfg)
    history = trainer.fit(data)
    assert history[0]["rec"] == pytest.approx(history[0]["l1"] + 3.0 * history[0]["colour"], rel=1e-6)
    _falls(history, "colour")
    # a run cut at step 6 and resumed gives the same losses: the probe and its optimizer state are checkpointed
    VAETrainer(copy.deepcopy(start), cfg, out_dir=tmp_path).fit(data, steps=6)
    ((_, checkpoint),) = list_checkpoints(tmp_path)
    resumed = VAETrainer(ImageVAE(TINY), cfg, out_dir=tmp_path)
    resumed.load_checkpoint(checkpoint)
    assert [h["colour"] for h in resumed.fit(data)] == [h["colour"] for h in history[6:]]
    with pytest.raises(ValueError, match="same --colour-weight"):
        VAETrainer(ImageVAE(TINY), VAETrainConfig(stage=1, steps=12)).load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="colour_weight trains the encoder"):
        VAETrainConfig(stage=2, freeze_encoder=True, colour_weight=1.0)
    with pytest.raises(ValueError, match="colour_weight must be a number >= 0"):
        VAETrainConfig(colour_weight=-1.0)


# ------------------------------------------------------------------------------------------- the config


def _parse_cli(*argv):
    from openwan.cli import train_vae

    parser = argparse.ArgumentParser()
    train_vae.add_parser(parser.add_subparsers())
    return parser.parse_args(["train-vae", *argv])


def test_cli_config_file_flags_and_overrides_make_one_config(tmp_path, capsys):
    from openwan.cli.train_vae import resolve_config

    (tmp_path / "vae.yaml").write_text("stage: 2\nlr: 2.0e-4\nmodel: {init: a.pth}\n"
                                       "data: {manifest: clips.jsonl, frames: 9, batch_size: 8}\noutput_dir: out\n")
    cfg = resolve_config(_parse_cli("--config", str(tmp_path / "vae.yaml"), "--lr", "3e-4", "data.size=64"))
    assert (cfg.stage, cfg.lr, cfg.model.init, cfg.data.crop(2), cfg.data.batch_size) == (2, 3e-4, "a.pth", (9, 64), 8)
    assert cfg.device == "auto" and cfg.l1_weight == 3.0  # CLI default under the file; the dataclass default
    args = _parse_cli("--config", str(tmp_path / "vae.yaml"), "--print-config", "steps=7")
    assert args.run(args) == 0 and "steps: 7" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown config field 'data.colour'; data has: manifest"):
        resolve_config(_parse_cli("--config", str(tmp_path / "vae.yaml"), "data.colour=red"))
    with pytest.raises(ValueError, match="config field data.frames must be a frame count 4n\\+1"):
        resolve_config(_parse_cli("--config", str(tmp_path / "vae.yaml"), "--frames", "4"))
    with pytest.raises(ValueError, match="train-vae needs output_dir"):
        resolve_config(_parse_cli("--stage", "1", "--manifest", "clips.jsonl"))


def test_every_flag_of_the_demo_recipe_sets_its_field():
    """The flags recipes/demo_model.sh passes to train-vae, read into the config."""
    from openwan.cli.train_vae import resolve_config as resolve

    cfg = resolve(_parse_cli(
        "--stage", "2", "--freeze-encoder", "--manifest", "m.jsonl", "--out", "o", "--init", "v.pth",
        "--decoder-dim", "24", "--preset", "demo", "--size", "64", "--frames", "9", "--batch-size", "4",
        "--steps", "600", "--lr", "1e-4", "--warmup-steps", "50", "--min-lr-ratio", "0.05", "--l1-weight", "0",
        "--l2-weight", "10", "--colour-weight", "0", "--log-every", "50", "--save-every", "150", "--workers", "1"))
    assert (cfg.stage, cfg.freeze_encoder, cfg.data.manifest, cfg.output_dir, cfg.model.init) == (
        2, True, "m.jsonl", "o", "v.pth")
    assert (cfg.model.decoder_dim, cfg.model.preset, cfg.data.size, cfg.data.frames, cfg.data.batch_size) == (
        24, "demo", 64, 9, 4)
    assert (cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio, cfg.l1_weight, cfg.l2_weight) == (
        600, 1e-4, 50, 0.05, 0.0, 10.0)
    assert (cfg.colour_weight, cfg.log_every, cfg.save_every, cfg.data.num_workers) == (0.0, 50, 150, 1)
    cfg = resolve(_parse_cli("--stage", "3", "--manifest", "m", "--out", "o", "--no-adaptive-gan", "--resume",
                             "--perceptual", "a.pth", "b.pth", "--gan-start", "5", "--disc-dim", "8"))
    assert (cfg.gan_adaptive, cfg.resume, cfg.perceptual_weights, cfg.gan_start, cfg.disc_dim) == (
        False, True, ("a.pth", "b.pth"), 5, 8)
