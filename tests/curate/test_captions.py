"""Captions: kept and sidecar captions, a tiny random-weight VLM loaded from its folder, and a real local HTTP
endpoint that checks what it is sent (frames as JPEGs, the OCR text) and fails in the ways servers fail."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from curate.footage import footage, write_video
from openwan.configio import parse
from openwan.curate.base import ClipFrames
from openwan.curate.captions import (
    DEFAULT_STYLES,
    STYLE_INSTRUCTIONS,
    CaptionConfig,
    CaptionStage,
    key_frames,
    sidecar_caption,
)

OCR = "GRAND OPENING 50% OFF"


def _frames(count: int = 16) -> ClipFrames:
    """Real footage (bikes) at the analysis rate: 8 fps, short side 64."""
    frames = footage("bikes", 0, count * 3, size=(160, 64))[::3]
    return ClipFrames(frames, np.arange(len(frames)) / 8.0, 8.0, (640, 272))


def _clip(**extra) -> dict:
    return {"clip_id": "c0", "source": "/data/bikes.mp4", "start": 0.0, "end": 2.0, "duration": 2.0, "caption": "",
            **extra}


# ----------------------------------------------------------------------------------------------- config


def test_config_parses_from_yaml_and_refuses_bad_fields():
    cfg = parse(CaptionConfig, {"mode": "endpoint", "url": "http://localhost:8000/v1",
                                "styles": ["long-poetic", "short-plain"], "max_new_tokens": [8, 16, 32]}, "captions")
    assert cfg.styles == ("long-poetic", "short-plain") and cfg.primary_style == "long-poetic"
    assert cfg.tokens_for("long-poetic") == 32 and cfg.tokens_for("short-plain") == 8
    assert set(STYLE_INSTRUCTIONS) == {f"{a}-{b}" for a in ("short", "medium", "long")
                                       for b in ("plain", "formal", "poetic")}
    assert len(set(STYLE_INSTRUCTIONS.values())) == 9 and set(DEFAULT_STYLES) <= set(STYLE_INSTRUCTIONS)
    bad = [({"styles": ["tiny-plain"]}, "unknown style 'tiny-plain'"),
           ({"primary": "long-poetic"}, "captions.primary"),
           ({"mode": "vlm"}, "captions.model_dir is empty"),
           ({"mode": "endpoint", "url": "localhost:8000"}, "not an http(s) URL"),
           ({"max_new_tokens": [8, 0, 9]}, "captions.max_new_tokens"),
           ({"device": "gpu"}, "captions.device"),
           ({"mode": "chatgpt"}, "must be one of: keep, vlm, endpoint")]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse(CaptionConfig, fields, "captions")
    assert CaptionStage(CaptionConfig(mode="vlm", model_dir="/m", device="cuda")).resources.num_gpus == 1.0
    assert CaptionStage(CaptionConfig()).resources.num_gpus == 0.0


# ----------------------------------------------------------------------------------------------- keep and sidecar


def test_keep_mode_keeps_given_captions_and_marks_missing_ones():
    stage = CaptionStage(CaptionConfig())
    stage.setup()
    frames = _frames(4)
    out = stage(_clip(caption="  Two cyclists ride past a red wall. "), frames)
    assert out.reasons == [] and out.values["caption"] == "Two cyclists ride past a red wall."
    assert out.values["captions_styles"] == ["given"] and out.values["captions_missing"] is False
    out = stage(_clip(), frames)
    assert out.reasons == [] and out.values["caption"] == "" and out.values["captions_missing"] is True
    assert out.values["captions_texts"] == [] and out.values["captions_error"] == ""
    json.dumps(out.values)  # JSON-able
    strict = CaptionStage(CaptionConfig(require_caption=True))
    reasons = strict(_clip(caption=None), frames).reasons
    assert len(reasons) == 1 and "no caption" in reasons[0] and "require_caption" in reasons[0]


def test_sidecar_captions_next_to_the_video(tmp_path):
    video = write_video(footage("carphone", 0, 8), tmp_path / "call.mp4")
    assert sidecar_caption(video) is None
    (tmp_path / "call.txt").write_text("A man talks on a phone.\n", encoding="utf-8")
    assert sidecar_caption(video) == "A man talks on a phone."
    (tmp_path / "call.mp4.txt").write_bytes("\ufeff Un homme téléphone dans une voiture. \n".encode())
    assert sidecar_caption(str(video)) == "Un homme téléphone dans une voiture."  # <video>.txt first, BOM dropped
    (tmp_path / "call.mp4.txt").write_bytes("Un homme t\u00e9l\u00e9phone.".encode("latin-1"))
    with pytest.raises(ValueError, match=r"call\.mp4\.txt is not UTF-8 \(byte 0xe9 at offset 10\)"):
        sidecar_caption(video)


# ----------------------------------------------------------------------------------------------- endpoint


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[dict, dict]] = []
        self.behaviour = ["ok"]  # one per request; the last one repeats

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 — the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        behaviour = server.behaviour[min(len(server.requests), len(server.behaviour) - 1)]
        server.requests.append((dict(self.headers), body))
        if behaviour == "slow":
            time.sleep(1.0)
            behaviour = "ok"
        if behaviour.isdigit():
            self.send_error(int(behaviour))
            return
        text = body["messages"][-1]["content"][-1]["text"]
        style = next(s for s, instruction in STYLE_INSTRUCTIONS.items() if instruction in text)
        content = ' "" ' if behaviour == "empty" else f' "A caption in style {style}." '
        data = (b"<html>not json" if behaviour == "garbage" else
                json.dumps({"choices": [{"message": {"content": content}}]}).encode())
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up waiting (the timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _decode_jpeg(url: str) -> np.ndarray:
    from PIL import Image

    head, data = url.split(",", 1)
    assert head == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


def test_endpoint_sends_the_key_frames_and_the_ocr_text(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    styles = ("short-plain", "long-poetic", "medium-formal")
    cfg = CaptionConfig(mode="endpoint", url=server.url, model="qwen2.5-vl-7b", styles=styles, primary="long-poetic",
                        max_new_tokens=(11, 22, 33), retry_wait_s=0)
    frames = _frames(16)
    stage = CaptionStage(cfg)
    stage.setup()
    out = stage(_clip(ocr_text=OCR), frames)
    assert out.reasons == [] and out.values["captions_error"] == ""
    assert out.values["captions_styles"] == list(styles)
    assert out.values["captions_texts"] == [f"A caption in style {s}." for s in styles]
    assert out.values["caption"] == "A caption in style long-poetic."
    assert out.values["captions_model"] == f"qwen2.5-vl-7b@{server.url}" and not out.values["captions_missing"]
    assert len(server.requests) == 3
    expected = key_frames(frames, 4)
    for (headers, body), style, tokens in zip(server.requests, styles, (11, 33, 22)):
        assert headers["Authorization"] == "Bearer sk-test-key"
        assert body["model"] == "qwen2.5-vl-7b" and body["temperature"] == 0 and body["max_tokens"] == tokens
        parts = body["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["image_url"] * 4 + ["text"]
        for part, frame in zip(parts, expected):
            image = _decode_jpeg(part["image_url"]["url"])
            assert image.shape == frame.shape
            assert np.abs(image.astype(int) - frame).mean() < 4  # the clip's own frames, in order
        text = parts[-1]["text"]
        assert f"Text visible in the video: {OCR}" in text and STYLE_INSTRUCTIONS[style] in text
        assert "4 frames" in text and "2.0 seconds" in text
    # without OCR text the request says nothing of text; a given caption stays the primary one
    server.requests.clear()
    out = stage(_clip(caption="Cyclists race downhill."), frames)
    assert "Text visible" not in server.requests[0][1]["messages"][0]["content"][-1]["text"]
    assert out.values["caption"] == "Cyclists race downhill." and out.values["captions_styles"][0] == "given"
    assert len(out.values["captions_texts"]) == 4


def test_endpoint_failures_become_the_clips_reasons(server):
    frames = _frames(4)

    def run(behaviour, retries=0, timeout_s=10.0, url=None, **cfg):
        server.requests.clear()
        server.behaviour = behaviour
        stage = CaptionStage(CaptionConfig(mode="endpoint", url=url or server.url, retries=retries,
                                           timeout_s=timeout_s, retry_wait_s=0, **cfg))
        return stage(_clip(), frames)

    out = run(["500"], retries=2)
    assert len(server.requests) == 3  # the first try and two more
    assert out.values["captions_error"].startswith("style short-plain: HTTP 500")
    assert "after 3 tries" in out.values["captions_error"]
    assert out.values["caption"] == "" and out.values["captions_texts"] == [] and out.values["captions_missing"]
    assert len(out.reasons) == 1 and out.reasons[0].startswith("captioning failed (style short-plain: HTTP 500")

    out = run(["404"], retries=2)
    assert len(server.requests) == 1 and "HTTP 404" in out.reasons[0]  # a client error is not tried again

    out = run(["garbage"])
    assert "something other than a chat completion" in out.values["captions_error"] and out.reasons

    out = run(["empty"])
    assert out.values["captions_error"] == "style short-plain: the model returned an empty caption" and out.reasons

    out = run(["slow"], timeout_s=0.2)
    assert "no answer from" in out.values["captions_error"] and out.reasons

    out = run(["503", "429", "ok"], retries=2)  # transient failures, then answers
    assert out.reasons == [] and len(out.values["captions_texts"]) == len(DEFAULT_STYLES)

    out = run(["ok", "ok", "500"], keep_existing=True)  # the third style fails: nothing generated is kept
    assert out.values["captions_texts"] == [] and "style long-plain: HTTP 500" in out.reasons[0]

    with socket_closed() as url:
        out = run(["ok"], url=url)
    assert "cannot reach" in out.values["captions_error"] and out.reasons


class socket_closed:  # noqa: N801 — used as a context manager
    """A URL on a port nothing listens on."""

    def __enter__(self) -> str:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------------------------- local VLM

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
             "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
             "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tiny_tokenizer(special: list[str]):
    """A byte-level BPE tokenizer trained offline on the style instructions, with ``special`` tokens: (the
    transformers tokenizer, {special token: id})."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(STYLE_INSTRUCTIONS.values()), trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    ids = {s: tok.token_to_id(s) for s in special}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"), ids


def _tiny_vlm(folder) -> None:
    """A random-weight LLaVA (CLIP vision tower, Qwen2 language model, hidden size 32, one layer each) with a
    byte-level BPE tokenizer trained here on the style instructions, its image processor and chat template,
    saved like a downloaded model folder. Built offline: nothing touches a hub."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer, ids = _tiny_tokenizer(_SPECIAL)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, chat_template=_TEMPLATE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 2048, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        image_token_id=ids["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vlm")
    _tiny_vlm(folder)
    return folder


def test_local_vlm_writes_one_caption_per_style_from_the_frames(tiny_vlm, monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    styles = ("short-plain", "medium-formal", "long-poetic")
    cfg = CaptionConfig(mode="vlm", model_dir=str(tiny_vlm), styles=styles, max_new_tokens=(6, 9, 12))
    stage = CaptionStage(cfg)
    stage.setup()
    stage.setup()  # idempotent
    prompts, pixels = [], []  # what the language model and the vision tower see first in each generate call
    stage._model.register_forward_pre_hook(lambda module, args, kwargs: prompts.append(kwargs["input_ids"][0])
                                           if "mm_encoder_outputs" in kwargs else None, with_kwargs=True)
    stage._model.model.vision_tower.register_forward_pre_hook(
        lambda module, args, kwargs: pixels.append(args[0] if args else kwargs["pixel_values"]), with_kwargs=True)
    frames = _frames(16)
    out = stage(_clip(ocr_text=OCR), frames)
    assert out.reasons == [] and out.values["captions_error"] == ""
    assert out.values["captions_styles"] == list(styles) and out.values["captions_model"] == tiny_vlm.name
    texts = out.values["captions_texts"]
    assert all(isinstance(t, str) and t for t in texts) and out.values["caption"] == texts[0]
    # the prompt of each style: the four key frames' image tokens, the style's instruction and the OCR text
    assert len(prompts) == len(pixels) == 3
    tokenizer = stage._processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for ids, pixel_values, style in zip(prompts, pixels, styles):
        prompt = tokenizer.decode(ids)
        assert STYLE_INSTRUCTIONS[style] in prompt and f"Text visible in the video: {OCR}" in prompt
        assert pixel_values.shape == (4, 3, 32, 32)
        assert int((ids == image_id).sum()) == 4 * 16  # 4x4 patches per frame (the class token is dropped)
    # the pixels are the clip's key frames: the processor on them gives the same tensor
    expected = stage._processor.image_processor(list(key_frames(frames, 4)), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixels[0].numpy(), expected.numpy(), atol=1e-6)
    # greedy: a fresh load gives the same captions; another clip's frames give other ones
    again = CaptionStage(cfg)
    assert again(_clip(ocr_text=OCR), frames).values == out.values
    other = ClipFrames(footage("bunny", 0, 16, size=(114, 64)), np.arange(16) / 8.0, 8.0, (1280, 720))
    assert stage(_clip(ocr_text=OCR), other).values["captions_texts"] != texts


def _tiny_qwen25_vl(folder) -> None:
    """A random-weight Qwen2.5-VL (hidden size 32, one layer in the vision tower and one in the language model)
    with a byte-level BPE tokenizer holding Qwen's vision tokens, Qwen's image and video processors and a chat
    template in Qwen's form, saved like a downloaded Qwen2.5-VL-Instruct folder. Needs torchvision (transformers'
    Qwen video processor imports it)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    tokenizer, ids = _tiny_tokenizer(special)
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}
    template = _TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=template)
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [0], "window_size": 56},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_a_qwen25_vl_folder_writes_captions(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("torchvision", reason="transformers' Qwen2.5-VL processor needs torchvision")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_qwen25_vl(tmp_path)
    styles = ("short-plain", "long-formal")
    cfg = CaptionConfig(mode="vlm", model_dir=str(tmp_path), styles=styles, max_new_tokens=(5, 5, 8))
    stage = CaptionStage(cfg)
    stage.setup()
    assert type(stage._model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    frames = _frames(16)
    out = stage(_clip(ocr_text=OCR), frames)
    assert out.reasons == [] and out.values["captions_styles"] == list(styles)
    assert all(out.values["captions_texts"]) and out.values["caption"] == out.values["captions_texts"][0]
    assert CaptionStage(cfg)(_clip(ocr_text=OCR), frames).values == out.values  # greedy


def test_vlm_folders_that_cannot_work_are_refused_before_any_clip(tmp_path, tiny_vlm):
    with pytest.raises(ValueError, match="not a transformers model folder"):
        CaptionStage(CaptionConfig(mode="vlm", model_dir=str(tmp_path))).setup()
    bare = tmp_path / "no-template"
    bare.mkdir()
    for path in tiny_vlm.iterdir():
        if path.name != "chat_template.jinja":
            (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="has no chat template"):
        CaptionStage(CaptionConfig(mode="vlm", model_dir=str(bare))).setup()


def test_a_qwen_vl_folder_without_torchvision_is_refused_naming_it(tmp_path):
    pytest.importorskip("transformers")
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: transformers' Qwen video processor loads")
    except ImportError:
        pass
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {"<unk>": 0, "<|image_pad|>": 1, "<|video_pad|>": 2}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))).save_pretrained(
        tmp_path)
    Qwen2VLImageProcessorPil().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
    with pytest.raises(ValueError, match="needs a package that is not installed.*Torchvision"):
        CaptionStage(CaptionConfig(mode="vlm", model_dir=str(tmp_path))).setup()
