"""What a training run reports, for both trainers: metrics as JSON Lines (and TensorBoard when installed), and a
loss-curve PNG."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openwan.fileio import atomic_write

log = logging.getLogger("openwan.train")

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a killed process is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLogger:
    """Appends one JSON object per logged step to ``<folder>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Each line is flushed as it is written, so a killed run leaves every completed step on disk. On resume,
    :meth:`truncate_after` drops the lines of steps after the checkpoint: they are about to be trained again.
    """

    def __init__(self, folder: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = tensorboard
        self._file = None
        self._tb = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in keep)))

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:  # opened on the first record: a run that never starts writes nothing
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
            if self.tensorboard:
                self._tb = _tensorboard_writer(self.folder / "tensorboard")
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def plot(self, path: str | Path | None = None) -> Path | None:
        """Draw loss (and a smoothed loss) against step into a PNG next to the checkpoints."""
        if not self.enabled or not self.path.is_file():
            return None
        return plot_loss_curve(self.path, path or self.folder / LOSS_CURVE_FILE)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(str(folder))


def plot_loss_curve(metrics_path: str | Path, out: str | Path) -> Path | None:
    """The loss of one run's ``metrics.jsonl`` against the step, raw and smoothed, as a PNG at ``out``."""
    return plot_loss_curves({"loss": metrics_path}, out)


def plot_loss_curves(runs: Mapping[str, str | Path], out: str | Path) -> Path | None:
    """Several runs' losses on one plot (e.g. the two experts of a Wan2.2-style model), labelled by the keys of
    ``runs`` (name -> ``metrics.jsonl``). None when no run has logged a loss yet."""
    curves = {}
    for name, path in runs.items():
        records = [r for r in read_metrics(path) if isinstance(r.get("loss"), (int, float))]
        if records:
            curves[name] = ([r["step"] for r in records], [r["loss"] for r in records])
    if not curves:
        return None
    # matplotlib loads only when a plot is drawn (it is slow to import), and its file backend is chosen first.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, (name, (steps, losses)) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(steps, losses, lw=0.8, alpha=0.35, color=colour, label=name)
        ax.plot(steps, _smoothed(losses), lw=1.6, color=colour, label=f"{name} (EMA 0.9)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    every = [v for _, losses in curves.values() for v in losses]
    if min(every) > 0 and max(every) / min(every) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _smoothed(values: list[float], beta: float = 0.9) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))  # bias-corrected, so the first points are not pulled to 0
    return [v if math.isfinite(v) else float("nan") for v in out]
