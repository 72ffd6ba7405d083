"""VAE reconstruction metrics: PSNR, SSIM against an independent implementation, the clips, and the CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openwan.cli import eval as eval_cmd
from openwan.configs import VAE_PRESETS
from openwan.data.synthetic import dataset_combinations
from openwan.eval.reconstruction import (
    FLAT_COLOURS,
    chroma_kept,
    evaluate_vae,
    flat_fields,
    load_photo,
    pan_clip,
    photo_clips,
    psnr,
    reconstruct,
    ssim,
    synthetic_clips,
    zoom_clip,
)
from openwan.models import WanVAE
from tiny import randomize

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM as Wang et al. (2004) define it: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, peak 1,
    population statistics, averaged over the window positions that lie inside the image, then channels, frames."""
    x, y = a.double().permute(0, 3, 1, 2), b.double().permute(0, 3, 1, 2)  # [T, 3, H, W]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(v):
        return F.conv2d(v, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_psnr():
    a = torch.zeros(5, 16, 16, 3)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == 100.0  # capped, so the report stays finite JSON


def test_ssim_matches_the_standard_definition():
    clip = pan_clip(load_photo("chelsea"), (48, 32), 3)
    g = torch.Generator().manual_seed(0)
    noisy = (clip + 0.05 * torch.randn(clip.shape, generator=g)).clamp(0, 1)
    blurred = F.avg_pool2d(clip.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    for other in (noisy, blurred):
        assert abs(ssim(clip, other) - _reference_ssim(clip, other)) < 1e-9
    assert ssim(clip, clip) == pytest.approx(1.0)
    assert ssim(clip, noisy) < ssim(clip, clip)


def _best_shift(a: torch.Tensor, b: torch.Tensor) -> int:
    """The s that best explains b as a moved s pixels to the left."""
    errors = [float((a[:, s:] - b[:, :a.shape[1] - s]).abs().mean()) for s in range(40)]
    return min(range(40), key=errors.__getitem__)


def test_pan_and_zoom_clips_move_the_camera():
    image = load_photo("astronaut")  # 512 x 512
    pan = pan_clip(image, (64, 64), 17)
    assert pan.shape == (17, 64, 64, 3) and 0 <= pan.min() and pan.max() <= 1
    # The 307-px window slides 128 px: the picture moves 128 / 307 * 64 = 26.7 px to the left.
    assert _best_shift(pan[0], pan[-1]) in (26, 27)
    assert _best_shift(pan[0], pan[1]) in (1, 2)
    zoom = zoom_clip(image, (64, 64), 17)
    # The last frame shows the centre half of the first, twice as large.
    halved = F.avg_pool2d(zoom[-1].permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)  # [32, 32, 3]
    assert (halved - zoom[0, 16:48, 16:48]).abs().mean() < 0.02 < 0.2 < (zoom[0] - zoom[-1]).abs().mean()


def test_clip_sets():
    clips = photo_clips(["coffee", "rocket"], (64, 48), 5)
    assert [n for n, _ in clips] == ["coffee-pan", "coffee-zoom", "rocket-pan", "rocket-zoom"]
    assert all(c.shape == (5, 48, 64, 3) for _, c in clips)
    synthetic = synthetic_clips(3, seed=0, size=(64, 64), frames=5)
    assert len(synthetic) == 3 and synthetic[0][1].shape == (5, 64, 64, 3)
    raw = synthetic_clips(3, seed=0, size=(64, 64), frames=5, codec=False)
    # The dataset's lossless 4:4:4 files: only the 8-bit YCbCr round trip is left (4:2:0 would be ~34 dB, below
    # the VAE's 35 dB target), so the clips measure the VAE and not the codec.
    assert all(45 < psnr(r, s) < 100 for (_, r), (_, s) in zip(raw, synthetic))
    # The recipe's dataset (--paths reversible) moves objects less far: the clips follow the paths asked for.
    reversible = synthetic_clips(3, seed=0, size=(64, 64), frames=5, codec=False, paths="reversible")
    assert [n for n, _ in reversible] == [n for n, _ in raw]
    assert any(not torch.equal(r, v) for (_, r), (_, v) in zip(raw, reversible))
    with pytest.raises(ValueError, match="paths must be one of long, reversible"):
        synthetic_clips(1, paths="fast")
    with pytest.raises(ValueError, match="not a colour photograph"):
        load_photo("camera")  # a grey-level image


class IdentityVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def test_a_perfect_vae_scores_perfectly():
    report = evaluate_vae(IdentityVAE(), size=(32, 32), frames=5, num_synthetic=2, photos=["coffee"],
                          progress=False)
    for kind in ("synthetic", "photos"):
        assert report[kind]["psnr"] == 100.0 and report[kind]["ssim"] == pytest.approx(1.0)
    assert report["flat_fields"] == {"fields": len(FLAT_COLOURS), "chroma_kept": 1.0, "psnr": 100.0}


class GreyVAE(IdentityVAE):
    """Keeps each pixel's brightness and drops its colour, halfway or all the way."""

    def __init__(self, keep: float):
        super().__init__()
        self.keep = keep

    def decode(self, z):
        grey = z.mean(1, keepdim=True)
        return grey + self.keep * (z - grey)


@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_flat_fields_measure_the_colour_a_vae_keeps(keep):
    report = flat_fields(GreyVAE(keep), size=(16, 16), frames=1)
    assert report["chroma_kept"] == pytest.approx(keep, abs=1e-6)
    assert report["psnr"] < 60
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(5, 4, 4, 3, generator=g)
    assert chroma_kept(inputs, inputs) == pytest.approx(1.0)
    assert chroma_kept(inputs, inputs.mean(-1, keepdim=True).expand_as(inputs)) == pytest.approx(0.0, abs=1e-9)


def test_bad_settings_are_user_errors():
    with pytest.raises(ValueError, match="4n\\+1"):
        evaluate_vae(IdentityVAE(), frames=16)
    with pytest.raises(ValueError, match="multiples of 16"):
        evaluate_vae(IdentityVAE(), size=(40, 40))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_vae(IdentityVAE(), num_synthetic=0, photos=[])


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


class UpsideDownVAE(IdentityVAE):
    """Decodes every frame upside down: a triangle then points down, which no dataset shape does."""

    def decode(self, z):
        return z.flip(-2)


@pytest.mark.parametrize("paths", ["reversible", "wrap"])
def test_the_shape_kept_is_read_in_windows_of_originals_and_reconstructions(paths):
    kept = evaluate_vae(IdentityVAE(), frames=17, num_synthetic=6, photos=(), progress=False,
                        paths=paths)["synthetic"]["shape_kept"]
    assert kept["original"] == kept["reconstruction"] == 1.0
    assert kept["reconstruction_by_shape"] == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
    flipped = evaluate_vae(UpsideDownVAE(), frames=17, num_synthetic=6, photos=(), progress=False,
                           paths=paths)["synthetic"]["shape_kept"]
    assert flipped["original"] == 1.0
    assert flipped["reconstruction_by_shape"] == {"circle": 1.0, "square": 1.0, "triangle": 0.0}
    shapes = [combo[1] for combo in dataset_combinations(6, 0, "heldout")]  # every clip has as many windows
    assert flipped["reconstruction"] == pytest.approx(1 - shapes.count("triangle") / len(shapes), abs=1e-4)


def test_cli_with_a_tiny_random_vae(tmp_path, capsys):
    vae = randomize(WanVAE(VAE_PRESETS["tiny"]), std=0.1)
    clips = torch.rand(3, 5, 32, 32, 3)
    batched = reconstruct(vae, clips)
    assert batched.shape == clips.shape and 0 <= batched.min() and batched.max() <= 1
    assert torch.allclose(batched[1], reconstruct(vae, clips[1]), atol=1e-5)  # a batch is its clips, one by one
    torch.save(vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    out = tmp_path / "report"
    code = _cli("vae", "--ckpt-dir", str(tmp_path / "Wan2.1_VAE.pth"), "--size", "32*32", "--frames", "5",
                "--num-synthetic", "2", "--batch-size", "3", "--photos", "astronaut", "--device", "cpu",
                "--paths", "reversible", "--out", str(out))
    printed = capsys.readouterr().out
    assert code == 0 and "synthetic: 2 clips, PSNR" in printed and "photos: 2 clips" in printed
    report = json.loads((out / "vae_report.json").read_text())
    assert report["size"] == [32, 32] and report["frames"] == 5 and report["paths"] == "reversible"
    assert [c["name"] for c in report["photos"]["per_clip"]] == ["astronaut-pan", "astronaut-zoom"]
    assert "shape read in 8-frame windows: reconstructions" in printed
    assert set(report["synthetic"]["shape_kept"]) == {"original", "original_by_shape", "reconstruction",
                                                      "reconstruction_by_shape"}
    for kind in ("synthetic", "photos"):
        r = report[kind]
        assert set(r) - {"shape_kept"} == {"clips", "psnr", "psnr_min", "ssim", "ssim_min", "per_clip"}
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and r["psnr_min"] <= r["psnr"]
    with Image.open(out / report["files"]["grid"]) as grid:
        assert grid.height > 4 * 96
