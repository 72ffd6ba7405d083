"""`openwan train --export`: a tiny real training run becomes a release folder — the trained DiT with the VAE
(and its latent statistics), umT5 and tokenizer the run trained with — that `openwan generate --ckpt-dir` runs."""

from __future__ import annotations

import pytest
import torch

from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.configs import VAE_PRESETS
from openwan.data.synthetic import make_dataset
from openwan.data.video import probe_video
from openwan.models import WanVAE
from openwan.pipelines import WanPipeline
from openwan.train.checkpoint import checkpoint_dit
from tiny import randomize, tiny_components

RELEASE_FILES = {"config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth", "Wan2.1_VAE.json",
                 "models_t5_umt5-xxl-enc-bf16.pth", "google"}


@pytest.fixture(scope="module")
def parts():
    """Tiny encoders; the VAE has latent statistics of its own, as an openwan-trained VAE does."""
    parts = tiny_components("tiny")
    stats = VAE_PRESETS["tiny"].replace(latents_mean=tuple(0.05 * i for i in range(16)), latents_std=(1.5,) * 16)
    parts["vae"] = randomize(WanVAE(stats), std=0.1, seed=1)
    return parts


@pytest.fixture(scope="module")
def run(parts, tmp_path_factory):
    """Two training steps of the tiny DiT on synthetic clips, encoded on the fly by the encoders' files."""
    root = tmp_path_factory.mktemp("export")
    encoders = save_release(root / "encoders", **parts)
    manifest = make_dataset(root / "data", 2, size=32, frames=5)
    config = root / "train.yaml"
    config.write_text(f"""
model: {{preset: tiny, vae: {encoders / "Wan2.1_VAE.pth"}, text_encoder: {encoders / "models_t5_umt5-xxl-enc-bf16.pth"},
        tokenizer: {encoders / "google" / "umt5-xxl"}}}
data: {{manifest: {manifest}}}
stages: [{{steps: 2, batch_size: 1, buckets: [[5, 32, 32]]}}]
checkpoint: {{every: 2}}
log: {{progress: false}}
output_dir: {root / "run"}
""")
    assert main(["train", "--config", str(config)]) == 0
    return root


def _generate(pipe: WanPipeline):
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    return pipe("a red circle moving to the left", size=(32, 32), frame_num=5, sample_steps=2, latents=noise,
                progress=False)


def test_export_writes_a_release_that_generates(run, parts, tmp_path):
    out = tmp_path / "release"
    assert main(["train", "--export", str(run / "run"), str(out)]) == 0
    assert {p.name for p in out.iterdir()} == RELEASE_FILES  # no temporary files left behind either
    assert (out / "google" / "umt5-xxl" / "tokenizer_config.json").is_file()
    pipe = WanPipeline.from_pretrained(out, device="cpu")
    trained = checkpoint_dit(run / "run", "ema")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in pipe.dit.state_dict().items())
    assert pipe.vae.cfg == parts["vae"].cfg  # the latent statistics came along
    # The release generates what the trained DiT generates with the run's own encoders.
    same = WanPipeline(dit=trained, vae=parts["vae"], text_encoder=parts["text_encoder"],
                       tokenizer=parts["tokenizer"], defaults=pipe.defaults)
    assert torch.equal(_generate(pipe).video, _generate(same).video)
    video = tmp_path / "out.mp4"
    assert main(["generate", "--ckpt-dir", str(out), "--prompt", "a blue square", "--size", "32*32",
                 "--frame-num", "5", "--sample-steps", "2", "--save-file", str(video)]) == 0
    assert probe_video(video)["frames"] == 5


def test_export_of_a_run_without_encoder_files_says_what_to_give(run, tmp_path, capsys):
    config = run / "run" / "config.yaml"
    cached = tmp_path / "cached"
    cached.mkdir()
    step = next((run / "run").glob("step-*"))
    (cached / step.name).symlink_to(step, target_is_directory=True)
    (cached / "config.yaml").write_text(config.read_text().replace(str(run / "encoders" / "Wan2.1_VAE.pth"), "tiny"))
    assert main(["train", "--export", str(cached), str(tmp_path / "out")]) == 2
    assert "model.vae=tiny is not a file" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["train", "--export", str(cached), str(tmp_path / "out"), "--vae", str(tmp_path / "nope.pth")]) == 2
    assert "--vae" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # Given by hand, the encoders complete the release.
    encoders = run / "encoders"
    vae = str(encoders / "Wan2.1_VAE.pth")
    assert main(["train", "--export", str(cached), str(tmp_path / "out"), "--vae", vae]) == 0
    assert WanPipeline.from_pretrained(tmp_path / "out", device="cpu").vae.cfg.latents_std == (1.5,) * 16
