"""`openwan eval compare`: metrics on real footage under graded damage, folders matched by name, two settings of a
tiny random pipeline, and the CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from curate.footage import footage, garbage, write_video
from openwan.cli import eval_compare
from openwan.eval.bench.base import Video
from openwan.eval.bench.registry import DIMENSIONS
from openwan.eval.compare import (
    DEFAULT_DIMENSIONS,
    LPIPS_MISSING,
    REPORT_FILE,
    WORST_FILE,
    build_bench,
    compare_dirs,
    compare_videos,
    gate,
    latent_rel_error,
    to_json,
    to_uint8,
)
from openwan.eval.compare_settings import check_setting, compare_settings
from openwan.pipelines import WanPipeline
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from tiny import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_LPIPS = importlib.util.find_spec("lpips") is not None
HAS_ACCEL = importlib.util.find_spec("openwan.runtime.accel") is not None


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """9 frames of real footage (a man on a car phone, 176x144), area-resized to 64x48."""
    return footage("carphone", 0, 9, size=(64, 48))


def _noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(frames + noise, 0, 255).round().astype(np.uint8)


def _blurred(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


# ---------------------------------------------------------------------------------------------- metrics


def test_identical_clips_give_infinite_psnr_ssim_one_and_no_latent_error(clip):
    z = torch.randn(16, 3, 6, 8)
    r = compare_videos(clip, clip.copy(), ref_latents=z, cand_latents=z.clone())
    assert r["psnr_db"] == math.inf and r["psnr_db_per_frame"] == [math.inf] * 9 and r["mse"] == 0.0
    assert r["ssim"] == pytest.approx(1.0, abs=1e-9) and r["latent_rel_error"] == 0.0
    assert (r["frames"], r["width"], r["height"]) == (9, 64, 48)
    floats = torch.from_numpy(clip).float() / 255  # float32 rounding off the float64 /255: near, not identical
    assert compare_videos(floats, floats.clone())["psnr_db"] == math.inf
    assert compare_videos(floats, clip)["psnr_db"] == 100.0 and compare_videos(to_uint8(floats), clip)["mse"] == 0
    text = json.dumps(to_json(r), allow_nan=False)  # strict JSON: inf is the string "inf"
    back = json.loads(text)
    assert back["psnr_db"] == "inf" and float(back["psnr_db"]) == math.inf


def test_psnr_matches_its_definition_and_falls_with_noise(clip):
    sigmas = (2, 4, 8, 16, 32)
    results = [compare_videos(clip, _noisy(clip, s)) for s in sigmas]
    for s, r in zip(sigmas, results):  # an independent PSNR: numpy over all elements, peak 255
        mse = np.mean((clip.astype(np.float64) - _noisy(clip, s)) ** 2)
        assert r["psnr_db"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-3)
        assert r["lpips_not_measured"] == LPIPS_MISSING if not HAS_LPIPS else r["lpips"] > 0
    psnrs, ssims = [r["psnr_db"] for r in results], [r["ssim"] for r in results]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    assert psnrs[0] > 40 and psnrs[-1] < 20 and ssims[0] > 0.97 and ssims[-1] < 0.6


def test_psnr_and_ssim_fall_with_blur_and_the_worst_frame_is_found(clip):
    results = [compare_videos(clip, _blurred(clip, s)) for s in (0.5, 1.0, 2.0, 4.0)]
    psnrs, ssims = [r["psnr_db"] for r in results], [r["ssim"] for r in results]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert all(a > b for a, b in zip(ssims, ssims[1:])), ssims
    damaged = clip.copy()
    damaged[6] = _noisy(clip[6:7], 40)[0]  # one bad frame among clean ones
    r = compare_videos(clip, damaged)
    assert r["worst_frame"] == 6 and r["psnr_db_per_frame"][0] == math.inf and r["ssim_per_frame"][6] < 0.6


@pytest.mark.skipif(HAS_LPIPS, reason="lpips is installed: its measured path runs in the noise test")
def test_lpips_says_what_to_install(clip):
    r = compare_videos(clip, clip, with_lpips=True)
    assert "lpips" not in r and r["lpips_not_measured"] == LPIPS_MISSING
    assert "lpips_not_measured" not in compare_videos(clip, clip, with_lpips=False)


def test_latent_relative_error():
    a = torch.tensor([3.0, 4.0])  # norm 5
    assert latent_rel_error(a, torch.tensor([3.0, 5.0])) == pytest.approx(0.2)
    assert latent_rel_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert latent_rel_error(torch.zeros(2), a) == math.inf
    with pytest.raises(ValueError, match="same size"):
        latent_rel_error(a, torch.zeros(3))


def test_bad_frames_are_refused_with_a_sentence(clip):
    with pytest.raises(ValueError, match="same size and frame count"):
        compare_videos(clip, clip[:5])
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        compare_videos(clip[0], clip[0])
    with pytest.raises(ValueError, match="floats in \\[0, 1\\]"):
        compare_videos(torch.full((2, 16, 16, 3), 2.0), torch.ones(2, 16, 16, 3))
    with pytest.raises(ValueError, match="window"):
        compare_videos(clip[:, :8, :8], clip[:, :8, :8])


# ---------------------------------------------------------------------------------------------- folders


def _folders(tmp_path, clip):
    """ref/ and cand/ with: a (identical, latents both sides), b (noisy, latents in ref only and of another shape
    in cand), c (ref only), d (cand only), e (different size), f (garbage in cand)."""
    ref, cand = tmp_path / "ref", tmp_path / "cand"
    other = footage("bikes", 0, 9, size=(64, 48))
    for folder in (ref, cand):
        write_video(clip, folder / "a.mp4")
        save_file({"latents": torch.arange(12.0).reshape(3, 4)}, str(folder / "a.safetensors"))
        write_video(other, folder / "f.mp4" if folder == ref else folder / "d.mp4")
    write_video(other, ref / "b.mp4")
    write_video(_noisy(other, 12), cand / "b.mp4")
    save_file({"latents": torch.ones(3, 4)}, str(ref / "b.safetensors"))
    save_file({"latents": torch.ones(4, 3)}, str(cand / "b.safetensors"))
    write_video(clip, ref / "c.mp4")
    write_video(clip, ref / "e.mp4")
    write_video(footage("carphone", 0, 9, size=(32, 32)), cand / "e.mp4")
    garbage(cand / "f.mp4")
    return ref, cand


def test_folders_matched_by_name_with_refusals_recorded_not_fatal(tmp_path, clip):
    ref, cand = _folders(tmp_path, clip)
    out = tmp_path / "report"
    report = compare_dirs(ref, cand, out_dir=out)
    assert report["missing"] == ["c.mp4"] and report["extra"] == ["d.mp4"]
    refused = {r["name"]: r["reason"] for r in report["refused"]}
    assert set(refused) == {"e.mp4", "f.mp4"}
    assert "9 frames of 64x48" in refused["e.mp4"] and "9 frames of 32x32" in refused["e.mp4"]
    assert "not a readable video" in refused["f.mp4"] or "could not be decoded" in refused["f.mp4"]
    pairs = {p["name"]: p for p in report["pairs"]}
    assert set(pairs) == {"a.mp4", "b.mp4"}
    assert pairs["a.mp4"]["psnr_db"] == math.inf and pairs["a.mp4"]["latent_rel_error"] == 0.0
    assert 15 < pairs["b.mp4"]["psnr_db"] < 35 and "latent_rel_error" not in pairs["b.mp4"]
    assert "(3, 4) and (4, 3) differ" in pairs["b.mp4"]["latents_not_measured"]
    s = report["summary"]
    assert s["pairs"] == 2 and s["psnr_db_min"] == pairs["b.mp4"]["psnr_db"]
    assert s["psnr_db"] == pytest.approx(pairs["b.mp4"]["psnr_db"] + 10 * math.log10(2), abs=1e-3)  # half the mse
    assert s["latent_pairs"] == 1 and "PSNR" in report["line"]
    for name in DEFAULT_DIMENSIONS:  # landed dimensions: both sides scored, identical videos score the same
        row = report["bench"][name]
        if "not_measured" in row:
            assert row["not_measured"].startswith("not measured: ")
        else:
            assert pairs["a.mp4"]["bench"][name]["diff"] == 0.0 and row["pairs"] == 2
    flicker = pairs["b.mp4"].get("bench", {}).get("temporal_flickering", {})
    if "diff" in flicker:  # noise drawn afresh in every frame flickers
        assert flicker["diff"] < -0.02
    written = json.loads((out / REPORT_FILE).read_text())
    assert written["pairs"][0]["psnr_db"] == "inf" and written["refused"] == report["refused"]
    with Image.open(out / WORST_FILE) as png:  # the noisy pair: reference, candidate, difference
        assert png.width >= 3 * 4 * 96 and png.height >= 96


def test_images_are_compared_as_one_frame(tmp_path, clip):
    for folder, frame in (("ref", clip[0]), ("cand", _blurred(clip[:1], 1.0)[0])):
        (tmp_path / folder).mkdir()
        Image.fromarray(frame).save(tmp_path / folder / "still.png")
    report = compare_dirs(tmp_path / "ref", tmp_path / "cand", dimensions=["imaging_quality"], with_lpips=False)
    pair = report["pairs"][0]
    assert pair["frames"] == 1 and pair["psnr_db"] == compare_videos(clip[:1], _blurred(clip[:1], 1.0))["psnr_db"]
    assert "ref" in pair["bench"]["imaging_quality"] and "no still.safetensors" in pair["latents_not_measured"]


def test_folders_without_a_common_name_or_with_unknown_dimensions_are_refused(tmp_path, clip):
    write_video(clip, tmp_path / "ref" / "a.mp4")
    write_video(clip, tmp_path / "cand" / "b.mp4")
    with pytest.raises(ValueError, match="same-named"):
        compare_dirs(tmp_path / "ref", tmp_path / "cand")
    with pytest.raises(ValueError, match="not a folder"):
        compare_dirs(tmp_path / "nowhere", tmp_path / "cand")
    write_video(clip, tmp_path / "cand" / "a.mp4")
    with pytest.raises(ValueError, match="unknown bench dimension 'sharpness'"):
        compare_dirs(tmp_path / "ref", tmp_path / "cand", dimensions=["sharpness"])


# ---------------------------------------------------------------------------------------------- settings

BASE = {"size": (32, 32), "frame_num": 5, "sample_steps": 4}


@pytest.fixture(scope="module")
def pipe() -> WanPipeline:
    return WanPipeline(**tiny_components("tiny"), defaults=FAMILY_DEFAULTS["tiny"])


def test_identical_settings_give_infinite_psnr_and_equal_evaluation_counts(pipe):
    prompts = ["a red circle moves left", "a blue square"]
    report = compare_settings(pipe, prompts, [0], BASE, dict(BASE), dimensions=["temporal_flickering"])
    ref, cand = report["runs"]["ref"], report["runs"]["cand"]
    # guidance batched: one DiT call per step computing both branches
    assert ref["dit_calls_per_video"] == cand["dit_calls_per_video"] == 4
    assert ref["dit_evals_per_video"] == cand["dit_evals_per_video"] == 8 and ref["dit_evals"] == 16
    assert ref["videos"] == 2 and ref["wall_s"] > 0 and set(ref["stage_s"]) >= {"denoise", "decode"}
    s = report["summary"]
    assert s["psnr_db"] == math.inf and s["ssim"] == pytest.approx(1.0) and s["latent_rel_error"] == 0.0
    assert "dit evals 8 -> 8" in report["line"] and "identical videos" in report["line"]
    row = report["bench"]["temporal_flickering"]
    if "not_measured" not in row:  # scored on the videos as generated (8-bit), the same on both sides
        dim = build_bench(["temporal_flickering"])[0][0]
        video = pipe(prompts[1], seed=0, progress=False, **BASE).video
        direct = dim.score(Video(to_uint8(video).numpy(), fps=16)).value
        assert report["pairs"][1]["bench"]["temporal_flickering"] == {"ref": direct, "cand": direct, "diff": 0.0}


def test_fewer_steps_give_fewer_evaluations_and_a_finite_psnr(pipe, tmp_path):
    out = tmp_path / "cmp"
    report = compare_settings(pipe, ["a red circle moves left"], [0, 1], BASE, {**BASE, "sample_steps": 2},
                              out_dir=out, save_videos=True)
    assert report["runs"]["ref"]["dit_evals_per_video"] == 8 and report["runs"]["cand"]["dit_evals_per_video"] == 4
    s = report["summary"]
    assert math.isfinite(s["psnr_db"]) and s["ssim"] < 1 and 0 < s["latent_rel_error"] < math.inf
    assert "dit evals 8 -> 4" in report["line"] and f"PSNR {s['psnr_db']:.1f} dB" in report["line"]
    written = json.loads((out / REPORT_FILE).read_text())
    assert written["settings"]["cand"] == {"size": [32, 32], "frame_num": 5, "sample_steps": 2}
    assert (out / WORST_FILE).is_file()
    # the saved videos and latents read back as folders: the latents are kept exactly
    again = compare_dirs(out / "ref", out / "cand", dimensions=())
    assert [p["name"] for p in again["pairs"]] == ["p00-seed0.mp4", "p00-seed1.mp4"]
    for pair, first in zip(again["pairs"], report["pairs"]):
        assert pair["latent_rel_error"] == pytest.approx(first["latent_rel_error"], rel=1e-12)


def test_unbatched_guidance_makes_two_calls_per_step_for_the_same_evaluations(pipe):
    report = compare_settings(pipe, ["a red circle"], [0], BASE, {**BASE, "cfg_batch": False}, with_lpips=False,
                              warmup=True)
    ref, cand = report["runs"]["ref"], report["runs"]["cand"]
    assert ref["videos"] == cand["videos"] == 1  # the warm-up runs are neither kept nor counted
    assert (ref["dit_calls_per_video"], cand["dit_calls_per_video"]) == (4, 8)
    assert ref["dit_evals_per_video"] == cand["dit_evals_per_video"] == 8
    assert report["summary"]["latent_rel_error"] < 1e-4  # the same maths, one branch at a time


def test_a_diffusion_cache_counts_the_evaluations_it_says_it_ran(pipe):
    steps = {**BASE, "sample_steps": 12}
    report = compare_settings(pipe, ["a red circle moves left"], [0, 1], steps, {**steps, "cache": "fast"},
                              with_lpips=False)
    ref, cand = report["runs"]["ref"], report["runs"]["cand"]
    assert ref["dit_evals"] == 2 * 2 * 12 == cand["cache"]["uncached_dit_evaluations"]
    assert cand["dit_evals"] == cand["cache"]["dit_evaluations"] < ref["dit_evals"]  # blocks and branches skipped
    assert cand["dit_calls_per_video"] <= 12 and math.isfinite(report["summary"]["psnr_db"])


def test_a_setting_that_changes_the_size_is_refused_per_pair_not_fatal(pipe):
    report = compare_settings(pipe, ["a red circle"], [0, 1], BASE, {**BASE, "size": (48, 32)}, with_lpips=False)
    assert report["summary"] == {"pairs": 0} and len(report["refused"]) == 2
    assert "5 frames of 32x32 but the candidate is 5 frames of 48x32" in report["refused"][0]["reason"]
    assert report["line"].startswith("nothing compared") and gate(report, min_psnr_db=30) == ["no pair was compared"]


def _counted_loader(loads: list, calls: list):
    """Loads a fresh tiny pipeline per call, recording each load and every forward call of its DiT."""
    def load():
        loads.append(1)
        pipe = WanPipeline(**tiny_components("tiny"), defaults=FAMILY_DEFAULTS["tiny"])
        pipe.dit.register_forward_hook(lambda *_: calls.append(1))
        return pipe
    return load


@pytest.mark.skipif(not (HAS_ACCEL and importlib.util.find_spec("torchao")), reason="needs openwan.runtime.accel "
                    "and torchao (pip install openwan[accel])")
def test_load_time_settings_get_a_fresh_pipeline_each(tmp_path):
    from openwan.models.layers import get_attention_backend

    backend, loads, calls = get_attention_backend(), [], []
    load = _counted_loader(loads, calls)
    cand = {**BASE, "quantize": "int8", "attention": "math"}
    report = compare_settings(load, ["a red circle"], [0], BASE, cand, with_lpips=False, out_dir=tmp_path,
                              save_videos=True)
    assert len(loads) == 2 and "accelerations" not in report["runs"]["ref"]
    applied = report["runs"]["cand"]["accelerations"]
    assert applied["quantize"]["dit"]["mode"] == "int8" and applied["attention"] == "math"
    assert get_attention_backend() == backend  # the process-wide backend is restored
    s = report["summary"]
    assert 0 < s["latent_rel_error"] < 0.01 and 40 < s["psnr_db"] < math.inf  # 8-bit weights: close, not equal
    plain = load()("a red circle", seed=0, progress=False, **BASE).latents  # the reference's weights were untouched
    assert torch.equal(load_file(str(tmp_path / "ref" / "p00-seed0.safetensors"))["latents"], plain)
    loads.clear(), calls.clear()
    with pytest.raises(ValueError, match="int4"):  # refused by apply_accelerations before any generation
        compare_settings(load, ["a red circle"], [0], BASE, {**BASE, "quantize": "int4"})
    assert len(loads) == 1 and calls == []
    with pytest.raises(ValueError, match="fresh pipeline"):
        compare_settings(load(), ["a red circle"], [0], BASE, {**BASE, "quantize": "int8"})


def test_bad_settings_are_refused_before_anything_runs(pipe):
    calls = []
    hook = pipe.dit.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="unknown key 'steps'.*sample_steps"):
            compare_settings(pipe, ["a red circle"], [0], BASE, {"steps": 2})
        with pytest.raises(ValueError, match="'seed'.*sets itself"):
            compare_settings(pipe, ["a red circle"], [0], {"seed": 3}, BASE)
        match = "fresh pipeline" if HAS_ACCEL else "openwan.runtime.accel"
        with pytest.raises(ValueError, match=match):
            compare_settings(pipe, ["a red circle"], [0], BASE, {**BASE, "quantize": "int8"})
        with pytest.raises(ValueError, match="at least one prompt"):
            compare_settings(pipe, [], [0], BASE, BASE)
    finally:
        hook.remove()
    assert calls == []
    assert check_setting({**BASE, "compile": True}, "cand") == (BASE, {"compile": True})


# ---------------------------------------------------------------------------------------------------- CLI


def _main(monkeypatch, *argv: str) -> int:
    """``openwan eval compare ARGV`` through openwan.cli.main (its exit codes) with the compare parser added."""
    from openwan.cli import main as main_mod

    def build_parser():
        parser = argparse.ArgumentParser(prog="openwan")
        sub = parser.add_subparsers(dest="command", required=True)
        kinds = sub.add_parser("eval").add_subparsers(dest="eval_command", required=True)
        eval_compare.add_parser(kinds)
        return parser

    monkeypatch.setattr(main_mod, "build_parser", build_parser)
    return main_mod.main(["eval", "compare", *argv])


def test_setting_values_are_parsed():
    parse = eval_compare.parse_value
    assert [parse(v) for v in ("25", "5.0", "true", "False", "none", "euler", "64,64", "(5.0, 3)")] == \
        [25, 5.0, True, False, None, "euler", (64, 64), (5.0, 3)]
    assert eval_compare.parse_setting(["sample-steps=25", "solver=euler"], "--cand") == \
        {"sample_steps": 25, "solver": "euler"}


def test_cli_compares_folders_and_gates(monkeypatch, tmp_path, clip, capsys):
    ref, cand = _folders(tmp_path, clip)
    out = tmp_path / "out"
    assert _main(monkeypatch, str(ref), str(cand), "--dimensions", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "1 in REF_DIR only: c.mp4" in printed and "refused: e.mp4" in printed and "cand against ref" in printed
    assert json.loads((out / REPORT_FILE).read_text())["summary"]["pairs"] == 2
    assert _main(monkeypatch, str(ref), str(cand), "--dimensions", "--min-psnr", "60") == 1
    assert "below the gate: PSNR" in capsys.readouterr().out


def test_cli_refuses_bad_input_with_exit_2(monkeypatch, tmp_path, capsys):
    assert _main(monkeypatch, str(tmp_path)) == 2
    assert "both REF_DIR and CAND_DIR" in capsys.readouterr().err
    assert _main(monkeypatch, str(tmp_path / "a"), str(tmp_path / "b")) == 2
    assert "not a folder" in capsys.readouterr().err
    assert _main(monkeypatch, "--ckpt-dir", str(tmp_path), "--prompts", "x", "--cand", "sample_steps") == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert _main(monkeypatch, "--ckpt-dir", str(tmp_path), "--prompts", "x", "--cand", "steps=3") == 2
    assert "unknown key 'steps'" in capsys.readouterr().err
    assert _main(monkeypatch, "--ckpt-dir", str(tmp_path), "--cand", "sample_steps=3") == 2
    with pytest.raises(SystemExit) as exit_:
        _main(monkeypatch, "--seeds", "one")
    assert exit_.value.code == 2


def test_cli_compares_two_settings_of_a_release(monkeypatch, tmp_path, capsys):
    from openwan.checkpoints.release import save_release

    release = save_release(tmp_path / "release", **tiny_components("tiny"))
    code = _main(monkeypatch, "--ckpt-dir", str(release), "--prompts", "a red circle", "--seeds", "0",
                 "--ref", "size=32,32", "frame_num=5", "sample_steps=4", "--cand", "size=32,32", "frame_num=5",
                 "sample_steps=2", "--device", "cpu", "--no-lpips", "--out", str(tmp_path / "out"))
    assert code == 0
    assert "(dit evals 8 -> 4 per video)" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["runs"]["cand"]["dit_evals"] == 4 and float(report["summary"]["psnr_db"]) < 100
    if HAS_ACCEL and importlib.util.find_spec("torchao"):  # a load-time key: each setting loads the release afresh
        code = _main(monkeypatch, "--ckpt-dir", str(release), "--prompts", "a red circle", "--ref", "size=32,32",
                     "frame_num=5", "sample_steps=2", "--cand", "size=32,32", "frame_num=5", "sample_steps=2",
                     "quantize=int8", "--device", "cpu", "--no-lpips")
        assert code == 0 and "(dit evals 4 -> 4 per video)" in capsys.readouterr().out


def test_every_default_dimension_is_registered():
    assert set(DEFAULT_DIMENSIONS) <= set(DIMENSIONS)
