"""``openwan eval bench --suite``: generate every prompt of a suite with every seed, then score the videos.

A suite is a prompts file (``.txt``: one prompt per line; ``.json``: a list of prompts, or of VBench-style
``{"prompt_en": ...}`` entries) or ``vbench`` / ``vbench:NAME``: the prompt lists the installed ``vbench`` package
ships, read at run time (``VBench_full_info.json``: every prompt, or those of dimension NAME;
``prompts_per_category/NAME.txt``: a category's). Each video is ``OUT/videos/NNNN_seedS.mp4`` with its prompt in
the sidecar ``NNNN_seedS.txt``; a video whose file and sidecar (with the same prompt) exist is not generated again,
so an interrupted suite resumes where it stopped, and the model is loaded only when something is left to generate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from openwan.data.video import save_video
from openwan.fileio import atomic_write

VBENCH_HINT = "--suite vbench needs: pip install vbench"
VIDEOS_DIR, SUITE_FILE = "videos", "suite.json"


def vbench_prompts(subset: str | None = None) -> list[str]:
    """The prompts the installed ``vbench`` package ships: all of ``VBench_full_info.json``, those of one of its
    dimensions (``subset``), or a category file ``prompts_per_category/<subset>.txt``."""
    from importlib import resources

    try:
        root = resources.files("vbench")
    except ModuleNotFoundError:
        raise ValueError(VBENCH_HINT + ".") from None
    info = root / "VBench_full_info.json"
    if info.is_file():
        entries = json.loads(info.read_text(encoding="utf-8"))
        dimensions = sorted({d for e in entries for d in e.get("dimension", [])})
        if subset is None or subset in dimensions:
            prompts = [e["prompt_en"] for e in entries if subset is None or subset in e.get("dimension", [])]
            return list(dict.fromkeys(prompts))
    else:
        dimensions = []
    category = root / "prompts_per_category" / f"{subset}.txt"
    if subset is not None and category.is_file():
        return [line.strip() for line in category.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder = root / "prompts_per_category"
    categories = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt")) if folder.is_dir() else []
    if subset is None:
        raise ValueError("the installed vbench ships no VBench_full_info.json; name a category: "
                         f"--suite vbench:NAME with NAME one of {', '.join(categories) or '(none found)'}.")
    raise ValueError(f"vbench has no prompt list {subset!r}; use one of its dimensions "
                     f"({', '.join(dimensions) or 'none found'}) or categories ({', '.join(categories) or 'none'}).")


def suite_prompts(spec: str | Path) -> list[str]:
    """The prompts of the suite ``spec``: ``vbench``, ``vbench:NAME`` or a prompts file (see the module docstring)."""
    text = str(spec)
    if text == "vbench" or text.startswith("vbench:"):
        return vbench_prompts(text.partition(":")[2] or None)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--suite {path} does not exist; give a prompts file (.txt, one prompt per line) or vbench.")
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--suite {path} is not valid JSON ({err.msg}); fix it.") from None
        prompts = [e.get("prompt_en") if isinstance(e, dict) else e for e in entries] if isinstance(entries, list) \
            else None
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"--suite {path}: give a JSON list of prompts or of {{\"prompt_en\": ...}} entries.")
        return [p.strip() for p in prompts]
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--suite {path} holds no prompts; write one prompt per line.")
    return prompts


def suite_jobs(prompts: list[str], seeds: list[int], out_dir: str | Path) -> list[tuple[str, int, Path]]:
    """(prompt, seed, video path) of every video of the suite, in generation order."""
    folder = Path(out_dir) / VIDEOS_DIR
    return [(p, s, folder / f"{i:04d}_seed{s}.mp4") for i, p in enumerate(prompts) for s in seeds]


def _done(prompt: str, video: Path) -> bool:
    sidecar = video.with_suffix(".txt")
    return video.is_file() and sidecar.is_file() and sidecar.read_text(encoding="utf-8").strip() == prompt


def generate_suite(load_pipe: Callable[[], object], prompts: list[str], out_dir: str | Path, *,
                   seeds: list[int] | tuple[int, ...] = (0,), size: tuple[int, int] | None = None,
                   frame_num: int | None = None, sample_steps: int | None = None, sample_shift: float | None = None,
                   guide_scale: float | None = None, negative_prompt: str | None = None, solver: str = "unipc",
                   fps: float = 16, progress: bool = False) -> dict:
    """Generate the suite's missing videos with the pipeline ``load_pipe()`` returns (called only when one is
    missing) and write them with their prompt sidecars under ``out_dir/videos``; ``None`` settings take the
    pipeline's defaults. Returns {"videos": [paths], "generated": n, "skipped": n, "seconds": s}."""
    seeds = [int(s) for s in seeds]
    if not prompts or not seeds:
        raise ValueError("give at least one prompt and one seed to generate.")
    jobs = suite_jobs(prompts, seeds, out_dir)
    missing = [job for job in jobs if not _done(job[0], job[2])]
    started, pipe = time.perf_counter(), None
    for prompt, seed, video in tqdm(missing, desc="suite", unit="video", disable=not progress):
        pipe = pipe or load_pipe()
        out = pipe(prompt, negative_prompt, task="t2v", size=size, frame_num=frame_num, sample_steps=sample_steps,
                   sample_shift=sample_shift, guide_scale=guide_scale, solver=solver, seed=seed, progress=False)
        save_video(out.video, video, fps=fps)
        atomic_write(video.with_suffix(".txt"), lambda tmp, p=prompt: Path(tmp).write_text(p + "\n", "utf-8"))
    settings = {"size": list(size) if size else None, "frame_num": frame_num, "sample_steps": sample_steps,
                "sample_shift": sample_shift, "guide_scale": guide_scale, "negative_prompt": negative_prompt,
                "solver": solver, "fps": fps}
    if pipe is not None and hasattr(pipe, "defaults"):  # record the values used, not the None that asked for them
        d = pipe.defaults.for_task("t2v")
        settings |= {"size": settings["size"] or list(d.size), "frame_num": frame_num or d.frame_num,
                     "sample_steps": sample_steps or d.sample_steps,
                     "sample_shift": d.sample_shift if sample_shift is None else sample_shift,
                     "guide_scale": d.guide_scale if guide_scale is None else guide_scale}
    earlier = Path(out_dir) / SUITE_FILE
    if pipe is None and earlier.is_file():  # nothing generated now: the settings that made the videos stand
        try:
            settings = json.loads(earlier.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, TypeError):
            pass
    record = {"prompts": prompts, "seeds": seeds, "settings": settings}
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    atomic_write(Path(out_dir) / SUITE_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return {"videos": [job[2] for job in jobs], "generated": len(missing), "skipped": len(jobs) - len(missing),
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = ["suite_prompts", "vbench_prompts", "generate_suite", "suite_jobs", "VBENCH_HINT"]
