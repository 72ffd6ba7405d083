"""The LAION aesthetic predictor ("improved aesthetic predictor"): CLIP ViT-L/14 image embeddings into a small MLP
head trained on human ratings (AVA, SAC, LAION-logos), about 1 (ugly) to 10 (beautiful).

Weights the user gives: ``aesthetic.clip_path``, a transformers folder of CLIP ViT-L/14 (``openai/clip-vit-large-
patch14``; its vision tower and projection are read as ``CLIPVisionModelWithProjection``), and
``aesthetic.head_path``, the head file (``sac+logos+ava1-l14-linearMSE.pth``, or the same tensors as
``.safetensors``). The head is ``layers.0`` Linear(768, 1024), ``layers.2`` Linear(1024, 128), ``layers.4``
Linear(128, 64), ``layers.6`` Linear(64, 16), ``layers.7`` Linear(16, 1) with dropouts between and no activation
(the "linear" heads); heads trained with ReLUs have their linears at ``layers.0, 3, 6, 9, 11`` and get the ReLUs.
The image embedding (``image_embeds``) is L2-normalised before the head; images are prepared by the CLIP folder's
own image processor (resize the short side, centre crop, OpenAI mean and std), as the predictor's CLIP did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.curate.embed import key_frame_indices

NOT_MEASURED = "not measured: give aesthetic.clip_path and aesthetic.head_path"
LINEAR_LAYERS = (0, 2, 4, 6, 7)  # indices of the linears in the released linear head's nn.Sequential
RELU_LAYERS = (0, 3, 6, 9, 11)  # the same in heads trained with a ReLU after every linear but the last


@dataclass(frozen=True)
class AestheticConfig:
    """Section ``aesthetic`` (off unless turned on): ``clip_path`` (CLIP ViT-L/14 transformers folder), ``head_path``
    (.pth or .safetensors of the MLP head), ``frames`` key frames scored per clip (the score is their mean),
    ``min_score`` (reject below; None: score only), ``device``."""

    enabled: bool = False
    clip_path: str | None = None
    head_path: str | None = None
    frames: int = 3
    min_score: float | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.enabled and not (self.clip_path and self.head_path):
            raise ValueError("aesthetic is enabled but needs aesthetic.clip_path (a transformers folder of CLIP "
                             "ViT-L/14, e.g. openai/clip-vit-large-patch14) and aesthetic.head_path (the LAION head, "
                             "e.g. sac+logos+ava1-l14-linearMSE.pth); give both or disable aesthetic.")
        if self.frames < 1:
            raise ValueError(f"aesthetic.frames must be >= 1; got {self.frames}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"aesthetic.device must be cpu or cuda[:n]; got {self.device!r}.")


def load_head(path: str | Path):
    """The LAION MLP head from ``path`` (.pth read with weights_only=True, or .safetensors) as a torch
    ``nn.Sequential`` in eval mode: its linears, with ReLUs between them when the file's layout has them."""
    import torch
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"aesthetic.head_path {path} does not exist; give the LAION head file "
                         f"(e.g. sac+logos+ava1-l14-linearMSE.pth).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict of the LAION aesthetic head.")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    layouts = [(indices, relu) for indices, relu in ((LINEAR_LAYERS, False), (RELU_LAYERS, True))
               if all(f"layers.{i}.weight" in state for i in indices)]
    if not layouts:
        raise ValueError(f"{path} is not the LAION aesthetic head: it lacks layers.{{0,2,4,6,7}}.weight (found "
                         f"{', '.join(sorted(state)[:6])}...).")
    indices, relu = layouts[0]
    modules: list[nn.Module] = []
    for k, i in enumerate(indices):
        weight, bias = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        modules.append(linear)
        if relu and k < len(indices) - 1:
            modules.append(nn.ReLU())
    if modules[-1].out_features != 1:
        raise ValueError(f"{path}: the head's last layer gives {modules[-1].out_features} outputs; the LAION head "
                         f"gives 1.")
    return nn.Sequential(*modules).eval().requires_grad_(False)


class AestheticStage:
    """Per-clip stage ``aesthetic``: ``aesthetic_score``, the LAION predictor's mean score over the key frames
    (about 1-10; higher is more pleasing), and a reason when it is below ``min_score``."""

    name = "aesthetic"

    def __init__(self, cfg: AestheticConfig):
        if not (cfg.clip_path and cfg.head_path):
            raise ValueError(NOT_MEASURED + ".")
        if not Path(cfg.clip_path, "config.json").is_file():
            raise ValueError(f"aesthetic.clip_path {cfg.clip_path} is not a transformers CLIP folder (no config.json);"
                             f" give a folder such as openai/clip-vit-large-patch14.")
        if not Path(cfg.head_path).is_file():
            raise ValueError(f"aesthetic.head_path {cfg.head_path} does not exist; give the LAION head file.")
        self.cfg = cfg
        self.resources = Resources(num_cpus=1.0, num_gpus=1.0 if cfg.device.startswith("cuda") else 0.0)
        self._clip = self._processor = self._head = None

    def setup(self) -> None:
        """Load CLIP, its image processor and the head once."""
        if self._clip is not None:
            return
        from transformers import AutoConfig, CLIPImageProcessor, CLIPVisionModelWithProjection

        config = AutoConfig.from_pretrained(self.cfg.clip_path)
        if config.model_type == "clip":  # a whole CLIP (text and vision): its projection size is the top-level one
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
            config = vision
        clip = CLIPVisionModelWithProjection.from_pretrained(self.cfg.clip_path, config=config)
        clip = clip.eval().requires_grad_(False)
        head = load_head(self.cfg.head_path)
        if head[0].in_features != clip.config.projection_dim:
            raise ValueError(f"the head {self.cfg.head_path} takes {head[0].in_features}-d embeddings but the CLIP "
                             f"in {self.cfg.clip_path} gives {clip.config.projection_dim}-d; give CLIP ViT-L/14 "
                             f"(768) with the ViT-L/14 head.")
        if Path(self.cfg.clip_path, "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(self.cfg.clip_path)
        else:  # the OpenAI preprocessing at this model's size
            size = clip.config.image_size
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        self._clip, self._head = clip.to(self.cfg.device), head.to(self.cfg.device)
        self._processor = processor

    def score_frames(self, frames: np.ndarray) -> np.ndarray:
        """Aesthetic scores (float64 [N]) of uint8 RGB frames [N, H, W, 3]."""
        import torch

        self.setup()
        pixels = self._processor(images=list(frames), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            embeds = self._clip(pixel_values=pixels.to(self.cfg.device)).image_embeds.float()  # [N, 768]
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            return self._head(embeds)[:, 0].double().cpu().numpy()

    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        picks = key_frame_indices(len(frames), self.cfg.frames)
        score = float(self.score_frames(frames.frames[picks]).mean())
        out = StageOutput(values={"aesthetic_score": score})
        if self.cfg.min_score is not None and score < self.cfg.min_score:
            out.reasons.append(f"aesthetic score {score:.2f} is below aesthetic.min_score {self.cfg.min_score}")
        return out


__all__ = ["AestheticConfig", "AestheticStage", "load_head", "NOT_MEASURED"]
