"""Find and load every component of a release folder, official or diffusers layout.

Official (e.g. Wan2.1-T2V-1.3B): config.json + diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth,
models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer); i2v/flf2v add
models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth. Wan2.2 A14B: high_noise_model/ and low_noise_model/.
Wan2.2 TI2V-5B: as Wan2.1 T2V, with Wan2.2_VAE.pth (48 latent channels, 16x16 pixels per latent).
Diffusers ("-Diffusers" releases): transformer/ (transformer_2/), vae/, text_encoder/, tokenizer/, image_encoder/.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from openwan.checkpoints.io import CheckpointError, read_json_config
from openwan.models import WanVAE, load_any_dit, load_clip_encoder, load_umt5_encoder
from openwan.models.text_encoder import load_tokenizer
from openwan.pipelines.defaults import defaults_for

# The bundled demo model is package data (src/openwan/weights/openwan-demo), so a wheel install finds it too.
BUNDLED = Path(str(resources.files("openwan") / "weights" / "openwan-demo"))
BUNDLED_NOTE = ("using the bundled demo model: a small model trained on synthetic shapes (e.g. 'a red circle moving "
                "to the left'); pass --ckpt-dir with a Wan release folder for real weights")
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")
VAE22_FILE = "Wan2.2_VAE.pth"
VAE22_FILES = (VAE22_FILE, "Wan2.2_VAE.safetensors")
RELEASE_LAYOUT = (
    "an official release folder holds config.json, diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth (TI2V-5B: "
    f"{VAE22_FILE}), "
    f"{T5_FILE} and google/umt5-xxl/ (i2v/flf2v also {CLIP_FILE}); a diffusers release holds transformer/, vae/, "
    "text_encoder/ and tokenizer/"
)


def _first(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    return None


def _require(root: Path, what: str, *names: str) -> Path:
    found = _first(root, *names)
    if found is None:
        raise CheckpointError(f"{root} has no {what} ({' or '.join(names)}); {RELEASE_LAYOUT}.")
    return found


def holds_dit(root: str | Path) -> bool:
    """Whether ``root`` holds a DiT in one of the layouts :func:`load_components` reads (official, Wan2.2 two
    experts, diffusers)."""
    root = Path(root)
    return any((root / d / "config.json").is_file() for d in ("", "high_noise_model", "transformer"))


def _boundary(root: Path) -> float | None:
    index = root / "model_index.json"
    if index.is_file():
        return read_json_config(index).get("boundary_ratio")
    config = root / "configuration.json"
    if config.is_file():
        return read_json_config(config).get("boundary")
    return None


def load_components(path: str | Path, *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", dit_dir: str | Path | None = None) -> dict:
    """Every model a :class:`WanPipeline` needs, loaded from ``path``. ``dit_dir``: a DiT folder loaded as the only
    DiT instead of the release's own (a streaming student), beside the release's encoders."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder; {RELEASE_LAYOUT}.")
    diffusers = (root / "transformer").is_dir()
    if dit_dir is not None:
        dit_dirs = [Path(dit_dir)]
    elif diffusers:
        dit_dirs = [root / "transformer"] + ([root / "transformer_2"] if (root / "transformer_2").is_dir() else [])
    elif (root / "high_noise_model").is_dir():
        dit_dirs = [root / "high_noise_model", root / "low_noise_model"]
    else:
        dit_dirs = [root]
    dits = [load_any_dit(d, dtype=dtype, device=device) for d in dit_dirs]  # a WanVaceDiT for a VACE release
    cfg = dits[0].cfg
    # The VAE stays float32 unless asked otherwise on GPU: it is small and its output is what users see.
    vae_names = (*VAE22_FILES, *VAE_FILES) if cfg.model_type == "ti2v" else (*VAE_FILES, *VAE22_FILES)
    vae_path = _require(root, "VAE", "vae", *vae_names)
    vae = WanVAE.from_pretrained(vae_path, dtype=torch.float32 if dtype == torch.float32 else dtype, device=device)
    if vae.cfg.z_dim != cfg.out_dim:
        raise CheckpointError(f"{vae_path} makes {vae.cfg.z_dim}-channel latents but the DiT in {dit_dirs[0]} "
                              f"denoises {cfg.out_dim}; a release's VAE and DiT go together (TI2V-5B: "
                              f"{VAE22_FILE}, the others: Wan2.1_VAE.pth).")
    text_encoder = load_umt5_encoder(_require(root, "text encoder", "text_encoder", T5_FILE), dtype=dtype,
                                     device=device)
    tokenizer = load_tokenizer(_require(root, "tokenizer", "tokenizer", "google/umt5-xxl"))
    image_encoder = None
    if cfg.image_tokens:
        image_encoder = load_clip_encoder(_require(root, "CLIP image encoder", "image_encoder", CLIP_FILE),
                                          dtype=dtype, device=device)
    two = len(dits) == 2
    defaults = defaults_for(cfg, two_experts=two)
    boundary = (_boundary(root) or defaults.boundary) if two else None
    return {"dit": dits[0], "dit_low": dits[1] if two else None, "boundary": boundary, "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer, "image_encoder": image_encoder,
            "defaults": defaults}
