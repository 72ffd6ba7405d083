"""Wan2.1-VACE: reference-to-video, controlled video-to-video and masked editing, told apart by the inputs alone.

One set of inputs covers every use: a source video ``src_video`` (a control signal such as depth, pose, flow, grey
or scribbles, or the video to edit), a mask ``src_mask`` (1 where the model generates, 0 where it keeps the source),
and reference images ``src_ref_images``. Missing inputs take the reference's defaults: no video is a grey (zero)
video, no mask is all ones (generate everything, the video a control signal). As the reference prepares them:

- the mask binarised at 0.5 splits the video into inactive = video·(1−mask) and reactive = video·mask, each
  VAE-encoded (16 + 16 channels);
- the mask itself is folded to the latent grid: each 8×8 pixel block becomes 64 channels, and the frames are
  resampled (nearest) to the latent frame count;
- each reference image, fitted into a white canvas of the video's size, is VAE-encoded as one frame (its reactive
  half zero, its mask zero) and put in front of the video's latent frames; the noise gets those frames too, and
  they are dropped from the output.

The result is the DiT's ``vace_context`` [1, 96, refs + F_lat, h, w]; the loop itself is the shared one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from openwan.data.video import frames_at_fps, read_header, read_image, read_video, resize_crop
from openwan.pipelines.conditioning import Conditioning, latent_frames, to_model_range

# A bound against a mistaken glob or list: each reference image adds a latent frame of tokens to every step, and the
# release's examples give one to three.
MAX_REF_IMAGES = 8
# The official generate.py's --task names of the VACE releases: both run the pipeline task vace.
CLI_TASKS = {"vace-1.3B": "vace", "vace-14B": "vace"}


def is_vace_model(dit) -> bool:
    """Whether ``dit`` has VACE blocks (takes ``vace_context``)."""
    return hasattr(dit, "vace_blocks")


def defaults_from_video(task: str, size, frame_num, src_video) -> tuple:
    """(size, frame_num) for task vace: where not given, the source video's own (width, height) and frame count."""
    if task != "vace" or src_video is None or not isinstance(src_video, torch.Tensor) or src_video.ndim != 4:
        return size, frame_num
    t, h, w = src_video.shape[:3]
    return size or (int(w), int(h)), frame_num or int(t)


def _frames(name: str, x, channels: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[-1] not in channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be frames [T, H, W, {' or '.join(map(str, channels))}] in [0, 1]; got {shape}.")
    if not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name} values must lie in [0, 1] (a mask: 1 = generate, 0 = keep); got values from "
                         f"{float(x.min()):.3g} to {float(x.max()):.3g}.")
    return x.float()


def _ref_list(src_ref_images) -> list[torch.Tensor]:
    if src_ref_images is None:
        return []
    images = list(src_ref_images) if not isinstance(src_ref_images, torch.Tensor) or src_ref_images.ndim == 4 else [
        src_ref_images]
    out = []
    for i, image in enumerate(images):
        frames = _frames(f"src_ref_images[{i}]", image if image.ndim == 4 else image[None], (3,))
        if frames.shape[0] != 1:
            raise ValueError(f"src_ref_images[{i}] must be one image [H, W, 3]; got {frames.shape[0]} frames.")
        out.append(frames)
    return out


def check_inputs(dit, task: str, frame_num: int, src_video, src_mask, src_ref_images, context_scale,
                 temporal: int = 4) -> None:
    """Every VACE input check, before any compute (ValueError with one sentence)."""
    given = [n for n, v in (("src_video", src_video), ("src_mask", src_mask), ("src_ref_images", src_ref_images))
             if v is not None]
    if task != "vace":
        if given:
            raise ValueError(f"task {task} takes no {' / '.join(given)}: those are task vace's inputs; pass "
                             "task='vace' (CLI: --task vace) with a Wan2.1-VACE model.")
        return
    if not is_vace_model(dit):
        raise ValueError("task vace needs a Wan2.1-VACE model (its config.json has vace_layers); this checkpoint has "
                         "no VACE blocks — load a Wan2.1-VACE release.")
    if not isinstance(context_scale, (int, float)) or isinstance(context_scale, bool) or not (
            math.isfinite(context_scale) and context_scale >= 0):
        raise ValueError(f"vace_context_scale must be a finite number >= 0 (1.0: as trained); got {context_scale!r}.")
    if src_mask is not None and src_video is None:
        raise ValueError("src_mask needs src_video: the mask marks which pixels of that video to generate.")
    refs = _ref_list(src_ref_images)
    if len(refs) > MAX_REF_IMAGES:
        raise ValueError(f"{len(refs)} reference images are too many; give at most {MAX_REF_IMAGES}.")
    if src_video is None:
        return
    video = _frames("src_video", src_video, (3,))
    if (video.shape[0] - 1) % temporal:
        n = max(1, (video.shape[0] - 1) // temporal * temporal + 1)
        raise ValueError(f"src_video has {video.shape[0]} frames; VACE takes {temporal}n+1 frames (1, 5, 9, ..., 81): "
                         f"trim it to {n} frames.")
    if video.shape[0] != frame_num:
        raise ValueError(f"src_video has {video.shape[0]} frames but frame_num is {frame_num}; leave frame_num out "
                         "(the video's count is used) or give a video of that many frames (4n+1).")
    if src_mask is None:
        return
    mask = _frames("src_mask", src_mask if src_mask.ndim == 4 else src_mask[..., None], (1, 3))
    if mask.shape[0] != video.shape[0]:
        raise ValueError(f"src_mask has {mask.shape[0]} frames and src_video {video.shape[0]}; give one mask frame "
                         "per video frame.")
    if mask.shape[1:3] != video.shape[1:3]:
        raise ValueError(f"src_mask is {mask.shape[2]}x{mask.shape[1]} but src_video {video.shape[2]}x"
                         f"{video.shape[1]}; give a mask of the video's size.")


def fold_mask(mask: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """[T, H, W] pixel mask -> [sh·sw, F_lat, H/sh, W/sw]: each sh×sw block's pixels as channels (row-major within
    the block), frames resampled nearest-exact to the latent count, as the reference folds it."""
    st, sh, sw = stride
    folded = rearrange(mask, "t (h sh) (w sw) -> (sh sw) t h w", sh=sh, sw=sw)
    size = (latent_frames(mask.shape[0], st), *folded.shape[2:])
    return F.interpolate(folded[None], size=size, mode="nearest-exact")[0]


def fit_on_canvas(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, H, W, 3] in [0, 1] scaled (bilinear, aspect kept) to fit inside width×height and centred on white."""
    if image.shape[1:3] == (height, width):
        return image
    h, w = image.shape[1:3]
    scale = min(height / h, width / w)
    new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
    resized = F.interpolate(image.permute(0, 3, 1, 2), size=(new_h, new_w), mode="bilinear", align_corners=False)
    canvas = torch.ones(1, 3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, :, top:top + new_h, left:left + new_w] = resized
    return canvas.permute(0, 2, 3, 1)


def conditioning(vae, stride: tuple[int, int, int], frame_num: int, width: int, height: int, src_video, src_mask,
                 src_ref_images, context_scale: float, device) -> Conditioning:
    """The VACE context of the inputs (see the module docstring), checked by :func:`check_inputs` before."""
    dtype = next(vae.parameters()).dtype
    if src_video is None:
        video = torch.zeros(1, 3, frame_num, height, width)  # grey in the model's [-1, 1]
    else:
        video = to_model_range(resize_crop(src_video.float(), (width, height)))  # [1, 3, T, H, W]
    if src_mask is None:
        mask = torch.ones(frame_num, height, width)
    else:
        m = (src_mask if src_mask.ndim == 4 else src_mask[..., None]).float()[..., :1].expand(-1, -1, -1, 3)
        mask = resize_crop(m, (width, height))[..., 0]  # [T, H, W]
    keep = (mask > 0.5).float()[None, None]  # [1, 1, T, H, W]
    with torch.no_grad():
        inactive = vae.encode((video * (1 - keep)).to(device, dtype)).float()
        reactive = vae.encode((video * keep).to(device, dtype)).float()
        z = torch.cat([inactive, reactive], dim=1)  # [1, 32, F_lat, h, w]
        refs = []
        for image in _ref_list(src_ref_images):
            pixels = to_model_range(fit_on_canvas(image, width, height))  # [1, 3, 1, H, W]
            r = vae.encode(pixels.to(device, dtype)).float()  # [1, 16, 1, h, w]
            refs.append(torch.cat([r, torch.zeros_like(r)], dim=1))
    folded = fold_mask(mask, stride).to(z)[None]  # [1, sh*sw, F_lat, h, w]
    folded = torch.cat([folded.new_zeros(1, folded.shape[1], len(refs), *folded.shape[3:]), folded], dim=2)
    context = torch.cat([torch.cat([*refs, z], dim=2), folded], dim=1)  # [1, 32 + sh*sw, refs + F_lat, h, w]
    return Conditioning(vace_context=context, vace_scale=float(context_scale), prefix_frames=len(refs))


# ------------------------------------------------------------------------------------------ files (the CLI)


def release_is_vace(root: Path) -> bool | None:
    """Whether the release at ``root`` (official or diffusers layout) is a VACE one, read from its DiT config.json;
    None where that cannot be read (the loader then names the problem)."""
    for path in (root / "config.json", root / "transformer" / "config.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                return None
            return isinstance(data, dict) and (data.get("model_type") == "vace" or "vace_layers" in data)
    return None


def check_release(task: str, root: Path, which: str) -> None:
    """Task vace needs a VACE release (read from its config.json before anything loads)."""
    if task == "vace" and release_is_vace(root) is False:
        raise ValueError(f"--task vace needs a Wan2.1-VACE release; {which} has no VACE blocks: pass --ckpt-dir with "
                         "a Wan2.1-VACE-1.3B or -14B release.")


def check_flags(task: str, src_video, src_mask, src_ref_images, context_scale: float) -> None:
    """The CLI's VACE flags, before any file is read: only with --task vace, a mask only with a video, a bounded
    reference list, a finite scale."""
    given = [f for f, v in (("--src-video", src_video), ("--src-mask", src_mask),
                            ("--src-ref-images", src_ref_images)) if v]
    if given and task != "vace":
        raise ValueError(f"{' / '.join(given)} go with --task vace (or vace-1.3B / vace-14B) and a Wan2.1-VACE "
                         "release.")
    if not (math.isfinite(context_scale) and context_scale >= 0):
        raise ValueError(f"--vace-context-scale must be a finite number >= 0 (1: as trained); got {context_scale}.")
    if src_mask and not src_video:
        raise ValueError("--src-mask needs --src-video: the mask marks which pixels of that video to generate.")
    paths = [p for p in (src_ref_images or "").split(",") if p.strip()]
    if len(paths) > MAX_REF_IMAGES:
        raise ValueError(f"--src-ref-images lists {len(paths)} images; give at most {MAX_REF_IMAGES}.")


def read_sources(src_video: str | None, src_mask: str | None, src_ref_images: str | None, *, fps: float,
                 size: tuple[int, int] | None, frame_num: int | None) -> dict:
    """The CLI's VACE files as pipeline inputs: video and mask read at ``fps``, ``frame_num`` frames at ``size``
    (mask and video must share their source size); reference images comma-separated. Headers are checked first."""
    out: dict = {}
    paths = [p for p in (src_ref_images or "").split(",") if p.strip()]
    if src_video:
        videos = [("--src-video", src_video)] + ([("--src-mask", src_mask)] if src_mask else [])
        headers = {flag: read_header(path) for flag, path in videos}
        if src_mask:
            v, m = headers["--src-video"], headers["--src-mask"]
            if (v["width"], v["height"]) != (m["width"], m["height"]):
                raise ValueError(f"--src-mask is {m['width']}x{m['height']} but --src-video {v['width']}x"
                                 f"{v['height']}; give a mask video of the source video's size.")
        for flag, path in videos:
            available = frames_at_fps(headers[flag], fps)
            if frame_num and available and available < frame_num:
                raise _too_short(flag, path, available, fps, frame_num)
            frames = read_video(path, fps=fps, size=size, max_frames=frame_num)
            if frame_num and len(frames) < frame_num:
                raise _too_short(flag, path, len(frames), fps, frame_num)
            out["src_mask" if flag == "--src-mask" else "src_video"] = frames
    if paths:
        out["src_ref_images"] = [read_image(p.strip()) for p in paths]
    return out


def _too_short(flag: str, path: str, frames: int, fps: float, frame_num: int) -> ValueError:
    return ValueError(f"{flag} {path} has {frames} frames at {fps:g} fps; the video needs --frame-num {frame_num}: "
                      "give a longer video or a lower --frame-num (4n+1).")


__all__ = ["MAX_REF_IMAGES", "CLI_TASKS", "check_inputs", "conditioning", "fold_mask", "fit_on_canvas",
           "defaults_from_video", "is_vace_model", "read_sources", "release_is_vace", "check_release", "check_flags"]
