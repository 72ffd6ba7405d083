"""The VAE's training losses: L1, KL, an LPIPS-style perceptual distance, and a 3D PatchGAN with hinge losses.

Scales follow the latent-diffusion autoencoder convention, under which the Wan paper's weights (L1 ×3, KL ×3e-6,
perceptual ×3) keep the ratio KL : reconstruction = 1e-6 per summed element: L1 and the perceptual distance are
means per pixel value; the KL is summed over the latent and divided by the number of pixel values.

The perceptual network is never downloaded: :func:`load_perceptual` builds a VGG16 or AlexNet feature stack from
local files — torchvision's ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth`` (``features.*`` keys) or an
``lpips`` package state dict (``net.slice*``), plus optionally LPIPS's learned channel weights (``lin*`` keys,
e.g. the lpips package's ``weights/v0.1/vgg.pth``). Without those weights, channels count equally (LPIPS's
"baseline" distance).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from openwan.checkpoints.io import read_state_dict

log = logging.getLogger("openwan.train")

# ---------------------------------------------------------------------------------- reconstruction, KL


def l1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per pixel value, in float32."""
    return (recon.float() - target.float()).abs().mean()


def kl_loss(mu: torch.Tensor, log_var: torch.Tensor, pixels_per_sample: int) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, 1)) summed over each sample's latent, per pixel value, batch mean.

    mu, log_var [B, z, T', h, w]; ``pixels_per_sample`` = 3·T·H·W of the input clip.
    """
    mu, log_var = mu.float(), log_var.float()
    kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var)
    return kl.flatten(1).sum(1).mean() / pixels_per_sample


def sample_posterior(mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """mu + σ·ε with ε from ``generator`` (the trainer's own, so resume restores it exactly)."""
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * log_var).exp() * noise


def noisy_latents(z: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """Raw latents [B, z, T', h, w] moved to flow-matching noise level ``sigma`` [B] in the normalised space:
    n = (z - mean) / std, n_s = (1 - s) n + s e, returned raw again (n_s · std + mean)."""
    shape = (1, -1) + (1,) * (z.ndim - 2)
    m = torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape)
    s = torch.tensor(std, dtype=z.dtype, device=z.device).view(shape)
    sig = sigma.to(z.dtype).view((-1,) + (1,) * (z.ndim - 1))
    return ((1 - sig) * (z - m) / s + sig * noise) * s + m


# -------------------------------------------------------------------------------------- perceptual

# torchvision's feature stacks: ("C", out, kernel, stride, padding) convolutions each followed by a ReLU,
# ("M", kernel, stride) max-pools. Module indices (and so state-dict keys) follow torchvision's.
_VGG16 = [("C", 64, 3, 1, 1), ("C", 64, 3, 1, 1), ("M", 2, 2),
          ("C", 128, 3, 1, 1), ("C", 128, 3, 1, 1), ("M", 2, 2),
          ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("M", 2, 2),
          ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1), ("M", 2, 2),
          ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1), ("C", 512, 3, 1, 1)]
_ALEXNET = [("C", 64, 11, 4, 2), ("M", 3, 2), ("C", 192, 5, 1, 2), ("M", 3, 2),
            ("C", 384, 3, 1, 1), ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1)]
# LPIPS taps the ReLU outputs at these feature indices.
_ARCHS = {"vgg16": (_VGG16, (3, 8, 15, 22, 29)), "alexnet": (_ALEXNET, (1, 4, 7, 9, 11))}
# LPIPS's input scaling, applied to images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _feature_stack(layout: list[tuple]) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for spec in layout:
        if spec[0] == "C":
            _, out, kernel, stride, padding = spec
            layers += [nn.Conv2d(channels, out, kernel, stride, padding), nn.ReLU()]
            channels = out
        else:
            layers.append(nn.MaxPool2d(spec[1], spec[2]))
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between clips [B, 3, T, H, W] in [-1, 1], frame by frame; frozen, float32.

    At each tap, features are unit-normalised over channels; squared differences are weighted per channel by
    ``lin`` (LPIPS heads) or summed, averaged over space, and summed over taps.
    """

    def __init__(self, arch: str, heads: bool = False) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown perceptual network {arch!r}; use one of: {', '.join(_ARCHS)}.")
        layout, self.taps = _ARCHS[arch]
        self.arch = arch
        self.features = _feature_stack(layout)
        widths = [self.features[i - 1].out_channels for i in self.taps]
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths) if heads else None
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # always frozen, whatever the trainer's mode

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = _frames(recon.float())  # [(B T), 3, H, W]
        y = _frames(target.float())
        feats = self._taps(torch.cat([x, y]))
        total = x.new_zeros(())
        for k, f in enumerate(feats):
            fx, fy = _unit(f).chunk(2)
            diff = (fx - fy).square()  # [N, C, h, w]
            per_pixel = self.lin[k](diff) if self.lin is not None else diff.sum(1, keepdim=True)
            total = total + per_pixel.mean()
        return total

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == self.taps[-1]:
                break
        return out


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] -> [(B T), 3, H, W]."""
    return x.transpose(1, 2).flatten(0, 1)


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)


def load_perceptual(paths: str | Path | Sequence[str | Path] | None) -> PerceptualLoss | None:
    """The perceptual loss from local weight files, or None (with one log line) when none are given.

    ``paths``: one or more files whose tensors together give the backbone (torchvision ``features.*`` or lpips
    ``net.slice*`` keys) and optionally the LPIPS heads (``lin{k}.model.1.weight``). Raises ValueError when the
    files hold no recognisable backbone.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in (paths or [])]
    if not paths:
        log.warning("perceptual loss OFF: no perceptual network weights given (none can be downloaded here); "
                    "training continues on the pixel losses and KL — pass VGG16/AlexNet weights by path to enable it.")
        return None
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(read_state_dict(path))
    backbone, heads = _perceptual_keys(state)
    arch = _arch_of(backbone, paths)
    model = PerceptualLoss(arch, heads=bool(heads))
    model.features.load_state_dict({k.removeprefix("features."): v.float() for k, v in backbone.items()})
    if heads:
        _load_heads(model, heads, paths)
    names = ", ".join(str(p) for p in paths)
    log.info("perceptual loss ON: %s backbone%s from %s", arch,
             " with LPIPS heads" if heads else " (no LPIPS heads: channels weighted equally)", names)
    return model


def _perceptual_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """(backbone tensors as ``features.{i}.*``, LPIPS head weights by tap) from either file layout."""
    backbone, heads = {}, {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if m := re.fullmatch(r"(?:net\.)?slice\d\.(\d+)\.(weight|bias)", key):
            backbone[f"features.{m.group(1)}.{m.group(2)}"] = value
        elif m := re.fullmatch(r"(?:net\.)?features\.(\d+)\.(weight|bias)", key):
            backbone[f"features.{m.group(1)}.{m.group(2)}"] = value
        elif m := re.fullmatch(r"lin(\d)\.model\.1\.weight", key):
            heads[int(m.group(1))] = value
    return backbone, heads


def _arch_of(backbone: dict[str, torch.Tensor], paths: list[Path]) -> str:
    convs = sum(1 for k, v in backbone.items() if k.endswith(".weight") and v.ndim == 4)
    first = backbone.get("features.0.weight")
    if convs == 13 and first is not None and first.shape[-1] == 3:
        return "vgg16"
    if convs == 5 and first is not None and first.shape[-1] == 11:
        return "alexnet"
    names = ", ".join(str(p) for p in paths)
    raise ValueError(f"{names} hold no VGG16 or AlexNet feature weights (found {convs} conv layers); give "
                     "torchvision's vgg16/alexnet weights or an lpips state dict.")


def _load_heads(model: PerceptualLoss, heads: dict[int, torch.Tensor], paths: list[Path]) -> None:
    assert model.lin is not None
    if sorted(heads) != list(range(len(model.lin))):
        raise ValueError(f"the LPIPS heads in {', '.join(map(str, paths))} cover taps {sorted(heads)}; "
                         f"a {model.arch} needs all of 0..{len(model.lin) - 1}.")
    for k, lin in enumerate(model.lin):
        if heads[k].shape != lin.weight.shape:
            raise ValueError(f"LPIPS head lin{k} has shape {tuple(heads[k].shape)}, but the {model.arch} "
                             f"backbone needs {tuple(lin.weight.shape)}; give heads made for {model.arch}.")
        lin.weight.data.copy_(heads[k])


# ------------------------------------------------------------------------------------------------ GAN


class PatchDiscriminator3d(nn.Module):
    """A 3D-conv PatchGAN: clips [B, 3, T, H, W] -> real/fake logits per space-time patch.

    Spatial stride 2 per layer, temporal stride 2 after the first (kernel 3 in time, so 1-frame clips work too).
    """

    def __init__(self, dim: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(3, dim, (3, 4, 4), (1, 2, 2), 1), nn.LeakyReLU(0.2)]
        channels = dim
        for i in range(1, layers):
            out = dim * min(2**i, 8)
            blocks += [nn.Conv3d(channels, out, (3, 4, 4), (2, 2, 2), 1, bias=False),
                       nn.GroupNorm(math.gcd(32, out), out), nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv3d(channels, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)  # [B, 1, T', H', W']


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """‖∇ rec‖ / ‖∇ gan‖ at the decoder's last layer (detached): the GAN term's gradient matches the
    reconstruction's in size, whatever their scales."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


__all__ = [
    "PatchDiscriminator3d",
    "PerceptualLoss",
    "adaptive_gan_weight",
    "hinge_d_loss",
    "hinge_g_loss",
    "kl_loss",
    "l1_loss",
    "load_perceptual",
    "noisy_latents",
    "sample_posterior",
]
