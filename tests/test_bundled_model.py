"""The bundled demo model ships in release layout, loads through the ordinary loaders and makes videos."""

from __future__ import annotations

import av
import pytest

from openwan.cli.main import main
from openwan.configs import DIT_PRESETS, VAE_PRESETS
from openwan.data.video import read_image
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED


def test_release_layout_and_size():
    """Wan2.2 A14B's two-expert layout: a high-noise and a low-noise DiT and the boundary between them."""
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"high_noise_model", "low_noise_model", "configuration.json", "Wan2.1_VAE.pth", "Wan2.1_VAE.json",
            "models_t5_umt5-xxl-enc-bf16.pth", "google"} <= names
    assert "diffusion_pytorch_model.safetensors" not in names  # no stray single DiT beside the experts
    for expert in ("high_noise_model", "low_noise_model"):
        assert {"config.json", "diffusion_pytorch_model.safetensors"} <= {p.name for p in (BUNDLED / expert).iterdir()}
    total = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert total <= 30 * 1024**2


@pytest.fixture(scope="module")
def pipe():
    return WanPipeline.from_pretrained(BUNDLED, device="cpu")


def test_loads_through_the_ordinary_loaders_and_generates(pipe):
    assert pipe.dit.cfg == pipe.dit_low.cfg == DIT_PRESETS["demo-small"] and pipe.boundary == 0.75
    assert pipe.vae.cfg.dim == VAE_PRESETS["demo"].dim and pipe.vae.cfg.latents_mean != VAE_PRESETS["demo"].latents_mean
    out = pipe("a green square sliding to the right", frame_num=9, sample_steps=4, progress=False)
    assert out.video.shape == (9, 64, 64, 3) and out.latents.shape == (16, 3, 8, 8)
    assert 0 <= out.video.min() and out.video.max() <= 1


def test_generate_without_a_checkpoint_uses_it(tmp_path, capsys):
    video, strip = tmp_path / "demo.mp4", tmp_path / "demo.png"
    code = main(["generate", "--prompt", "a red circle moving to the right", "--frame-num", "5",
                 "--sample-steps", "2", "--save-file", str(video), "--strip", str(strip)])
    printed = capsys.readouterr().out
    assert code == 0 and "bundled demo model" in printed and f"saved {video}" in printed
    with av.open(str(video)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 5
    assert read_image(strip).shape[1] >= 128  # frames enlarged side by side


def test_the_recipe_ships_its_newest_decoder(tmp_path):
    from demo_model import demo_vae_file

    assert demo_vae_file(tmp_path) == tmp_path / "vae2" / "Wan2.1_VAE.pth"
    for step in ("vae-decoder", "vae-wide"):
        (tmp_path / step).mkdir()
        (tmp_path / step / "Wan2.1_VAE.pth").touch()
        assert demo_vae_file(tmp_path) == tmp_path / step / "Wan2.1_VAE.pth"


def test_the_recipe_script_parses_and_compiles_only_where_it_can(tmp_path):
    """``bash -n`` on the recipe, and its DIT_COMPILE default: on only where a C++ compiler and Python's headers are
    found (torch.compile on a CPU needs both), off when told, off when the Python it is given cannot say."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "demo_model.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    header = script.read_text().split("mkdir -p")[0]  # the settings, before the script creates or runs anything
    probe = tmp_path / "settings.sh"
    probe.write_text(header + 'echo "compile=[$DIT_COMPILE]"\n')

    def compile_setting(**env):
        run = subprocess.run(["bash", str(probe)], env={"PATH": os.environ["PATH"], "PY": sys.executable, **env},
                             capture_output=True, text=True, check=True)
        return run.stdout.strip()

    can = shutil.which("c++") is not None and Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    assert compile_setting() == ("compile=[1]" if can else "compile=[]")
    assert compile_setting(DIT_COMPILE="") == "compile=[]"
    assert compile_setting(PY="false") == "compile=[]"


def test_the_recipe_dit_config_reads_as_a_training_config(tmp_path):
    from demo_model import write_dit_config

    from openwan.train import load_config

    for compile_blocks, seed, size in ((True, 0, {}), (False, 3, dict(preset="demo-small", batch_size=16,
                                                                          logit_std=2.0, middle_share=0.5,
                                                                          lr=1e-3))):
        path = write_dit_config(tmp_path / "dit.yaml", cache=tmp_path / "cache", steps=4500, first_frame=0.3,
                                compile_blocks=compile_blocks, out=tmp_path / "dit", seed=seed, **size)
        cfg = load_config(path)
        assert cfg.compile is compile_blocks and cfg.seed == seed
        assert [s.steps for s in cfg.stages] == [4500] and cfg.timesteps.first_frame == 0.3
        assert cfg.stages[0].timesteps is None and cfg.output_dir == str(tmp_path / "dit")
        assert cfg.model.preset == size.get("preset", "demo")
        assert cfg.stages[0].batch_size == size.get("batch_size", 24)
        assert cfg.optim.lr == size.get("lr", 5e-4)
        assert (cfg.timesteps.shift, cfg.timesteps.logit_std) == (3.0, size.get("logit_std", 1.0))
        # a share of the samples at shift 1, logit std 1; none at all (no mix, no extra draw) when it is 0
        mix = [(m.fraction, m.shift, m.logit_std) for m in cfg.timesteps.mix]
        assert mix == ([(0.5, 1.0, 1.0)] if "middle_share" in size else [])


def test_the_recipe_can_train_high_noise_levels_first(tmp_path):
    """--dit-high-steps: the first steps a stage at shift 3, logit std 2, the rest one at the run's own levels with
    its cosine restarted lower; the two add up to the DiT's steps."""
    from demo_model import AFTER_HIGH_LR, write_dit_config

    from openwan.train import load_config

    path = write_dit_config(tmp_path / "dit.yaml", cache=tmp_path / "cache", steps=4200, first_frame=0.3,
                            compile_blocks=False, out=tmp_path / "dit", preset="demo-small", batch_size=16,
                            shift=1.0, high_steps=2400)
    cfg = load_config(path)
    high, rest = cfg.stages
    assert (high.steps, rest.steps, high.batch_size, rest.batch_size) == (2400, 1800, 16, 16)
    assert (high.timesteps.shift, high.timesteps.logit_std, high.timesteps.first_frame) == (3.0, 2.0, 0.3)
    assert rest.timesteps is None and (cfg.timesteps.shift, cfg.timesteps.logit_std) == (1.0, 1.0)
    assert (high.lr, rest.lr, rest.warmup_steps) == (None, AFTER_HIGH_LR, 50) and cfg.optim.lr > AFTER_HIGH_LR
    with pytest.raises(ValueError, match="fewer than all of them"):
        write_dit_config(tmp_path / "bad.yaml", cache=tmp_path / "cache", steps=100, first_frame=0.3,
                         compile_blocks=False, out=tmp_path / "dit", high_steps=100)


def test_the_recipe_can_train_two_experts(tmp_path, capsys):
    """--dit-boundary: the high-noise expert's config starts from the DiT's checkpoint and trains only the levels
    above the boundary; bad combinations are refused before anything is trained."""
    from demo_model import main, write_dit_config

    from openwan.train import load_config

    start = tmp_path / "dit" / "step-00004000"
    path = write_dit_config(tmp_path / "dit-high.yaml", cache=tmp_path / "cache", steps=1500, first_frame=0.3,
                            compile_blocks=False, out=tmp_path / "dit-high", sigma_range=(0.75, 1.0), init=start,
                            warmup_steps=50)
    cfg = load_config(path)
    assert (cfg.timesteps.min_sigma, cfg.timesteps.max_sigma, cfg.timesteps.shift) == (0.75, 1.0, 3.0)
    assert (cfg.model.path, cfg.schedule.warmup_steps) == (str(start), 50)
    plain = load_config(write_dit_config(tmp_path / "dit.yaml", cache=tmp_path / "cache", steps=10, first_frame=0,
                                         compile_blocks=False, out=tmp_path / "dit"))
    assert (plain.timesteps.max_sigma, plain.model.path, plain.schedule.warmup_steps) == (1.0, None, 100)
    for bad, message in ((["--dit-boundary", "0.75", "--dit-high-steps", "100"], "two experts"),
                         (["--dit-boundary", "1.5"], "between 0 and 1"),
                         (["--dit-boundary", "0.75", "--dit-high-expert-steps", "0"], "positive number of steps")):
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / "work"), *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "work" / "cache").exists()


@pytest.mark.slow
def test_it_follows_held_out_prompts(pipe, tmp_path):
    """The whole stack end to end: the shipped weights (both experts), the sampler at the small models' defaults and
    the detector must still meet the issue's targets on the 18 held-out combinations, 3 seeds each as the issue
    measures them (they score 100 / 92.6 / 94.4%; one seed alone is 18 videos, where one miss is 5.6 points)."""
    from openwan.eval.prompts import TARGETS, evaluate_prompts

    report = evaluate_prompts(pipe, tmp_path, seeds=(0, 1, 2), save_videos=False, progress=False)
    assert report["num_videos"] == 54
    for attribute, target in TARGETS.items():
        assert report["accuracy"][attribute] >= target, (attribute, report["accuracy"])
