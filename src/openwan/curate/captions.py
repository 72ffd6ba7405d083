"""Captions: keep the captions the input gives, or write several per clip with a vision-language model.

Three modes (``captions.mode``):

- ``keep``: the caption from the input manifest or a sidecar file (:func:`sidecar_caption`) is kept; a clip without
  one gets ``""`` and ``captions_missing`` True (a reason only when ``require_caption`` is set).
- ``vlm``: a local transformers image-text-to-text model folder (a Qwen2.5-VL, Qwen2-VL, LLaVA, ... folder with its
  processor and chat template) sees the clip's key frames; greedy decoding.
- ``endpoint``: an OpenAI-compatible ``/chat/completions`` server (vLLM, SGLang, OpenAI, ...) gets the key frames as
  base64 JPEG ``image_url`` parts; greedy (temperature 0).

Each clip gets one caption per style (:data:`STYLE_INSTRUCTIONS`: a length short/medium/long times a tone
plain/formal/poetic), so a model trained on them follows prompts phrased the way users phrase them (the Wan paper's
prompt alignment, section 4.5). OCR text found in the clip goes into the request ("Text visible in the video: ..."),
as the paper does. A request that fails (HTTP error, timeout, an answer that is not a chat completion, an empty
caption) becomes a reason and a ``captions_error`` value for that clip; it never stops the run.

Values: ``caption`` (the primary style's text, or the input's caption when ``keep_existing``), ``captions_styles``
and ``captions_texts`` (parallel lists, one entry per caption), ``captions_missing``, ``captions_model``,
``captions_error`` ("" when none).
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openwan.curate.base import ClipFrames, Resources, StageOutput
from openwan.endpoints import EndpointError, chat_completion

LENGTHS = ("short", "medium", "long")
TONES = ("plain", "formal", "poetic")

LENGTH_INSTRUCTIONS = {
    "short": "Write one short sentence of at most 15 words naming the main subject and what it does.",
    "medium": "Write two or three sentences (about 40 to 60 words) covering the main subjects, their actions and "
              "motion, the setting, and the camera movement.",
    "long": "Write one detailed paragraph of about 100 to 150 words covering the subjects and their appearance, "
            "their actions and motion in order, the setting and background, the lighting and colours, the shot "
            "type and the camera movement.",
}
TONE_INSTRUCTIONS = {
    "plain": "Use plain everyday words, the way a person types a prompt.",
    "formal": "Use precise, formal, objective language.",
    "poetic": "Use vivid, poetic, evocative language, without inventing anything that is not in the video.",
}
STYLE_INSTRUCTIONS: dict[str, str] = {
    f"{length}-{tone}": f"{LENGTH_INSTRUCTIONS[length]} {TONE_INSTRUCTIONS[tone]}"
    for length in LENGTHS for tone in TONES
}
"""Style name ("<length>-<tone>") -> the instruction sent for it: the length's sentence, then the tone's."""

TASK_PROMPT = (
    "The images are {count} frames sampled in order from a video clip of {duration:.1f} seconds. Describe the video "
    "as a caption for training a text-to-video model: what is seen and what happens, including motion and camera "
    "movement. Describe only what is visible, as one continuous scene, without mentioning frames or images."
)
OCR_PROMPT = "Text visible in the video: {text}"
ANSWER_PROMPT = "Answer with the caption only."

DEFAULT_STYLES = ("short-plain", "medium-plain", "long-plain", "short-formal", "medium-poetic")


@dataclass(frozen=True)
class CaptionConfig:
    """The ``captions`` section. ``max_new_tokens`` is per length (short, medium, long); ``primary`` is the style
    whose text becomes ``caption`` ("" = the first of ``styles``); ``api_key`` "" reads the environment variable
    OPENAI_API_KEY; ``retries`` are extra tries of a failed request, ``retry_wait_s`` seconds apart (doubling)."""

    enabled: bool = True
    mode: Literal["keep", "vlm", "endpoint"] = "keep"
    require_caption: bool = False
    keep_existing: bool = True
    styles: tuple[str, ...] = DEFAULT_STYLES
    primary: str = ""
    frames: int = 4
    use_ocr: bool = True
    max_new_tokens: tuple[int, int, int] = (40, 120, 300)
    model_dir: str = ""
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    url: str = ""
    model: str = "default"
    api_key: str = ""
    timeout_s: float = 120.0
    retries: int = 2
    retry_wait_s: float = 2.0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not self.styles:
            raise ValueError("captions.styles must name at least one style; choose from: "
                             f"{', '.join(STYLE_INSTRUCTIONS)}.")
        for style in self.styles:
            if style not in STYLE_INSTRUCTIONS:
                raise ValueError(f"captions.styles has unknown style {style!r}; choose from: "
                                 f"{', '.join(STYLE_INSTRUCTIONS)}.")
        if len(set(self.styles)) != len(self.styles):
            raise ValueError(f"captions.styles names a style twice: {', '.join(self.styles)}.")
        if self.primary and self.primary not in self.styles:
            raise ValueError(f"captions.primary must be one of captions.styles ({', '.join(self.styles)}) or \"\"; "
                             f"got {self.primary!r}.")
        if self.frames < 1:
            raise ValueError(f"captions.frames must be at least 1; got {self.frames}.")
        if len(self.max_new_tokens) != 3 or min(self.max_new_tokens) < 1:
            raise ValueError("captions.max_new_tokens must be three positive token counts (short, medium, long); "
                             f"got {self.max_new_tokens}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"captions.device must be cpu, cuda or cuda:N; got {self.device!r}.")
        if self.timeout_s <= 0:
            raise ValueError(f"captions.timeout_s must be positive; got {self.timeout_s}.")
        if self.retries < 0 or self.retry_wait_s < 0:
            raise ValueError(f"captions.retries and captions.retry_wait_s must be >= 0; got {self.retries} and "
                             f"{self.retry_wait_s}.")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"captions.jpeg_quality must be in [1, 100]; got {self.jpeg_quality}.")
        if self.enabled and self.mode == "vlm" and not self.model_dir:
            raise ValueError("captions.mode is vlm but captions.model_dir is empty; give the folder of a "
                             "transformers vision-language model (e.g. Qwen2.5-VL-7B-Instruct).")
        if self.enabled and self.mode == "endpoint" and not self.url.startswith(("http://", "https://")):
            raise ValueError("captions.mode is endpoint but captions.url is not an http(s) URL; give the server's "
                             f"OpenAI-compatible base (e.g. http://localhost:8000/v1); got {self.url!r}.")

    @property
    def primary_style(self) -> str:
        """The style whose text becomes the clip's ``caption``."""
        return self.primary or self.styles[0]

    def tokens_for(self, style: str) -> int:
        """The most new tokens a caption of ``style`` may take."""
        return self.max_new_tokens[LENGTHS.index(style.split("-")[0])]


def sidecar_caption(source_path: str | Path) -> str | None:
    """The caption in ``<video>.txt`` (e.g. ``a.mp4.txt``) or else ``<video stem>.txt`` (``a.txt``) beside the
    video, stripped (possibly ""); None when neither exists. ValueError naming the file when it is not UTF-8."""
    source = Path(source_path)
    for path in (source.with_name(source.name + ".txt"), source.with_suffix(".txt")):
        if path == source or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            return data.decode("utf-8-sig").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"caption file {path} is not UTF-8 (byte 0x{data[err.start]:02x} at offset "
                             f"{err.start}); save it as UTF-8.") from None
    return None


def caption_request(style: str, count: int, duration: float, ocr_text: str = "") -> str:
    """The text of one caption request: the task, the style's instruction, the OCR text when there is any."""
    parts = [TASK_PROMPT.format(count=count, duration=duration), STYLE_INSTRUCTIONS[style]]
    if ocr_text.strip():
        parts.append(OCR_PROMPT.format(text=" ".join(ocr_text.split())))
    parts.append(ANSWER_PROMPT)
    return "\n".join(parts)


def key_frames(frames: ClipFrames, count: int) -> np.ndarray:
    """``count`` frames (uint8 [N, H, W, 3]) spread evenly over the clip, first and last included; all of them
    when the clip has fewer."""
    index = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    return frames.frames[index]


def jpeg_data_url(frame: np.ndarray, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of one uint8 [H, W, 3] RGB frame."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class CaptionError(RuntimeError):
    """A caption request that failed; the message says why (it becomes the clip's reason and ``captions_error``)."""


def _clean(text: str) -> str:
    text = text.strip().strip('"').strip()
    if not text:
        raise CaptionError("the model returned an empty caption")
    return text


class CaptionStage:
    """Writes each kept clip's captions (see the module's docstring for the modes and the values)."""

    name = "captions"

    def __init__(self, cfg: CaptionConfig) -> None:
        self.cfg = cfg
        gpu = cfg.mode == "vlm" and cfg.device.startswith("cuda")
        self.resources = Resources(num_cpus=1.0, num_gpus=1.0 if gpu else 0.0)
        self._model = None
        self._processor = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Loads the vision-language model once (vlm mode); nothing to load in the other modes."""
        if self.cfg.mode != "vlm" or self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(self.cfg.model_dir).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"captions.model_dir {folder} is not a transformers model folder (no config.json); "
                             "give the folder of a downloaded vision-language model such as Qwen2.5-VL-7B-Instruct.")
        try:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        except ImportError as err:
            raise ValueError(f"the processor of captions.model_dir {folder} needs a package that is not installed: "
                             f"{' '.join(str(err).split())[:300]}") from None
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"captions.model_dir {folder} has no chat template (chat_template.jinja or "
                             "chat_template.json); give an instruction-tuned model's folder.")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self.cfg.dtype, torch.bfloat16 if self.cfg.device.startswith("cuda") else torch.float32)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        self._processor, self._model = processor, model.to(self.cfg.device).eval()

    @property
    def model_name(self) -> str:
        """What wrote the captions: the model folder's name, the endpoint's model@url, or "" when kept."""
        if self.cfg.mode == "vlm":
            return Path(self.cfg.model_dir).name
        if self.cfg.mode == "endpoint":
            return f"{self.cfg.model}@{self.cfg.url}"
        return ""

    # ------------------------------------------------------------------------------------------- per clip
    def __call__(self, clip: dict[str, Any], frames: ClipFrames) -> StageOutput:
        """The clip's caption columns; a failed request or a required, missing caption is a reason."""
        given = str(clip.get("caption") or "").strip()
        generated: list[tuple[str, str]] = []
        error = ""
        if self.cfg.mode != "keep":
            try:
                generated = self.generate_captions(frames, float(clip.get("duration") or 0.0),
                                         str(clip.get("ocr_text") or "") if self.cfg.use_ocr else "")
            except CaptionError as err:
                error = str(err)
        keep_given = bool(given) and (self.cfg.keep_existing or self.cfg.mode == "keep")
        caption = given if keep_given else dict(generated).get(self.cfg.primary_style, "")
        listed = ([("given", given)] if given else []) + generated
        values = {"caption": caption, "captions_styles": [s for s, _ in listed],
                  "captions_texts": [t for _, t in listed], "captions_missing": not caption,
                  "captions_model": self.model_name, "captions_error": error}
        reasons = []
        if error:
            reasons.append(f"captioning failed ({error}); the clip has no generated captions.")
        elif not caption and self.cfg.require_caption:
            reasons.append("the clip has no caption (none in the input or a sidecar file, and captions.mode is "
                           f"{self.cfg.mode}) while captions.require_caption is set.")
        return StageOutput(values=values, reasons=reasons)

    def generate_captions(self, frames: ClipFrames, duration: float = 0.0, ocr_text: str = "") -> list[tuple[str, str]]:
        """(style, caption) for each configured style, from the clip's key frames (vlm or endpoint mode);
        ``duration`` in seconds (0: from the frames' times). CaptionError on the first request that fails."""
        if len(frames) == 0:
            raise CaptionError("the clip has no decoded frames to caption")
        images = key_frames(frames, self.cfg.frames)
        duration = duration or float(frames.times[-1] - frames.times[0] + 1 / frames.fps)
        if self.cfg.mode == "vlm":
            from PIL import Image

            visual, generate = [Image.fromarray(f) for f in images], self._generate_local
        else:
            visual, generate = [jpeg_data_url(f, self.cfg.jpeg_quality) for f in images], self._generate_endpoint
        out = []
        for style in self.cfg.styles:
            request = caption_request(style, len(images), duration, ocr_text)
            try:
                out.append((style, _clean(generate(visual, request, self.cfg.tokens_for(style)))))
            except CaptionError as err:
                raise CaptionError(f"style {style}: {err}") from None
        return out

    def _generate_local(self, images: list, request: str, max_new_tokens: int) -> str:
        import torch

        self.setup()
        messages = [{"role": "user", "content": [*({"type": "image"} for _ in images),
                                                 {"type": "text", "text": request}]}]
        prompt = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self._processor(text=prompt, images=images, return_tensors="pt")
        dtype = next(self._model.parameters()).dtype
        inputs = {k: v.to(self.cfg.device, dtype=dtype if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        return self._processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def _generate_endpoint(self, image_urls: list[str], request: str, max_new_tokens: int) -> str:
        content = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
        content.append({"type": "text", "text": request})
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": max_new_tokens, "seed": 0}
        try:
            return chat_completion(self.cfg.url, body, self.cfg.api_key or os.environ.get("OPENAI_API_KEY", ""),
                                   self.cfg.timeout_s, self.cfg.retries, self.cfg.retry_wait_s)
        except EndpointError as err:
            raise CaptionError(str(err)) from None


__all__ = ["CaptionConfig", "CaptionStage", "CaptionError", "STYLE_INSTRUCTIONS", "DEFAULT_STYLES",
           "sidecar_caption", "caption_request", "key_frames", "jpeg_data_url"]
