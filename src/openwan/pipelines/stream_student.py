"""A release's streaming student: a DiT trained for the stream's own per-frame noise levels, shipped beside the
release in ``stream_model/`` with the settings it streams at.

``stream_model/`` holds a DiT folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) and
``stream.json``: the :class:`~openwan.pipelines.stream.StreamConfig` fields it was trained for (window, block,
steps per shift, σ grid, guidance). The student shares the release's VAE and text encoder; it replaces the
release's DiT (both experts of a two-expert release) for streaming only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from openwan.checkpoints.convert import STUDENT_DIR
from openwan.checkpoints.release import save_dit
from openwan.fileio import atomic_write
from openwan.pipelines.defaults import defaults_for
from openwan.pipelines.stream import StreamConfig

SETTINGS_FILE = "stream.json"
SETTINGS = ("window", "block", "anchor", "steps_per_shift", "sample_shift", "sigmas", "guide_scale")


def has_student(release: str | Path) -> bool:
    """Whether ``release`` ships a streaming student (``stream_model/`` with its config and ``stream.json``)."""
    folder = Path(release) / STUDENT_DIR
    return (folder / "config.json").is_file() and (folder / SETTINGS_FILE).is_file()


def student_settings(release: str | Path) -> dict:
    """The StreamConfig fields the student of ``release`` streams at (ValueError when it has none)."""
    folder = Path(release) / STUDENT_DIR
    if not has_student(release):
        raise ValueError(f"{release} ships no streaming student ({folder} with config.json and {SETTINGS_FILE}); "
                         "stream with the release's own DiT instead.")
    data = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{folder / SETTINGS_FILE} holds unknown fields {unknown}; it takes {list(SETTINGS)}.")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def save_student(release: str | Path, dit, config: StreamConfig, dtype: torch.dtype | None = None) -> Path:
    """Write ``dit`` (cast to ``dtype`` if given) and the settings of ``config`` it streams at into
    ``release``/stream_model/ (atomic files)."""
    folder = Path(release) / STUDENT_DIR
    save_dit(dit, folder, dtype)
    settings = {k: v for k, v in config.to_dict().items() if k in SETTINGS and v is not None}
    text = json.dumps(settings, indent=2) + "\n"
    atomic_write(folder / SETTINGS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def with_student(pipe, release: str | Path):
    """A pipeline sharing ``pipe``'s VAE and text encoder whose only DiT is the streaming student of ``release``
    (what ``WanPipeline.from_pretrained(release, dit_dir=release/stream_model)`` loads, without reading the
    encoders again)."""
    from openwan.models import WanDiT
    from openwan.pipelines.wan import WanPipeline

    student_settings(release)  # refuses a release without one
    dit = WanDiT.from_pretrained(Path(release) / STUDENT_DIR, dtype=pipe.dtype, device=pipe.device)
    return WanPipeline(dit, pipe.vae, pipe.text_encoder, pipe.tokenizer, defaults=defaults_for(dit.cfg),
                       device=pipe.device, dtype=pipe.dtype)


def load_stream_pipe(release: str | Path, *, device: str | torch.device | None = None, student: bool | None = None
                     ) -> tuple[object, StreamConfig]:
    """The pipeline to stream ``release`` with and the StreamConfig defaults that go with it.

    ``student``: True streams with the release's streaming student (ValueError without one, before anything
    loads), False with its own DiT, None with the student where the release ships one; the student is loaded
    instead of the release's DiTs, not beside them. The returned config holds the student's settings (or none);
    fields a caller sets override them with :func:`merged`."""
    from openwan.pipelines.wan import WanPipeline

    if not (has_student(release) if student is None else student):
        return WanPipeline.from_pretrained(release, device=device), StreamConfig()
    settings = student_settings(release)
    pipe = WanPipeline.from_pretrained(release, device=device, dit_dir=Path(release) / STUDENT_DIR)
    return pipe, StreamConfig(**settings)


def merged(base: StreamConfig, **given) -> StreamConfig:
    """``base`` with every field of ``given`` that is not None (a caller's flags over a student's settings). An
    explicit σ grid of ``base`` is dropped when the window, block, anchor, steps per shift or shift it was made for
    change."""
    changes = {k: v for k, v in given.items() if v is not None and v != getattr(base, k)}
    if "sigmas" not in changes and changes.keys() & {"window", "block", "anchor", "steps_per_shift", "sample_shift"}:
        changes["sigmas"] = None
    return dataclasses.replace(base, **changes)


__all__ = ["SETTINGS_FILE", "STUDENT_DIR", "has_student", "load_stream_pipe", "merged", "save_student",
           "student_settings", "with_student"]
