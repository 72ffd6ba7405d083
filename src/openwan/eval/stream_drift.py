"""How a long stream holds up: speed, drift of prompt following, identity and flicker over time, prompt switches.

:func:`measure_stream` runs a :class:`~openwan.pipelines.stream.VideoStream` for a given length of video and
judges the frames as they come, keeping only the clip being cut and a few frames for the switch windows (ten
minutes of video are 9600 frames at 16 fps; none of them is held for long):

- speed: wall seconds from the stream's creation (text encoding included) to its first frame, the steady frames
  per second after it (generation only: the judging is timed apart), DiT evaluations per frame (forward calls,
  both experts of a two-expert model, both CFG branches in one call);
- buckets (a minute of video by default), each cut into consecutive clips of ``clip_frames`` frames from the
  bucket's start (frames left over at a bucket's end belong to no clip): per clip the measures of
  :func:`openwan.eval.stream_clips.measure_clip`, per bucket their summary. A clip is judged against the prompt
  in force over all its frames, read from the stream's own per-frame prompt mix: clips spanning a switch or lying
  in its cross-fade are counted as ``in_transition`` and not judged;
- switches: for each (T, prompt) of the schedule after the first, the latency from T until the detector, on a
  sliding window of ``switch_window`` frames starting at T or later, sees the new prompt's colour (and its shape
  and motion where they differ from the previous prompt's) and keeps seeing it over ``hold_seconds`` of video.
  A window's time is its first frame, so a switch followed at once has latency 0. None when that never happens
  before the next switch or the end. Each compared attribute also gets its own latency, read and held alone
  (``latency_by_attribute_s``), which tells a slow attribute from a slow switch.

:func:`drift_table` renders a report as a markdown table, one row per bucket; :func:`summary_lines` gives the
speed and switch lines.

Every reading takes the frame as a torus (``detect(wrap=True)``): a stream's object may run on past an edge and
come back by the other, as the streaming student's training clips do (``openwan data synth --paths wrap``); an
object that stays inside the frame reads the same either way.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path

import torch
from tqdm.auto import tqdm

from openwan.data.synthetic import parse_caption
from openwan.eval.bench.base import BenchWeights
from openwan.eval.detector import detect
from openwan.eval.stream_clips import ATTRIBUTES, DEFAULT_DIMENSIONS, bench_dimensions, measure_clip, summarize_bucket
from openwan.fileio import atomic_write
from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream

REPORT_FILE = "report.json"
SHORT_NAMES = {"temporal_flickering": "flicker", "motion_smoothness": "smoothness", "pixel_stability": "stability"}


def measure_stream(pipe, schedule: PromptSchedule, config: StreamConfig | None = None, *, seconds: float,
                   clip_frames: int = 17, bucket_seconds: float = 60.0, switch_window: int = 8,
                   hold_seconds: float = 1.0, still_threshold: float = 0.1,
                   dimensions: tuple[str, ...] | list[str] = DEFAULT_DIMENSIONS, weights: BenchWeights | None = None,
                   save_video: str | Path | None = None, out_dir: str | Path | None = None, on_frames=None,
                   progress: bool = False, checkpoint: str | None = None) -> dict:
    """Stream ``seconds`` of video from ``pipe`` with ``schedule`` and ``config`` and measure it (see the module
    doc). ``dimensions``: bench dimensions scored per clip (those that cannot run here are reported as not
    measured); ``save_video``: an mp4 written as the frames come; ``out_dir``: report.json written there
    (atomically); ``on_frames``: called with each chunk of frames [t, H, W, 3] as it comes. Returns the report."""
    _check(seconds, clip_frames, bucket_seconds, switch_window, hold_seconds, save_video)
    targets = [_target(p) for p in schedule.prompts]
    dims, skipped = bench_dimensions(dimensions, weights)
    load = os.getloadavg()
    calls, writer = _count_forwards(pipe), None
    started = time.perf_counter()
    try:
        stream = VideoStream(pipe, schedule, config or StreamConfig())
        fps = stream.config.fps
        total, bucket = round(seconds * fps), max(1, round(bucket_seconds * fps))
        if total < 1:
            raise ValueError(f"seconds={seconds} is less than one frame at {fps:g} fps; measure a longer stream.")
        judge = _Judge(stream, targets, total, bucket, clip_frames, switch_window, hold_seconds, still_threshold,
                       dims)
        if save_video is not None:
            from openwan.pipelines.stream_output import GrowingVideo

            writer = GrowingVideo(save_video, fps, stream.config.size)
        first = None  # (wall seconds, frames, generation seconds, DiT calls) at the first frame
        generating = judging = 0.0
        with tqdm(total=total, desc="stream", unit="frame", disable=not progress) as bar:
            while judge.done < total:
                t0 = time.perf_counter()
                chunk = next(stream)[:total - judge.done]
                t1 = time.perf_counter()
                generating += t1 - t0
                first = first or (t1 - started, stream.emitted, generating, calls[0])
                if on_frames is not None:
                    on_frames(chunk)
                if writer is not None:
                    writer.write(chunk)
                for frame in chunk:
                    judge.add(frame)
                judging += time.perf_counter() - t1
                bar.update(chunk.shape[0])
    finally:
        calls.remove()
        if writer is not None:
            writer.close()
    steady = stream.emitted - first[1]
    speed = {"first_frame_s": round(first[0], 3),
             "steady_fps": round(steady / max(generating - first[2], 1e-9), 3) if steady else None,
             "frames": stream.emitted, "generation_s": round(generating, 2), "judging_s": round(judging, 2),
             "wall_s": round(time.perf_counter() - started, 2), "dit_evaluations": calls[0],
             "dit_evaluations_per_frame": round(calls[0] / max(stream.emitted, 1), 3),
             "dit_evaluations_to_first_frame": first[3], "threads": torch.get_num_threads(),
             "load_average_1min": [round(load[0], 2), round(os.getloadavg()[0], 2)]}
    buckets = _buckets(judge.rows, total, bucket, fps)
    report = {"checkpoint": checkpoint,
              "settings": {**stream.config.to_dict(), "seconds": total / fps, "frames": total,
                           "clip_frames": clip_frames, "bucket_seconds": bucket / fps, "switch_window": switch_window,
                           "hold_seconds": hold_seconds, "still_threshold": still_threshold,
                           "dimensions": [d.name for d in dims]},
              "schedule": [{"time_s": t, "prompt": p, "target": None if tg is None else dict(zip(ATTRIBUTES, tg))}
                           for (t, p), tg in zip(schedule.entries, targets)],
              "not_measured": skipped, "speed": speed, "buckets": buckets, "drift": _drift(buckets),
              "switches": [w.result() for w in judge.watches], "clips": judge.rows}
    if out_dir is not None:
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(Path(out_dir) / REPORT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return report


def drift_table(report: dict) -> str:
    """A markdown table of ``report``'s buckets: the time span, clips judged, agreement shares (%), the share of
    clips showing exactly one object (%), area and contrast relative to the first bucket, each bench value."""
    names = report["settings"]["dimensions"]
    head = ["time", "clips", "colour", "shape", "motion", "all", "one object", "area rel.", "contrast rel.",
            *(SHORT_NAMES.get(n, n) for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in report["buckets"]:
        agree, ident = b["agreement"], b["identity"]
        cells = [f"{_clock(b['start_s'])}–{_clock(b['end_s'])}", f"{b['judged']}/{b['clips']}",
                 *(_pct(agree[k]) for k in (*ATTRIBUTES, "all")), _pct(ident["one_object"]),
                 _num(ident["area_rel"], 2), _num(ident["contrast_rel"], 2),
                 *(_num(b["bench"][n]["value"], 3) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    """One line on speed, one per prompt switch, one per dimension not measured."""
    s = report["speed"]
    steady = "-" if s["steady_fps"] is None else f"{s['steady_fps']:.2f}"
    out = [f"speed: first frame after {s['first_frame_s']:.2f} s, then {steady} frames/s (generation only), "
           f"{s['dit_evaluations_per_frame']:.2f} DiT evaluations per frame; {s['frames']} frames in "
           f"{s['wall_s']:.1f} s wall ({s['judging_s']:.1f} s judging), {s['threads']} torch threads, load average "
           f"{s['load_average_1min'][0]:.2f} -> {s['load_average_1min'][1]:.2f}"]
    for w in report["switches"]:
        what = f"switch at {w['time_s']:.2f} s to {w['prompt']!r} ({', '.join(w['compared']) or '-'}): "
        each = ", ".join(f"{a} {'-' if t is None else f'{t:.2f} s'}" for a, t in w["latency_by_attribute_s"].items())
        if w["latency_s"] is not None:
            what += f"followed after {w['latency_s']:.2f} s (held {report['settings']['hold_seconds']:g} s)"
        else:
            what += w["status"]
        out.append(what + (f"; each alone: {each}" if each else ""))
    out += [f"{name}: {why}" for name, why in report["not_measured"].items()]
    return out


# ---------------------------------------------------------------------------------------------- internals


def _check(seconds, clip_frames, bucket_seconds, switch_window, hold_seconds, save_video) -> None:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a number above 0 (seconds of video to stream); got {seconds!r}.")
    if not isinstance(clip_frames, int) or clip_frames < 3:
        raise ValueError(f"clip_frames must be an integer >= 3 (motion and smoothness need 3 frames); got "
                         f"{clip_frames!r}.")
    if not (isinstance(bucket_seconds, (int, float)) and math.isfinite(bucket_seconds) and bucket_seconds > 0):
        raise ValueError(f"bucket_seconds must be a number above 0; got {bucket_seconds!r}.")
    if not isinstance(switch_window, int) or switch_window < 2:
        raise ValueError(f"switch_window must be an integer >= 2 (frames); got {switch_window!r}.")
    if not (isinstance(hold_seconds, (int, float)) and math.isfinite(hold_seconds) and hold_seconds >= 0):
        raise ValueError(f"hold_seconds must be a number >= 0; got {hold_seconds!r}.")
    if save_video is not None and Path(save_video).suffix.lower() != ".mp4":
        raise ValueError(f"save_video {save_video}: the stream is written as an mp4; give a name ending in .mp4.")


def _target(prompt: str) -> tuple[str, str, str] | None:
    """The prompt's (colour, shape, motion) in the demo data's vocabulary, None outside it (not judged)."""
    try:
        return parse_caption(prompt)
    except ValueError:
        return None


class _Calls(list):
    """A one-element counter of DiT forwards, with the hooks that count them."""

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _count_forwards(pipe) -> _Calls:
    calls = _Calls([0])

    def hook(*_):
        calls[0] += 1

    calls.handles = [m.register_forward_pre_hook(hook) for m in (pipe.dit, getattr(pipe, "dit_low", None))
                     if m is not None]
    return calls


def _latent(frame: int, temporal: int) -> int:
    """The latent frame holding video frame ``frame`` (the first latent frame holds one video frame)."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def _owners(stream: VideoStream, total: int) -> list[int]:
    """Per video frame of the first ``total``: the prompt its latent frame takes alone (weight 1), -1 in a fade."""
    by_latent = {}
    out = []
    for f in range(total):
        m = _latent(f, stream.temporal)
        if m not in by_latent:
            mix = stream.prompt_mix(m)
            by_latent = {m: mix.index(1.0) if 1.0 in mix else -1}
        out.append(by_latent[m])
    return out


class _Judge:
    """Takes the stream's frames one at a time: cuts each bucket into clips and measures them, and feeds every
    switch its sliding windows. Holds at most one clip and one window of frames."""

    def __init__(self, stream: VideoStream, targets: list, total: int, bucket: int, clip_frames: int, window: int,
                 hold_seconds: float, still_threshold: float, dims):
        self.stream, self.targets, self.bucket, self.clip_frames, self.dims = stream, targets, bucket, clip_frames, dims
        self.still = still_threshold
        self.owner = _owners(stream, total)
        self.watches = [_Watch(stream, i, targets, total, window, hold_seconds, still_threshold, clip_frames)
                        for i in range(1, len(stream.schedule.entries))]
        self.recent = deque(maxlen=window)
        self.clip, self.clip_start, self.rows, self.done = [], 0, [], 0

    def add(self, frame: torch.Tensor) -> None:
        """Judge video frame number :attr:`done` ([H, W, 3] in [0, 1])."""
        self.recent.append(frame)
        if len(self.recent) == self.recent.maxlen:
            for watch in self.watches:
                watch.feed(self.done - self.recent.maxlen + 1, self.recent)
        if self.done % self.bucket == 0:  # every bucket's clips start at its first frame
            self.clip, self.clip_start = [], self.done
        self.clip.append(frame)
        self.done += 1
        if len(self.clip) == self.clip_frames:
            self.rows.append(_clip_row(torch.stack(self.clip), self.clip_start, self.owner, self.targets,
                                       self.stream.schedule, self.stream.config.fps, self.bucket, self.dims,
                                       self.still))
            self.clip, self.clip_start = [], self.done


def _clip_row(frames: torch.Tensor, start: int, owner: list[int], targets: list, schedule: PromptSchedule,
              fps: float, bucket: int, dims, still_threshold: float) -> dict:
    """A clip's row: where it lies, which prompt it is judged against (and why not), and its measures."""
    owners = set(owner[start:start + len(frames)])
    prompt = owners.pop() if len(owners) == 1 else -1
    target = targets[prompt] if prompt >= 0 else None
    status = "transition" if prompt < 0 else "judged" if target is not None else "no_target"
    row = measure_clip(frames, fps=fps, target=target, dimensions=dims,
                       prompt=schedule.prompts[prompt] if prompt >= 0 else None, still_threshold=still_threshold,
                       name=f"clip{start}", wrap=True)
    return {"start_s": round(start / fps, 4), "frames": len(frames), "bucket": start // bucket,
            "prompt": prompt if prompt >= 0 else None, "status": status, **row}


class _Watch:
    """The latency of switch ``index`` of the stream's schedule, fed one sliding window at a time."""

    def __init__(self, stream: VideoStream, index: int, targets: list, total: int, window: int, hold_seconds: float,
                 still_threshold: float, clip_frames: int):
        fps = stream.config.fps
        self.time_s, self.prompt = stream.schedule.entries[index]
        self.frame, self.fps, self.window = round(self.time_s * fps), fps, window
        # windows end before the next switch's fade reaches the frames (or at the measured end)
        self.end = total
        if index + 1 < len(stream.schedule.entries):
            self.end = min(total, next((f for f in range(self.frame, total)
                                        if stream.prompt_mix(_latent(f, stream.temporal))[index + 1] > 0), total))
        self.target, old = targets[index], targets[index - 1]
        if self.target is None:
            self.compared = []
        elif old is None:
            self.compared = ["colour", "shape"]
        else:
            self.compared = ["colour", *(a for i, a in enumerate(ATTRIBUTES) if i and old[i] != self.target[i])]
        # motion is called over a shorter span than a clip: the same speed moves the object proportionally less
        self.still = still_threshold * (window - 1) / (clip_frames - 1)
        self.need = max(0, round(hold_seconds * fps) - window)  # later window starts that must match too
        self.held = _Held(self.need)  # all compared attributes at once: the switch's latency
        self.each = {a: _Held(self.need) for a in self.compared}  # each attribute on its own
        self.first_match = None
        self.checked = 0

    def feed(self, start: int, recent) -> None:
        """Judge the window of ``recent`` frames starting at video frame ``start``."""
        if (all(h.frame is not None for h in (self.held, *self.each.values())) or not self.compared
                or start < self.frame or start + self.window > self.end):
            return
        seen = detect(torch.stack(list(recent)), still_threshold=self.still, wrap=True)
        self.checked += 1
        ok = {a: getattr(seen, a) == self.target[ATTRIBUTES.index(a)] for a in self.compared}
        for a, held in self.each.items():
            held.feed(start, ok[a])
        if all(ok.values()) and self.first_match is None:
            self.first_match = start
        self.held.feed(start, all(ok.values()))

    def result(self) -> dict:
        """The switch's row of the report."""
        if not self.compared:
            status = "not judged: the prompt names no colour, shape and motion of the demo data"
        elif self.held.frame is not None:
            status = "followed"
        elif self.checked == 0:
            status = "not reached: the measured video ends too soon after the switch"
        elif self.held.run is not None:
            status = "matching at the end, but for less than the hold time"
        else:
            status = "not followed within the measured video"
        return {"time_s": self.time_s, "frame": self.frame, "prompt": self.prompt,
                "target": None if self.target is None else dict(zip(ATTRIBUTES, self.target)),
                "compared": self.compared, "latency_s": self._seconds(self.held.frame),
                "latency_by_attribute_s": {a: self._seconds(h.frame) for a, h in self.each.items()},
                "first_match_s": self._seconds(self.first_match),
                "windows_checked": self.checked, "status": status}

    def _seconds(self, start: int | None) -> float | None:
        """A window start as seconds after the switch."""
        return None if start is None else round((start - self.frame) / self.fps, 4)


class _Held:
    """The first window start from which a reading holds: matching windows in a row spanning ``need`` frames."""

    def __init__(self, need: int):
        self.need, self.run, self.frame = need, None, None

    def feed(self, start: int, ok: bool) -> None:
        if self.frame is not None:
            return
        if not ok:
            self.run = None
            return
        self.run = start if self.run is None else self.run
        if start - self.run >= self.need:
            self.frame = self.run


def _buckets(rows: list[dict], total: int, bucket: int, fps: float) -> list[dict]:
    """One summary per bucket of ``bucket`` frames, area and contrast relative to the first bucket's."""
    groups = [[r for r in rows if r["bucket"] == b] for b in range(math.ceil(total / bucket))]
    first = summarize_bucket(groups[0])
    return [{"start_s": round(b * bucket / fps, 4), "end_s": round(min(total, (b + 1) * bucket) / fps, 4),
             **summarize_bucket(g, reference=first)} for b, g in enumerate(groups)]


def _drift(buckets: list[dict]) -> dict:
    """The last bucket minus the first on each agreement share, the one-object share and each bench value."""
    a, b = buckets[0], buckets[-1]
    pairs = {**{k: (a["agreement"][k], b["agreement"][k]) for k in (*ATTRIBUTES, "all")},
             "one_object": (a["identity"]["one_object"], b["identity"]["one_object"]),
             **{n: (a["bench"][n]["value"], b["bench"][n]["value"]) for n in a["bench"]}}
    return {k: None if x is None or y is None else round(y - x, 5) for k, (x, y) in pairs.items()}


def _clock(seconds: float) -> str:
    """``seconds`` as m:ss (or s with one decimal below a minute's resolution)."""
    if seconds == int(seconds):
        return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
    return f"{seconds:.1f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


__all__ = ["measure_stream", "drift_table", "summary_lines", "REPORT_FILE"]
