"""Reference against candidate: how far a faster setting's videos drift from the plain ones.

Three entry points, one report shape:

- :func:`compare_videos`: two clips ``[T, H, W, 3]`` -> PSNR (dB) and SSIM per frame and overall, LPIPS when the
  ``lpips`` package and its AlexNet weights are here, and the latents' relative error ``||a - b|| / ||a||``.
- :func:`compare_dirs`: two folders of videos matched by file name (latents from ``STEM.safetensors`` beside
  them), plus bench dimensions scored on both sides.
- :func:`openwan.eval.compare_settings.compare_settings`: the same prompts and seeds under two settings of
  :class:`WanPipeline`, with wall time and DiT evaluations counted per setting (its own module).

Identical clips have PSNR ``inf``. The returned reports hold ``float("inf")``; ``compare.json`` writes every
non-finite number as the string ``"inf"`` (``"-inf"``, ``"nan"``), which ``float()`` reads back. Pooled PSNR over
several pairs is the PSNR of their pooled mean squared error (each pixel weighs the same), so it is ``inf`` only
when every pair is identical.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm.auto import tqdm

from openwan.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_header, read_image, read_video
from openwan.eval.bench.base import BenchWeights, Video
from openwan.eval.bench.registry import DIMENSIONS, dimension_class
from openwan.eval.prompts import GridCell, GridRow, write_grid
from openwan.eval.reconstruction import psnr, ssim
from openwan.fileio import atomic_write

DEFAULT_DIMENSIONS = ("temporal_flickering", "motion_smoothness", "dynamic_degree", "imaging_quality")
REPORT_FILE, WORST_FILE = "compare.json", "compare_worst.png"
SSIM_WINDOW = 11  # the Gaussian window (sigma 1.5) of reconstruction.ssim spans 11 pixels
LPIPS_MISSING = "not measured: pip install lpips (its AlexNet backbone weights come from torchvision)"
FPS = 16  # Wan's frame rate, for bench dimensions of generated clips


# ---------------------------------------------------------------------------------------------- metrics


def _frames(frames, side: str) -> torch.Tensor:
    """uint8 or [0, 1] float frames [T, H, W, 3] (tensor or array) on the CPU, checked, as given: they are
    turned into float64 a frame at a time (:func:`_unit`), so a long clip is never held in float64 whole."""
    x = torch.from_numpy(np.asarray(frames)) if not torch.is_tensor(frames) else frames.detach().cpu()
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < 1:
        raise ValueError(f"{side} frames must be [T, H, W, 3] with T >= 1; got {tuple(x.shape)}.")
    if x.dtype != torch.uint8 and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"{side} frames must be uint8 or floats in [0, 1]; got values from {float(x.min()):.3g} to "
                         f"{float(x.max()):.3g}.")
    return x


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Frames as float64 in [0, 1]."""
    return x.double() / 255 if x.dtype == torch.uint8 else x.double()


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] float frames as uint8, rounded as a video file stores them (uint8 frames pass unchanged)."""
    if frames.dtype == torch.uint8:
        return frames.detach().cpu()
    return frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def latent_rel_error(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """``||ref - cand|| / ||ref||`` (Frobenius, float64); 0 when equal, inf when ``ref`` is zero and ``cand`` not."""
    if tuple(ref.shape) != tuple(cand.shape):
        raise ValueError(f"latents of shape {tuple(ref.shape)} and {tuple(cand.shape)} cannot be compared; give "
                         "latents of runs made at the same size and frame count.")
    a, b = ref.detach().double().cpu(), cand.detach().double().cpu()
    diff, norm = float(torch.linalg.vector_norm(a - b)), float(torch.linalg.vector_norm(a))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _db(mse: float) -> float:
    """PSNR in dB (peak 1) of a mean squared error: inf at 0, else capped at 100 as reconstruction.psnr is."""
    return math.inf if mse == 0 else 10 * math.log10(1 / max(mse, 1e-10))


def _lpips_weights_file() -> Path:
    from torchvision.models import AlexNet_Weights

    name = Path(urlparse(AlexNet_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


@functools.cache
def _lpips_net():
    """(LPIPS with the AlexNet backbone, None), or (None, the sentence saying what is missing)."""
    try:
        import lpips
        weights = _lpips_weights_file()
    except ImportError:
        return None, LPIPS_MISSING
    if not weights.is_file():
        return None, (f"not measured: lpips needs torchvision's AlexNet weights at {weights}; fetch them once with "
                      "python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return lpips.LPIPS(net="alex", verbose=False).eval().to(device), None


@torch.no_grad()
def lpips_per_frame(ref: torch.Tensor, cand: torch.Tensor, batch: int = 8) -> tuple[list[float] | None, str | None]:
    """LPIPS (AlexNet) distance of each frame pair ([T, H, W, 3], uint8 or in [0, 1]; 0: same), or (None, why
    not)."""
    net, missing = _lpips_net()
    if net is None:
        return None, missing
    device = next(net.parameters()).device
    out = []
    for a, b in zip(ref.split(batch), cand.split(batch)):
        x, y = (_unit(v).float().permute(0, 3, 1, 2).mul(2).sub(1).to(device) for v in (a, b))  # [N, 3, H, W]
        out += net(x, y).flatten().cpu().tolist()
    return out, None


def compare_videos(ref_frames, cand_frames, *, ref_latents: torch.Tensor | None = None,
                   cand_latents: torch.Tensor | None = None, with_lpips: bool = True) -> dict:
    """PSNR (dB, peak 1; inf when identical, at most 100 otherwise) and SSIM of ``cand_frames`` against
    ``ref_frames`` (same shape [T, H, W, 3], uint8 or [0, 1] floats), per frame and over the clip; ``mse`` over
    the clip; ``worst_frame`` (lowest PSNR); ``lpips`` (mean over frames) or ``lpips_not_measured``;
    ``latent_rel_error`` when both latents are given."""
    ref, cand = _frames(ref_frames, "reference"), _frames(cand_frames, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(f"the reference is {_shape(ref)} but the candidate is {_shape(cand)}; compare videos made "
                         "with the same size and frame count.")
    if min(ref.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"frames of {_shape(ref)} are smaller than SSIM's {SSIM_WINDOW}-pixel window; compare "
                         f"frames at least {SSIM_WINDOW}x{SSIM_WINDOW}.")
    per_mse, per_psnr, per_ssim = [], [], []
    for a, b in zip(ref, cand):
        a, b = _unit(a), _unit(b)
        per_mse.append(float(((a - b) ** 2).mean()))
        per_psnr.append(math.inf if per_mse[-1] == 0 else psnr(a, b))
        per_ssim.append(ssim(a[None], b[None]))
    mse = float(np.mean(per_mse))
    out = {"frames": ref.shape[0], "width": ref.shape[2], "height": ref.shape[1], "mse": mse,
           "psnr_db": round(_db(mse), 4),
           "ssim": round(float(np.mean(per_ssim)), 6), "worst_frame": int(np.argmin(per_psnr)),
           "psnr_db_per_frame": [round(v, 4) for v in per_psnr], "ssim_per_frame": [round(v, 6) for v in per_ssim]}
    if with_lpips:
        per_lpips, missing = lpips_per_frame(ref, cand)
        if per_lpips is None:
            out["lpips_not_measured"] = missing
        else:
            out["lpips"], out["lpips_per_frame"] = round(float(np.mean(per_lpips)), 6), [round(v, 6) for v in per_lpips]
    if ref_latents is not None and cand_latents is not None:
        out["latent_rel_error"] = latent_rel_error(ref_latents, cand_latents)
    return out


def _shape(x: torch.Tensor) -> str:
    return f"{x.shape[0]} frames of {x.shape[2]}x{x.shape[1]}"


def summarize(pairs: list[dict]) -> dict:
    """Over compared pairs: pooled PSNR (dB; inf only when all are identical), the worst pair's PSNR, mean and
    least SSIM, mean LPIPS when measured on every pair, mean and largest latent relative error."""
    if not pairs:
        return {"pairs": 0}
    sizes = [p["frames"] * p["width"] * p["height"] for p in pairs]
    mse = sum(p["mse"] * n for p, n in zip(pairs, sizes)) / sum(sizes)
    out = {"pairs": len(pairs), "psnr_db": round(_db(mse), 4),
           "psnr_db_min": min(p["psnr_db"] for p in pairs),
           "ssim": round(float(np.mean([p["ssim"] for p in pairs])), 6), "ssim_min": min(p["ssim"] for p in pairs)}
    if all("lpips" in p for p in pairs):
        out["lpips"] = round(float(np.mean([p["lpips"] for p in pairs])), 6)
    else:
        out["lpips_not_measured"] = next(p.get("lpips_not_measured") for p in pairs if "lpips" not in p)
    errors = [p["latent_rel_error"] for p in pairs if "latent_rel_error" in p]
    if errors:
        out["latent_rel_error"], out["latent_rel_error_max"] = float(np.mean(errors)), max(errors)
        out["latent_pairs"] = len(errors)
    return out


# ---------------------------------------------------------------------------------------- bench dimensions


def check_dimensions(names) -> None:
    """ValueError naming the bench dimensions of ``names`` the registry does not know, and the known ones."""
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown bench dimension {', '.join(map(repr, unknown))}; choose from: "
                         f"{', '.join(DIMENSIONS)}.")


def build_bench(names, weights: BenchWeights | None = None) -> tuple[list, dict[str, str]]:
    """(dimensions ready to score, {name: "not measured: ..."} for the rest). Unknown names are refused; a
    dimension whose module this install lacks, or whose model is missing, is left out with its sentence."""
    check_dimensions(names)
    ready, missing = [], {}
    for name in names:
        try:
            dim = dimension_class(name)(weights)
        except (ImportError, AttributeError) as err:
            module = DIMENSIONS[name].split(":")[0]
            missing[name] = f"not measured: this install has no openwan.eval.bench.{module} ({err})"
            continue
        why = dim.available()
        if not why:
            try:
                dim.setup()
            except (OSError, ValueError, RuntimeError) as err:
                why = f"not measured: {name} could not load its model ({err})"
        if why:
            missing[name] = why
        else:
            ready.append(dim)
    return ready, missing


def bench_pair(dims: list, ref: Video, cand: Video) -> dict:
    """{name: {ref, cand, diff = cand - ref}} of each dimension on one pair; a value is None with its reason."""
    out = {}
    for dim in dims:
        row = {}
        for side, video in (("ref", ref), ("cand", cand)):
            try:
                score = dim.score(video)
            except ValueError as err:  # a video this dimension cannot judge (e.g. too few frames)
                row[side], row[f"{side}_why"] = None, f"not measured: {err}"
                continue
            row[side] = score.value
            if score.value is None:
                row[f"{side}_why"] = score.not_measured or score.not_applicable
        if row["ref"] is not None and row["cand"] is not None:
            row["diff"] = round(row["cand"] - row["ref"], 6)
        out[dim.name] = row
    return out


def _bench_summary(pairs: list[dict], missing: dict[str, str], names) -> dict:
    out = {}
    for name in names:
        if name in missing:
            out[name] = {"not_measured": missing[name]}
            continue
        rows = [p["bench"][name] for p in pairs if "diff" in p.get("bench", {}).get(name, {})]
        out[name] = {"pairs": len(rows)}
        if rows:
            for key in ("ref", "cand", "diff"):
                out[name][key] = round(float(np.mean([r[key] for r in rows])), 6)
    return out


def as_video(frames: torch.Tensor, fps: float, vid: str, prompt: str | None = None) -> Video:
    return Video(to_uint8(frames).numpy(), fps=fps or FPS, prompt=prompt, id=vid)


# ------------------------------------------------------------------------------------------------- folders


def _load_latents(path: Path) -> tuple[torch.Tensor | None, str | None]:
    """The ``latents`` tensor of a .safetensors file (or its only tensor), or (None, why not)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None, f"no {path.name} in {path.parent}"
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        return None, f"{path} is not a readable .safetensors file ({err})"
    if "latents" in tensors:
        return tensors["latents"], None
    if len(tensors) == 1:
        return next(iter(tensors.values())), None
    return None, f"{path} holds {len(tensors)} tensors and none named 'latents'"


def _videos_in(folder, flag: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder} is not a folder; give a folder of videos ({', '.join(VIDEO_SUFFIXES)}) "
                         "or images (t2i).")
    kept = VIDEO_SUFFIXES + IMAGE_SUFFIXES
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in kept}


def _read(path: Path) -> tuple[torch.Tensor, float]:
    """A video's frames [T, H, W, 3] in [0, 1] and its frame rate; an image is one frame at :data:`FPS`."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path), FPS
    return read_video(path), read_header(path)["fps"]


def compare_dirs(ref_dir, cand_dir, *, dimensions=DEFAULT_DIMENSIONS, weights: BenchWeights | None = None,
                 with_lpips: bool = True, out_dir=None, progress: bool = False) -> dict:
    """Each video (or image) of ``cand_dir`` against the same-named one of ``ref_dir`` (:func:`compare_videos`,
    latents from ``STEM.safetensors`` beside each), and the bench ``dimensions`` on both sides with their
    differences.

    Names in one folder only are listed (``missing``: in ref only; ``extra``: in cand only); unreadable files and
    pairs of different shapes are recorded in ``refused`` with a sentence, and the rest go on. With ``out_dir``,
    writes compare.json and a PNG of the worst pair there. Returns the report."""
    refs, cands = _videos_in(ref_dir, "REF_DIR"), _videos_in(cand_dir, "CAND_DIR")
    if not refs:
        raise ValueError(f"REF_DIR {ref_dir} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or images.")
    common = [n for n in refs if n in cands]
    if not common:
        raise ValueError(f"no video of {ref_dir} has a same-named file in {cand_dir}; the folders must hold videos "
                         "made from the same prompts and seeds under the same file names.")
    dims, missing = build_bench(list(dimensions), weights)
    report: dict = {"mode": "dirs", "ref": str(ref_dir), "cand": str(cand_dir), "pairs": [], "refused": [],
                    "missing": [n for n in refs if n not in cands], "extra": [n for n in cands if n not in refs]}
    worst = None
    for name in tqdm(common, desc="compare", disable=not progress):
        try:
            (ref, ref_fps), (cand, cand_fps) = _read(refs[name]), _read(cands[name])
        except ValueError as err:
            report["refused"].append({"name": name, "reason": str(err)})
            continue
        if ref.shape != cand.shape:
            report["refused"].append({"name": name, "reason": f"{name}: the reference is {_shape(ref)} but the "
                                      f"candidate is {_shape(cand)}; compare videos made with the same size and "
                                      "frame count."})
            continue
        stem = Path(name).stem
        (ref_lat, ref_why), (cand_lat, cand_why) = (_load_latents(Path(d) / f"{stem}.safetensors")
                                                    for d in (ref_dir, cand_dir))
        pair = {"name": name}
        if ref_lat is not None and cand_lat is not None and ref_lat.shape != cand_lat.shape:
            ref_why = f"latents of shape {tuple(ref_lat.shape)} and {tuple(cand_lat.shape)} differ"
            ref_lat = None
        if ref_why or cand_why:
            pair["latents_not_measured"] = "; ".join(w for w in (ref_why, cand_why) if w)
        try:
            pair |= compare_videos(ref, cand, ref_latents=ref_lat, cand_latents=cand_lat, with_lpips=with_lpips)
        except ValueError as err:
            report["refused"].append({"name": name, "reason": f"{name}: {err}"})
            continue
        if dims:
            pair["bench"] = bench_pair(dims, as_video(ref, ref_fps, stem), as_video(cand, cand_fps, stem))
        report["pairs"].append(pair)
        if worst is None or pair["mse"] > worst[0]["mse"]:
            worst = (pair, ref, cand)
    finish_report(report, dims, missing, dimensions, worst, out_dir)
    return report


# -------------------------------------------------------------------------------------------------- report


def to_json(value):
    """``value`` with tuples as lists, tensors as "tensor[shape]" and non-finite floats as "inf"/"-inf"/"nan"."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if torch.is_tensor(value):
        return f"tensor{list(value.shape)}"
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def ratio_line(report: dict) -> str:
    """One sentence: the candidate's speed against the reference's (settings only) and how far it drifts."""
    s = report["summary"]
    if not s.get("pairs"):
        return "nothing compared: every pair was refused (see refused)."
    if math.isinf(s["psnr_db"]):
        quality = f"identical videos over {s['pairs']} pairs (PSNR inf, SSIM {s['ssim']:.3f})"
    else:
        quality = (f"PSNR {s['psnr_db']:.1f} dB (worst pair {s['psnr_db_min']:.1f} dB), SSIM {s['ssim']:.3f} "
                   f"over {s['pairs']} pairs")
    if "lpips" in s:
        quality += f", LPIPS {s['lpips']:.3f}"
    if "latent_rel_error" in s:
        quality += f", latent error {s['latent_rel_error']:.3g}"
    if report["mode"] != "settings":
        return f"cand against ref: {quality}."
    speed = report["speedup"]
    pace = f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower"
    evals = f"{report['runs']['ref']['dit_evals_per_video']:g} -> {report['runs']['cand']['dit_evals_per_video']:g}"
    return f"cand is {pace} (dit evals {evals} per video) at {quality} against ref."


def gate(report: dict, min_psnr_db: float | None = None, min_ssim: float | None = None) -> list[str]:
    """The ways ``report`` misses the thresholds (pooled PSNR in dB, mean SSIM); empty when it passes."""
    s, fails = report["summary"], []
    if not s.get("pairs"):
        return ["no pair was compared"]
    if min_psnr_db is not None and s["psnr_db"] < min_psnr_db:
        fails.append(f"PSNR {s['psnr_db']:.2f} dB is below {min_psnr_db:g} dB")
    if min_ssim is not None and s["ssim"] < min_ssim:
        fails.append(f"SSIM {s['ssim']:.4f} is below {min_ssim:g}")
    return fails


def finish_report(report: dict, dims, missing, names, worst, out_dir) -> None:
    """Summary, bench table and line into ``report``; with ``out_dir`` compare.json and the worst pair's PNG."""
    report["summary"] = summarize(report["pairs"])
    if names:
        report["bench"] = _bench_summary(report["pairs"], missing, names)
    report["line"] = ratio_line(report)
    if out_dir is None:
        return
    out_dir = Path(out_dir)
    if worst is not None:
        write_worst_pair(out_dir / WORST_FILE, *worst)
        report["files"] = {"report": REPORT_FILE, "worst_pair": WORST_FILE}
    text = json.dumps(to_json(report), indent=2, allow_nan=False)
    atomic_write(out_dir / REPORT_FILE, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def write_worst_pair(path, pair: dict, ref: torch.Tensor, cand: torch.Tensor, count: int = 4) -> Path:
    """A PNG: reference, candidate and their difference (x4) at ``count`` frames, the worst frame among them."""
    ref, cand = _frames(ref, "reference"), _frames(cand, "candidate")

    def spread(n):
        return set(np.linspace(0, ref.shape[0] - 1, n).round().astype(int).tolist())

    picks = spread(count - 1) | {pair["worst_frame"]}
    index = torch.tensor(sorted(picks if len(picks) == min(count, ref.shape[0]) else spread(count)))
    a, b = _unit(ref[index]).float(), _unit(cand[index]).float()
    per = [pair["psnr_db_per_frame"][i] for i in index.tolist()]
    caption = "candidate: " + ", ".join(f"{v:.1f}" for v in per) + " dB"
    cells = [GridCell(a, f"reference, frames {', '.join(map(str, index.tolist()))}"), GridCell(b, caption),
             GridCell(((a - b).abs() * 4).clamp(0, 1), "|difference| x4")]
    title = f"worst pair {pair['name']}: PSNR {pair['psnr_db']:.2f} dB, SSIM {pair['ssim']:.4f}"
    label = f"{pair['name']}: {pair['prompt']}" if pair.get("prompt") else pair["name"]
    return write_grid([GridRow(label, cells)], path, title=title)


__all__ = ["compare_videos", "compare_dirs", "latent_rel_error", "lpips_per_frame", "summarize", "build_bench",
           "bench_pair", "check_dimensions", "as_video", "finish_report", "ratio_line", "gate", "to_json", "to_uint8",
           "write_worst_pair", "DEFAULT_DIMENSIONS", "FPS", "LPIPS_MISSING", "REPORT_FILE", "WORST_FILE"]
