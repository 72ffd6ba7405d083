"""`openwan generate --lora` applies LoRA files; `--prompt-extend` rewrites prompts or falls back with a warning."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from safetensors.torch import load_file

from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.pipelines.prompt_extend import extend_prompt
from openwan.train.lora import add_lora, save_lora
from tiny import tiny_components

ARGS = ["--prompt", "a cat", "--frame-num", "5", "--sample-steps", "2", "--size", "32*32"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_release(tmp_path_factory.mktemp("rel") / "tiny", **tiny_components("tiny"))


def _latents(release, tmp_path, *extra):
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.safetensors"
    assert main(["generate", "--ckpt-dir", str(release), *ARGS, *extra, "--save-file", str(out.with_suffix(".mp4")),
                 "--save-latents", str(out)]) == 0
    return load_file(out)["latents"]


def test_lora_changes_the_result_and_fusing_keeps_it(release, tmp_path):
    from openwan.models import WanDiT

    dit = add_lora(WanDiT.from_pretrained(release), rank=4, alpha=4)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    lora = save_lora(dit, tmp_path / "style.safetensors")
    base = _latents(release, tmp_path)
    with_lora = _latents(release, tmp_path, "--lora", str(lora))
    fused = _latents(release, tmp_path, "--lora", f"{lora}:1.0", "--fuse-lora")
    half = _latents(release, tmp_path, "--lora", f"{lora}:0.5")
    assert (with_lora - base).abs().max() > 1e-3 * base.abs().max()
    torch.testing.assert_close(fused, with_lora, rtol=1e-4, atol=1e-5)
    assert (half - with_lora).abs().max() > 1e-4  # the scale is honoured


class _Endpoint(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 — the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        answer = {"choices": [{"message": {"content": "  A fluffy grey cat sits by a sunny window.  "}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_prompt_extension_with_an_openai_compatible_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    server.requests = []
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        assert extend_prompt("a cat", url, model="m") == "A fluffy grey cat sits by a sunny window."
    finally:
        thread.join(timeout=10)
        server.server_close()
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["messages"][-1]["content"] == "a cat"


def test_prompt_extension_failures_keep_the_prompt(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert extend_prompt("a cat", str(tmp_path / "no-model")) == "a cat"
        assert extend_prompt("a cat", "http://127.0.0.1:9/v1") == "a cat"  # nothing listens on the discard port
        empty = tmp_path / "model"
        empty.mkdir()
        assert extend_prompt("a cat", str(empty)) == "a cat"  # a folder without a model
    assert caplog.text.count("keeping the original prompt") == 3


def test_cli_prompt_extend_failure_still_generates(release, tmp_path, capsys):
    code = main(["generate", "--ckpt-dir", str(release), *ARGS, "--prompt-extend", str(tmp_path / "none"),
                 "--save-file", str(tmp_path / "x.mp4")])
    assert code == 0 and (tmp_path / "x.mp4").is_file()
    assert "extended prompt: a cat" in capsys.readouterr().out
