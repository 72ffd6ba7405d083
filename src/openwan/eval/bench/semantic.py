"""CLIP-feature dimensions: subject and background consistency over time, and how well the video matches its prompt.

Feature backends, chosen by :attr:`BenchWeights.clip`:

- a transformers CLIP folder (``CLIPModel.from_pretrained``: image and text towers, e.g.
  ``openai/clip-vit-large-patch14``), prepared by its own image processor and tokenizer;
- ``"wan-clip"``: the Wan i2v release's CLIP ViT-H image tower at ``clip_path``, as ``openwan curate``'s embed
  stage reads it (:class:`openwan.curate.embed.EmbedStage`); it has no text tower, so prompt alignment is not
  measured with it;
- any other name: an ``open_clip`` model (``clip_path`` its pretrained tag or file), when ``open_clip_torch`` is
  installed.

Consistency (VBench's subject and background consistency, here both on CLIP features): for frames 1..T-1, the mean
of ``(max(0, cos(f_t, f_0)) + max(0, cos(f_t, f_t-1))) / 2``, where ``f_t`` are L2-normalised image features of
every frame. The two differ in what of the frame they look at:

- subject: the centre square (side :data:`SUBJECT_SIDE` of the frame's short side), where a generated video's
  subject nearly always sits; a subject that changes identity, melts or vanishes lowers it;
- background: the whole frame squeezed to a square (its sides count too) with that centre square greyed out, so a
  subject that moves or turns in place does not count against the scene around it.

Prompt alignment (VBench's overall consistency, Wan-Bench's prompt following): the mean over :data:`PROMPT_FRAMES`
key frames of the cosine between the frame's and the prompt's CLIP embeddings, mapped to [0, 1] as CLIPScore
(Hessel et al. 2021) rescales it: ``min(1, 2.5 * max(0, cos))``. Matching pairs score about 0.25-0.35 in cosine
with the OpenAI CLIPs (0.6-0.9 after the map); the cosine is kept in ``details``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from openwan.eval.bench.base import BenchWeights, Dimension, Score, Video

SUBJECT_SIDE = 0.6  # the subject crop's side as a share of the frame's short side
PROMPT_FRAMES = 8  # key frames compared with the prompt
CLIPSCORE_WEIGHT = 2.5  # CLIPScore's rescaling of the cosine
BATCH = 16  # frames per forward pass
NO_CLIP = ("not measured: give --clip (a transformers CLIP folder, wan-clip with its path, or an open_clip model "
           "after pip install open_clip_torch)")

_LOADED: dict[tuple, ClipFeatures] = {}  # one copy of each model, shared by the dimensions of a run


def clip_unavailable(weights: BenchWeights, text: bool = False) -> str | None:
    """Why the CLIP backend ``weights`` names cannot run here ("not measured: ..."), or None. ``text``: the text
    tower is needed too."""
    clip = weights.clip
    if not clip:
        return NO_CLIP
    if clip == "wan-clip":
        if text:
            return ("not measured: wan-clip has no text tower; give --clip a transformers CLIP folder or an open_clip "
                    "model (pip install open_clip_torch)")
        if not weights.clip_path:
            return ("not measured: wan-clip needs its weights: give --clip-path (the Wan i2v release folder or its "
                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)")
        return None
    if Path(clip).is_dir():
        return None
    if importlib.util.find_spec("open_clip") is None:
        return (f"not measured: the open_clip model {clip} needs pip install open_clip_torch (or give --clip a "
                f"transformers CLIP folder)")
    return None


def _device(weights: BenchWeights) -> str:
    if weights.device:
        return weights.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipFeatures:
    """One loaded CLIP: L2-normalised image features of uint8 RGB frames and text features of prompts (float32
    numpy, one row each). Build with :func:`load_clip`."""

    def __init__(self, weights: BenchWeights):
        import torch

        self.device = _device(weights)
        self.kind = "wan-clip" if weights.clip == "wan-clip" else "transformers" if Path(weights.clip).is_dir() \
            else "open-clip"
        self._tokenizer = None
        if self.kind == "wan-clip":
            from openwan.curate.embed import EmbedConfig, EmbedStage

            if not Path(weights.clip_path).exists():
                raise ValueError(f"the wan-clip weights {weights.clip_path} do not exist; give the Wan i2v release "
                                 f"folder or its models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth.")
            self._stage = EmbedStage(EmbedConfig(embedder="wan-clip", path=weights.clip_path, device=self.device))
            self._stage.setup()
        elif self.kind == "transformers":
            from transformers import CLIPImageProcessor, CLIPModel

            folder = Path(weights.clip)
            if not (folder / "config.json").is_file():
                raise ValueError(f"--clip {folder} is not a transformers CLIP folder (no config.json); give one such "
                                 f"as openai/clip-vit-large-patch14 saved locally.")
            self._model = CLIPModel.from_pretrained(folder).eval().requires_grad_(False).to(self.device)
            if (folder / "preprocessor_config.json").is_file():
                self._processor = CLIPImageProcessor.from_pretrained(folder)
            else:  # the OpenAI preprocessing at this model's size
                size = self._model.config.vision_config.image_size
                self._processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                     crop_size={"height": size, "width": size})
            self._folder = folder
        else:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(weights.clip, pretrained=weights.clip_path,
                                                                         device=self.device)
            self._model, self._preprocess = model.eval().requires_grad_(False), preprocess
            self._tokenizer = open_clip.get_tokenizer(weights.clip)
        self._torch = torch

    @property
    def has_text(self) -> bool:
        """Whether prompts can be embedded (wan-clip has no text tower)."""
        return self.kind != "wan-clip"

    def images(self, frames: np.ndarray) -> np.ndarray:
        """Image features [N, D] of uint8 RGB frames [N, H, W, 3], each row L2 norm 1 (the backend's own
        preprocessing: resize the short side, centre crop)."""
        if self.kind == "wan-clip":
            return np.concatenate([self._stage.embed_frames(frames[i:i + BATCH]) for i in range(0, len(frames), BATCH)])
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(frames), BATCH):
                chunk = list(frames[i:i + BATCH])
                if self.kind == "transformers":
                    pixels = self._processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
                    features = self._model.get_image_features(pixel_values=pixels)
                    features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
                else:
                    from PIL import Image

                    pixels = torch.stack([self._preprocess(Image.fromarray(f)) for f in chunk]).to(self.device)
                    features = self._model.encode_image(pixels)
                out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def texts(self, prompts: list[str]) -> np.ndarray:
        """Text features [N, D] of ``prompts``, each row L2 norm 1 (longer prompts are cut to the tower's
        context)."""
        if not self.has_text:
            raise ValueError("wan-clip has no text tower; give --clip a transformers CLIP folder or an open_clip "
                             "model.")
        torch = self._torch
        with torch.no_grad():
            if self.kind == "transformers":
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    try:
                        self._tokenizer = AutoTokenizer.from_pretrained(self._folder)
                    except (OSError, ValueError) as error:
                        raise ValueError(f"the CLIP folder {self._folder} has no tokenizer ({error}); save the "
                                         f"model's tokenizer into it.") from error
                length = self._model.config.text_config.max_position_embeddings
                tokens = self._tokenizer(prompts, padding=True, truncation=True, max_length=length,
                                         return_tensors="pt").to(self.device)
                features = self._model.get_text_features(input_ids=tokens["input_ids"],
                                                         attention_mask=tokens["attention_mask"])
                features = getattr(features, "pooler_output", features)
            else:
                features = self._model.encode_text(self._tokenizer(prompts).to(self.device))
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def load_clip(weights: BenchWeights) -> ClipFeatures:
    """The CLIP ``weights`` names, loaded once per (model, path, device) and shared; ValueError when the weights it
    points at do not exist."""
    key = (weights.clip, weights.clip_path, _device(weights))
    if key not in _LOADED:
        _LOADED[key] = ClipFeatures(weights)
    return _LOADED[key]


# ------------------------------------------------------------------------------------------------- views


def subject_view(frame: np.ndarray) -> np.ndarray:
    """The centre square of ``frame`` [H, W, 3], side :data:`SUBJECT_SIDE` of the short side."""
    h, w = frame.shape[:2]
    side = max(1, round(SUBJECT_SIDE * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top:top + side, left:left + side]


def background_view(frame: np.ndarray) -> np.ndarray:
    """``frame`` [H, W, 3] with its subject square greyed out, squeezed to a square of its short side."""
    import cv2

    h, w = frame.shape[:2]
    side = max(1, round(SUBJECT_SIDE * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    out = frame.copy()
    out[top:top + side, left:left + side] = 128
    short = min(h, w)
    return cv2.resize(out, (short, short), interpolation=cv2.INTER_AREA)


def consistency(features: np.ndarray) -> dict[str, float]:
    """VBench's consistency of per-frame unit features [T, D] (T >= 2): ``value`` the mean over t >= 1 of the
    average of the cosines (clipped at 0) to the first and to the previous frame; with the means of each cosine
    and the lowest one."""
    f = features.astype(np.float64)
    to_first = f[1:] @ f[0]
    to_previous = np.einsum("td,td->t", f[1:], f[:-1])
    value = float(np.mean((np.maximum(to_first, 0) + np.maximum(to_previous, 0)) / 2))
    return {"value": min(max(value, 0.0), 1.0), "cos_to_first_mean": float(to_first.mean()),
            "cos_to_previous_mean": float(to_previous.mean()), "cos_min": float(min(to_first.min(),
                                                                                    to_previous.min()))}


class _ClipDimension(Dimension):
    needs_text = False

    def __init__(self, weights: BenchWeights | None = None):
        super().__init__(weights)
        self._clip: ClipFeatures | None = None

    def available(self) -> str | None:
        return clip_unavailable(self.weights, text=self.needs_text)

    def setup(self) -> None:
        if self._clip is None and self.available() is None:
            self._clip = load_clip(self.weights)


class _Consistency(_ClipDimension):
    needs = ("CLIP weights",)
    view = staticmethod(subject_view)

    def score(self, video: Video) -> Score:
        missing = self.available()
        if missing:
            return Score(None, not_measured=missing)
        frames = video.analysis_frames()
        if len(frames) < 2:
            return Score(None, not_applicable="a single frame: nothing to compare over time")
        self.setup()
        features = self._clip.images(np.stack([self.view(f) for f in frames]))
        measured = consistency(features)
        details = {k: round(v, 6) for k, v in measured.items() if k != "value"}
        return Score(round(measured["value"], 6), details={**details, "frames": len(frames), "clip": self._clip.kind})


class SubjectConsistency(_Consistency):
    """VBench subject consistency on the centre square's CLIP features (see the module docstring), in [0, 1]."""

    name = "subject_consistency"
    stands_for = "VBench subject consistency (CLIP features of the centre square)"
    view = staticmethod(subject_view)


class BackgroundConsistency(_Consistency):
    """VBench background consistency on CLIP features of the frame with its centre greyed out, in [0, 1]."""

    name = "background_consistency"
    stands_for = "VBench background consistency (CLIP features of the frame around its centre)"
    view = staticmethod(background_view)


class PromptAlignment(_ClipDimension):
    """CLIPScore of the prompt against the video's key frames: ``min(1, 2.5 * max(0, mean cos))``."""

    name = "prompt_alignment"
    stands_for = "VBench overall consistency (CLIP text-video similarity)"
    needs = ("prompt", "CLIP weights with a text tower")
    needs_text = True

    def score(self, video: Video) -> Score:
        missing = self.available()
        if missing:
            return Score(None, not_measured=missing)
        if not video.prompt or not video.prompt.strip():
            return Score(None, not_applicable="no prompt to compare the video with")
        from openwan.curate.embed import key_frame_indices

        self.setup()
        frames = video.analysis_frames()
        picks = key_frame_indices(len(frames), PROMPT_FRAMES)
        cosines = self._clip.images(frames[picks]).astype(np.float64) @ self._clip.texts([video.prompt])[0]
        cos = float(cosines.mean())
        value = min(1.0, CLIPSCORE_WEIGHT * max(0.0, cos))
        return Score(round(value, 6), details={"cos_mean": round(cos, 6), "cos_min": round(float(cosines.min()), 6),
                                               "cos_max": round(float(cosines.max()), 6), "frames": picks,
                                               "clip": self._clip.kind})


__all__ = ["SubjectConsistency", "BackgroundConsistency", "PromptAlignment", "ClipFeatures", "load_clip",
           "clip_unavailable", "consistency", "subject_view", "background_view", "NO_CLIP"]
