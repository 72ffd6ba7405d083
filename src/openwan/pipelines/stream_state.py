"""The streaming sampler's parts that outlive one call: the incremental VAE decoder and the saved state file.

:class:`StreamDecoder` decodes one latent frame at a time, in order, keeping the VAE's causal
:class:`~openwan.models.vae.FeatureCache` between calls: the chunks it returns equal ``WanVAE.decode`` of the whole
latent sequence (to float32 rounding: a lone frame takes the VAE's one-frame conv path). Its cache can be exported
and imported, so a stream saved to a file resumes with the very same decoder state.

A state file is a safetensors file (tensors only, no pickle) with a JSON header entry ``openwan_stream`` holding
the rest; it is written through :func:`openwan.fileio.atomic_write`, so a kill leaves the old file or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from openwan.fileio import atomic_write
from openwan.models.vae import FeatureCache, WanVAE
from openwan.runtime.offload import on_device

STATE_FORMAT = 1  # the layout version of a state file's header


class StreamDecoder:
    """Latent frames in, pixel frames out: 1 frame for the stream's first latent frame, then 4 per latent frame."""

    def __init__(self, vae: WanVAE, device: torch.device | str = "cpu", offload: bool = False):
        self.vae, self.device, self.offload = vae, torch.device(device), offload
        self.cache = FeatureCache()
        self.latent_frames = 0  # decoded so far

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [C, F, h, w] (the next F latent frames of the stream) -> frames [T, H, W, 3] in
        [0, 1] on the CPU, T = 4F (4F - 3 for the stream's first chunk)."""
        if z.ndim != 4 or z.shape[0] != self.vae.cfg.z_dim:
            raise ValueError(f"StreamDecoder.decode takes latents [{self.vae.cfg.z_dim}, F, h, w]; got "
                             f"{tuple(z.shape)}.")
        vae = self.vae
        out = []
        with on_device(vae, self.device, self.offload):
            x = vae.decoder_input(z[None].to(self.device, vae.dtype))  # [1, C, F, h, w]: per frame, so a chunk at once
            for k in range(x.shape[2]):
                self.cache.next_chunk()
                chunk = vae.decode_chunk(x[:, :, k:k + 1], self.cache).clamp(-1.0, 1.0)  # [1, 3, t, H, W]
                out.append(chunk[0].float().add(1).div(2).clamp(0, 1).permute(1, 2, 3, 0).cpu())
        self.latent_frames += z.shape[1]
        return torch.cat(out)

    def snapshot(self) -> tuple:
        """The decoder as it is now, cheaply (FeatureCache.snapshot)."""
        return self.cache.snapshot(), self.latent_frames

    def restore_snapshot(self, snap: tuple) -> None:
        """Back to what :meth:`snapshot` saw (after a decode interrupted midway)."""
        cache, self.latent_frames = snap
        self.cache = cache.snapshot()

    def held_tensors(self) -> list[torch.Tensor]:
        """The tensors the decoder keeps between calls (its causal cache)."""
        return [t for t in self.cache.slots if t is not None]

    def export(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The cache as (tensors, JSON-able info) for a state file."""
        tensors, info = self.cache.state()
        return {f"decoder.{k}": t for k, t in tensors.items()}, {**info, "latent_frames": self.latent_frames}

    def restore(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """Put back what :meth:`export` gave."""
        ours = {k.removeprefix("decoder."): t for k, t in tensors.items() if k.startswith("decoder.")}
        self.cache = FeatureCache.from_state(ours, info, self.device, self.vae.dtype)
        self.latent_frames = int(info["latent_frames"])


def write_state(path: str | Path, tensors: dict[str, torch.Tensor], info: dict) -> Path:
    """Write a stream state file atomically: ``tensors`` (contiguous CPU copies) and ``info`` (JSON) in its header."""
    from safetensors.torch import save_file

    path = Path(path)
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"openwan_stream": json.dumps({"format": STATE_FORMAT, **info})}
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=header), suffix=".safetensors")
    return path


def read_state_info(path: str | Path) -> dict:
    """The ``info`` of a state file written by :func:`write_state`, from its header alone (no tensor is read);
    ValueError for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no stream state file at {path}; give a file written by VideoStream.save (--state).")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        info = json.loads(header["openwan_stream"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise ValueError(f"{path} is not an openwan stream state ({err}); give a file written by "
                         "VideoStream.save, or start a new stream.") from None
    if info.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} holds stream state format {info.get('format')!r}; this openwan reads format "
                         f"{STATE_FORMAT}: start a new stream.")
    return info


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) of a state file written by :func:`write_state`; ValueError for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_state_info(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not an openwan stream state ({err}); give a file written by "
                         "VideoStream.save, or start a new stream.") from None
    return tensors, info
