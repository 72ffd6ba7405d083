"""apply_accelerations on a tiny pipeline: what it applies and reports, and bad requests refused before any change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openwan.models.layers import get_attention_backend, set_attention_backend
from openwan.pipelines import WanPipeline
from openwan.runtime.accel import apply_accelerations, describe
from openwan.runtime.compile import cpu_compiler_problem, is_compiled
from tiny import tiny_components


@pytest.fixture
def pipe():
    yield WanPipeline(**tiny_components("tiny"))
    set_attention_backend("sdpa")


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v for m in ("dit", "text_encoder") for k, v in getattr(pipe, m).state_dict().items()}


def plain(state: dict[str, torch.Tensor]) -> bool:
    return all(type(v) in (torch.Tensor, nn.Parameter) for v in state.values())


@pytest.mark.parametrize("request_, message", [
    (dict(quantize="int4"), "unknown quantization 'int4'; choose one of int8, fp8"),
    (dict(quantize="int8", attention="flash"), "flash"),  # no flash-attn / no CUDA here: nothing is quantized
    (dict(quantize="int8", attention="nope"), "unknown attention backend 'nope'"),
    (dict(quantize="int8", compile=True, compile_mode="fast"), "unknown compile mode 'fast'"),
])
def test_bad_requests_change_nothing(pipe, request_, message):
    before = snapshot(pipe)
    with pytest.raises(ValueError, match=message):
        apply_accelerations(pipe, **request_)
    after = snapshot(pipe)
    assert plain(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert get_attention_backend() == "sdpa" and not is_compiled(pipe.dit)


def test_half_precision_backends_refuse_a_float32_cpu_pipeline(pipe, monkeypatch):
    import openwan.runtime.accel as accel

    monkeypatch.setattr(accel, "attention_backend_problem", lambda name: None)  # as if flash-attn and CUDA were here
    with pytest.raises(ValueError, match="runs torch.float32 on cpu; use --attention sdpa there"):
        apply_accelerations(pipe, quantize="int8", attention="flash")
    assert plain(snapshot(pipe))


def test_streamed_dit_refuses_quantize_and_compile():
    pipe = WanPipeline(**tiny_components("tiny"), stream_blocks=True)
    for request_ in (dict(quantize="int8"), dict(compile=True)):
        with pytest.raises(ValueError, match="drop --stream-blocks"):
            apply_accelerations(pipe, **request_)


def test_quantize_twice_is_refused(pipe):
    apply_accelerations(pipe, quantize="int8", text_encoder=False)
    with pytest.raises(ValueError, match="the dit already holds Int8Tensor weights"):
        apply_accelerations(pipe, quantize="int8")
    assert plain(pipe.text_encoder.state_dict())  # the second call changed nothing


def test_report_names_what_was_applied(pipe):
    report = apply_accelerations(pipe, quantize="fp8", attention="math",
                                 compile=cpu_compiler_problem() is None)
    assert get_attention_backend() == "math" and report["attention"] == "math"
    assert report["quantize"]["dit"]["mode"] == "fp8" and report["quantize"]["dit"]["layers"] == 2 * 10
    assert report["compile"] == (["dit"] if cpu_compiler_problem() is None else [])
    assert is_compiled(pipe.dit) == bool(report["compile"])
    text = describe(report)
    assert "dit: 20 linears fp8" in text and "attention backend: math" in text


def test_generate_applies_the_flags_to_the_bundled_model(tmp_path, capsys):
    """openwan generate --quantize int8 --attention math: both applied and reported, the video written."""
    from openwan.cli.main import main

    out = tmp_path / "v.mp4"
    try:
        code = main(["generate", "--prompt", "a red circle moving to the right", "--frame-num", "5", "--sample-steps",
                     "2", "--quantize", "int8", "--attention", "math", "--save-file", str(out)])
    finally:
        set_attention_backend("sdpa")
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "dit: 40 linears int8" in printed and "attention backend: math" in printed, printed
