"""``openwan convert``: rewrite Wan weights between the official release layout and diffusers' layout.

A whole release converts to a complete folder of the other layout: to diffusers, a pipeline folder that
``diffusers.WanPipeline.from_pretrained`` loads (model_index.json, transformer/ — the high-noise expert of a
two-expert release — and transformer_2/, vae/, text_encoder/, tokenizer/, scheduler/; an i2v/flf2v release's CLIP
vision tower as image_encoder/ + image_processor/ for WanImageToVideoPipeline); to official, the release layout
(config.json + safetensors or high_noise_model/ + low_noise_model/ + configuration.json, Wan2.1_VAE.pth or
Wan2.2_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/, the CLIP file). What diffusers has no field
for is kept as an extra key in the config it belongs to and read back by openwan: ``text_len`` in
transformer/config.json. The VAE's latent statistics travel in vae/config.json one way and in Wan2.x_VAE.json
(beside Wan2.x_VAE.pth) the other way.
What a conversion cannot carry is logged in one line (or refused, where the result would generate differently).

Every file is written to a temporary name and renamed into place, so an interrupted conversion never leaves a
file that looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import save_file

from openwan.checkpoints import keymaps, vace_keys
from openwan.checkpoints.encoders import (
    CLIP_OFFICIAL_FILE,
    UMT5_OFFICIAL_FILE,
    clip_hf_to_official,
    clip_official_to_hf,
    infer_clip_config,
    infer_umt5_config,
    read_umt5,
    strip_vision_prefix,
    umt5_hf_to_official,
)
from openwan.checkpoints.infer import infer_vae_config
from openwan.checkpoints.io import CheckpointError, read_json_config, read_state_dict
from openwan.checkpoints.loaders import VAE_FILES, load_dit_state, load_vae_state
from openwan.configs import DiTConfig, VaceConfig, VAEConfig
from openwan.fileio import atomic_torch_save, atomic_write

STUDENT_DIR = "stream_model"  # a release's streaming student (openwan.pipelines.stream_student)

log = logging.getLogger(__name__)

LAYOUTS = ("official", "diffusers")
DEFAULT_SHARD_BYTES = 5 * 1024**3
EXPERT_DIRS = ("high_noise_model", "low_noise_model")  # official Wan2.2 A14B: high noise first
TRANSFORMER_DIRS = ("transformer", "transformer_2")  # diffusers: `transformer` takes t >= boundary_ratio·1000
TOKENIZER_DIRS = {"official": "google/umt5-xxl", "diffusers": "tokenizer"}
VAE_FILE = "Wan2.1_VAE.pth"
VAE22_FILE = "Wan2.2_VAE.pth"  # the residual, 48-channel VAE of Wan2.2 TI2V-5B
HF_WEIGHTS = "model.safetensors"  # transformers' file name (text_encoder/, image_encoder/)
_UMT5_TIED = "encoder.embed_tokens.weight"  # the same tensor as shared.weight; safetensors stores it once


def write_json(path: Path, data: Mapping) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def save_sharded(state: Mapping[str, torch.Tensor], folder: Path, stem: str = "diffusion_pytorch_model",
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """One ``{stem}.safetensors``, or numbered shards plus ``{stem}.safetensors.index.json`` as releases do."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        save_safetensors(shards[0], path)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = folder / f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(shard, path)
        weight_map.update({k: path.name for k in shard})
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(folder / f"{stem}.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return paths


def _cast(state: dict, dtype: torch.dtype | None) -> dict:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


# ------------------------------------------------------------------------------------------- one model


def _write_dit(config: DiTConfig, state: dict, dst: Path, to: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    if to == "diffusers":
        if config.window_size != (-1, -1):
            raise ValueError(f"this DiT attends in a local window {list(config.window_size)}, which diffusers' "
                             "WanTransformer3DModel cannot express; keep it in the official layout.")
        vace = isinstance(config, VaceConfig)  # Wan2.1-VACE: diffusers' WanVACETransformer3DModel
        state = vace_keys.vace_official_to_diffusers(state) if vace else keymaps.dit_official_to_diffusers(state)
        to_config = vace_keys.vace_config_to_diffusers if vace else keymaps.dit_config_to_diffusers
        # text_len has no diffusers field (WanPipeline pads prompts to its max_sequence_length argument): kept
        # as an extra key, which diffusers ignores and openwan reads back.
        write_json(dst / "config.json", {**to_config(config), "text_len": config.text_len})
    else:
        write_json(dst / "config.json", config.to_dict())
    save_sharded(state, dst, max_shard_bytes=max_shard_bytes)


def convert_dit(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the DiT at ``src`` (any layout) to the folder ``dst`` in layout ``to``."""
    _check_layout(to)
    config, state = load_dit_state(src)
    dst = Path(dst)
    _write_dit(config, _cast(state, dtype), dst, to, max_shard_bytes)
    return dst


def write_vae(config: VAEConfig, state: dict, dst: Path, to: str) -> Path:
    """Write a Wan VAE (official keys) as a diffusers vae/ folder ``dst``, or as ``dst``/Wan2.1_VAE.pth (a Wan2.2
    VAE: Wan2.2_VAE.pth; ``dst`` itself when it ends in .pth) with a .json of the same name beside it when the
    latent statistics are not those a config-less .pth is read with, or the decoder records a trained noise range
    (``decode_noise``, which the diffusers layout has no field for)."""
    if to == "diffusers":
        write_json(dst / "config.json", keymaps.vae_config_to_diffusers(config))
        save_safetensors(keymaps.vae_official_to_diffusers(state, config), dst / "diffusion_pytorch_model.safetensors")
        return dst
    target = dst / (VAE22_FILE if config.residual else VAE_FILE) if dst.suffix != ".pth" else dst
    atomic_torch_save({k: v.contiguous() for k, v in state.items()}, target)
    read_alone = infer_vae_config(state)
    stats_differ = (config.latents_mean, config.latents_std) != (read_alone.latents_mean, read_alone.latents_std)
    if stats_differ or config.decode_noise is not None:
        write_json(target.with_suffix(".json"), config.to_dict())
    return target


def convert_vae(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None) -> Path:
    """Write the Wan2.1 or Wan2.2 VAE at ``src`` to ``dst``: a diffusers vae/ folder, or the release's
    Wan2.1_VAE.pth / Wan2.2_VAE.pth (with a .json beside it when its latent statistics are not the released ones)."""
    _check_layout(to)
    config, state = load_vae_state(src)
    return write_vae(config, _cast(state, dtype), Path(dst), to)


# ------------------------------------------------------------------------------------------- a release


@dataclass
class Release:
    """Every component of a release folder: the DiT and VAE in the official key layout, the encoders in
    transformers'."""

    dits: list[tuple[DiTConfig, dict]]  # one DiT, or the high-noise expert then the low-noise one
    boundary: float | None  # where two experts meet (t >= boundary·1000: the high-noise expert); None: not stored
    flow_shift: float | None  # the sampling shift a diffusers scheduler/ names; None: not stored
    vae: tuple[VAEConfig, dict] | None
    text_encoder: tuple | None  # (transformers UMT5Config, UMT5EncoderModel state dict)
    tokenizer: Path | None  # the tokenizer's folder
    source: Path
    image_encoder: tuple | None = None  # (CLIPVisionConfig of the whole tower, CLIPVisionModel state dict)

    @property
    def config(self) -> DiTConfig:
        return self.dits[0][0]


def _read_json(path: Path) -> dict:
    """The JSON object in an optional file of a release ({} when absent); a broken one is refused naming it."""
    return read_json_config(path) if path.is_file() else {}


def _present(src: Path, what: str, *names: str) -> bool:
    """Whether ``src`` holds one of ``names`` (files or folders, globs allowed); logs the absence."""
    if any(any(src.glob(name)) for name in names):
        return True
    log.warning("%s has no %s (%s); the converted folder has none either", src, what, " or ".join(names))
    return False


def read_release(src: str | Path) -> Release:
    """Read a release folder of either layout (single DiT or two experts) into a :class:`Release`."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a folder; give a release folder, or use --model dit|vae for one file.")
    index = _read_json(src / "model_index.json")
    if (src / TRANSFORMER_DIRS[0]).is_dir():
        dit_dirs = [src / d for d in TRANSFORMER_DIRS if (src / d).is_dir()]
        boundary = index.get("boundary_ratio")
    elif (src / EXPERT_DIRS[0]).is_dir():
        dit_dirs = [src / d for d in EXPERT_DIRS]
        boundary = _read_json(src / "configuration.json").get("boundary")
    else:
        dit_dirs, boundary = [src], None
    if len(dit_dirs) == 1:
        boundary = None
    tokenizer = next((src / d for d in TOKENIZER_DIRS.values() if (src / d).is_dir()), None)
    if tokenizer is None:
        _present(src, "tokenizer", *TOKENIZER_DIRS.values())
    has_vae = _present(src, "VAE", "vae/config.json", *VAE_FILES)
    has_umt5 = _present(src, "umT5 text encoder", "text_encoder/config.json", "models_t5_*.pth")
    dits = [load_dit_state(d) for d in dit_dirs]
    if dits[0][0].image_tokens:  # Wan2.1 i2v / flf2v condition on CLIP image features
        _present(src, "CLIP image encoder", CLIP_OFFICIAL_FILE, "image_encoder/config.json")
    return Release(
        dits=dits,
        boundary=boundary,
        flow_shift=_read_json(src / "scheduler" / "scheduler_config.json").get("flow_shift"),
        vae=load_vae_state(src) if has_vae else None,
        text_encoder=read_umt5(src)[:2] if has_umt5 else None,
        tokenizer=tokenizer,
        source=src,
        image_encoder=_read_image_encoder(src),
    )


def _read_image_encoder(src: Path) -> tuple | None:
    """The whole CLIP vision tower of a release, if it has one (Wan runs all but its last block)."""
    from transformers import CLIPVisionConfig

    if (src / CLIP_OFFICIAL_FILE).is_file():
        state = read_state_dict(src / CLIP_OFFICIAL_FILE)
        if any(not k.startswith("visual.") or k == "visual.head" for k in state):
            log.warning("%s: the CLIP file's text tower and projection head are not carried (Wan uses the vision "
                        "tower only)", src / CLIP_OFFICIAL_FILE)
        config = infer_clip_config(state).to_hf()
        config.num_hidden_layers += 1  # to_hf describes the blocks Wan runs; the file holds the whole tower
        return config, clip_official_to_hf(state)
    folder = src / "image_encoder"
    if not (folder / "config.json").is_file():
        return None
    weights = folder / HF_WEIGHTS
    state = read_state_dict(weights if weights.is_file() else folder / "model.safetensors.index.json")
    if any(k.startswith("visual_projection.") for k in state):
        log.warning("%s: the vision projection is not carried (Wan uses the features before it)", folder)
    return CLIPVisionConfig.from_pretrained(str(folder)), strip_vision_prefix(state)


# What the official encoder files cannot say (they have no config): read back as the released values.
_UMT5_UNSEEN = ("relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj")
_CLIP_UNSEEN = ("num_attention_heads", "layer_norm_eps", "hidden_act")


def _say_unseen(what: str, config, read_back, fields: tuple[str, ...]) -> None:
    """Log the transformers config fields an official (config-less) file would read back differently."""
    lost = [f"{k}={getattr(config, k)}" for k in fields if getattr(config, k) != getattr(read_back, k)]
    if lost:
        log.warning("the official %s file has no config, so %s is not carried (it reads back as the released value)",
                    what, ", ".join(lost))


# The preprocessing diffusers' Wan i2v releases ship (OpenAI CLIP's normalisation at the tower's input size).
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _write_image_encoder(config, state: dict, dst: Path, to: str) -> None:
    if to == "official":
        official = {k: v.contiguous() for k, v in clip_hf_to_official(state).items()}
        _say_unseen("CLIP", config, infer_clip_config(official).to_hf(), _CLIP_UNSEEN)
        atomic_torch_save(official, dst / CLIP_OFFICIAL_FILE)
        return
    write_json(dst / "image_encoder" / "config.json", {**config.to_dict(), "architectures": ["CLIPVisionModel"]})
    save_safetensors(state, dst / "image_encoder" / HF_WEIGHTS)
    size = config.image_size
    write_json(dst / "image_processor" / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
        "do_convert_rgb": True})


def copy_folder(src: str | Path, dst: str | Path) -> Path:
    """Copy the files of the folder ``src`` (a tokenizer's, say) into ``dst``, each atomically."""
    src, dst = Path(src), Path(dst)
    for file in sorted(p for p in src.iterdir() if p.is_file()):
        atomic_write(dst / file.name, lambda tmp, file=file: shutil.copyfile(file, tmp))
    return dst


def _tokenizer_class(folder: Path) -> str:
    return _read_json(folder / "tokenizer_config.json").get("tokenizer_class") or "AutoTokenizer"


def _write_umt5(config, state: dict, dst: Path, to: str) -> None:
    if to == "official":
        official = {k: v.contiguous() for k, v in umt5_hf_to_official(state).items()}
        _say_unseen("umT5", config, infer_umt5_config(official).to_hf(), _UMT5_UNSEEN)
        atomic_torch_save(official, dst / UMT5_OFFICIAL_FILE)
        return
    data = {**config.to_dict(), "architectures": ["UMT5EncoderModel"]}
    write_json(dst / "text_encoder" / "config.json", data)
    save_safetensors({k: v for k, v in state.items() if k != _UMT5_TIED}, dst / "text_encoder" / HF_WEIGHTS)


def convert_umt5(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None) -> Path:
    """Write the umT5 encoder at ``src`` (any layout) into the folder ``dst``: the release's
    models_t5_umt5-xxl-enc-bf16.pth, or a transformers ``text_encoder/`` folder."""
    _check_layout(to)
    config, state, _ = read_umt5(src)
    dst = Path(dst)
    _write_umt5(config, _cast(state, dtype), dst, to)
    return dst / (UMT5_OFFICIAL_FILE if to == "official" else "text_encoder")


def scheduler_config(flow_shift: float) -> dict:
    """diffusers' UniPC configured as Wan samples: flow prediction, 2nd-order bh2 predictor-corrector with x0
    prediction, a lower order at the last step, the σ grid shifted by ``flow_shift``. diffusers spaces that grid
    from σ = 1 where Wan starts at 0.999 (see :mod:`openwan.diffusion.schedule`); passing Wan's σ to
    ``set_timesteps(sigmas=...)`` reproduces openwan's sampling exactly."""
    return {
        "_class_name": "UniPCMultistepScheduler",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": float(flow_shift),
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "lower_order_final": True,
        "final_sigmas_type": "zero",
    }


def _diffusers_version() -> str:
    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.35.0"


def _model_index(release: Release, boundary: float | None, with_scheduler: bool) -> dict:
    def entry(present: bool, library: str, cls: str) -> list:
        return [library, cls] if present else [None, None]

    two = len(release.dits) == 2
    tokenizer = release.tokenizer
    image_input = release.config.in_dim > release.config.out_dim
    clip = release.image_encoder is not None
    index = {
        "_class_name": "WanImageToVideoPipeline" if image_input else "WanPipeline",
        "_diffusers_version": _diffusers_version(),
        "boundary_ratio": boundary,
        "expand_timesteps": release.config.model_type == "ti2v",  # diffusers' per-token timesteps of TI2V-5B
        "scheduler": entry(with_scheduler, "diffusers", "UniPCMultistepScheduler"),
        "text_encoder": entry(release.text_encoder is not None, "transformers", "UMT5EncoderModel"),
        "tokenizer": entry(tokenizer is not None, "transformers", _tokenizer_class(tokenizer) if tokenizer else ""),
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": entry(two, "diffusers", "WanTransformer3DModel"),
        "vae": entry(release.vae is not None, "diffusers", "AutoencoderKLWan"),
        **({"image_encoder": entry(clip, "transformers", "CLIPVisionModel"),
            "image_processor": entry(clip, "transformers", "CLIPImageProcessor")} if image_input else {}),
    }
    return vace_keys.model_index(index, release.config)


def write_release(release: Release, dst: str | Path, to: str, *, dtype: torch.dtype | None = None,
                  flow_shift: float | None = None, boundary: float | None = None) -> Path:
    """Write ``release`` as a folder of layout ``to``. ``dtype`` casts the DiT's and the text encoder's
    floating-point weights (the VAE keeps its own). ``flow_shift`` (diffusers only) is the scheduler's shift
    (default: the source scheduler's; with neither, no scheduler/ is written, and that is logged). ``boundary``
    stands in where a two-expert release stores none. The CLI gives the model family's defaults for both."""
    _check_layout(to)
    dst = Path(dst)
    two = len(release.dits) == 2
    boundary = release.boundary if release.boundary is not None else boundary
    if two and boundary is None:
        raise ValueError(f"{release.source} holds two experts but says nowhere where they meet; give boundary "
                         "(the noise level between 0 and 1 at which the sampler switches experts).")
    if to == "diffusers":
        names = TRANSFORMER_DIRS[: len(release.dits)]
    else:
        names = EXPERT_DIRS if two else ("",)
    for (config, state), name in zip(release.dits, names):
        _write_dit(config, _cast(state, dtype), dst / name, to)
    if release.vae is not None:
        write_vae(*release.vae, dst / "vae" if to == "diffusers" else dst, to)
    if release.text_encoder is not None:
        config, state = release.text_encoder
        _write_umt5(config, _cast(state, dtype), dst, to)
    if release.tokenizer is not None:
        copy_folder(release.tokenizer, dst / TOKENIZER_DIRS[to])
    if release.image_encoder is not None:
        _write_image_encoder(*release.image_encoder, dst, to)
    if to == "official":
        if two:
            write_json(dst / "configuration.json", {"boundary": float(boundary)})
        return dst
    shift = release.flow_shift if flow_shift is None else flow_shift
    if shift is None:
        log.warning("no sampling shift given, so %s has no scheduler/; pass flow_shift (openwan convert gives the "
                    "model family's) or a scheduler to WanPipeline.from_pretrained", dst)
    else:
        write_json(dst / "scheduler" / "scheduler_config.json", scheduler_config(shift))
    write_json(dst / "model_index.json", _model_index(release, boundary if two else None, shift is not None))
    return dst


def convert_release(src: str | Path, dst: str | Path, to: str, *, dtype: torch.dtype | None = None,
                    flow_shift: float | None = None, boundary: float | None = None) -> Path:
    """Convert a whole release folder (one DiT or two experts, VAE, umT5, tokenizer); see :func:`write_release`."""
    _check_layout(to)
    out = write_release(read_release(src), dst, to, dtype=dtype, flow_shift=flow_shift, boundary=boundary)
    copy_student(src, out)
    return out


def copy_student(src: str | Path, dst: str | Path) -> None:
    """A release's streaming student (``stream_model/``: openwan's own, a DiT folder with official keys and its
    stream settings, the same in either layout) copied file by file, each atomically."""
    folder = Path(src) / STUDENT_DIR
    if not folder.is_dir():
        return
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = Path(dst) / STUDENT_DIR / file.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, file=file: shutil.copyfile(file, tmp))


def _check_layout(to: str) -> None:
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; use one of: {', '.join(LAYOUTS)}.")
