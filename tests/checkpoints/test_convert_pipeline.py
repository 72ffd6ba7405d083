"""`openwan convert` of a whole release, on the bundled two-expert model: the diffusers folder is a complete
pipeline that diffusers loads and that generates openwan's video, openwan reads it back unchanged, and
official -> diffusers -> official gives back every file's tensors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
from diffusers import WanImageToVideoPipeline as DiffusersWanImageToVideoPipeline
from diffusers import WanPipeline as DiffusersWanPipeline
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPVisionModel

from openwan.checkpoints import keymaps
from openwan.checkpoints.convert import Release, write_release
from openwan.checkpoints.encoders import CLIP_OFFICIAL_FILE
from openwan.checkpoints.io import read_state_dict
from openwan.checkpoints.release import save_release
from openwan.cli.main import main
from openwan.configs import DIT_PRESETS
from openwan.diffusion.schedule import sampling_sigmas, timesteps_from_sigmas
from openwan.models import WanDiT
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from tiny import randomize, tiny_components

PROMPT = "a red circle moving to the left"
STEPS = 4  # shift 3: t = 999, 899 (high-noise expert), 749, 499 (low-noise expert; the boundary is 0.75)
WEIGHT_SUFFIXES = (".safetensors", ".pth")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The bundled release converted to diffusers, and that folder converted back to the official layout."""
    root = tmp_path_factory.mktemp("convert")
    assert main(["convert", str(BUNDLED), str(root / "diffusers"), "--to", "diffusers"]) == 0
    assert main(["convert", str(root / "diffusers"), str(root / "official"), "--to", "official"]) == 0
    return root / "diffusers", root / "official"


@pytest.fixture(scope="module")
def bundled_video():
    return _generate(WanPipeline.from_pretrained(BUNDLED, device="cpu"))


def _noise() -> torch.Tensor:
    return torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(0))  # 5 frames, 64x64


def _generate(pipe: WanPipeline):
    return pipe(PROMPT, "", size=(64, 64), frame_num=5, sample_steps=STEPS, latents=_noise(), progress=False)


def _files(root) -> dict[str, object]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_diffusers_folder_is_a_complete_pipeline(folders):
    diffusers, _ = folders
    index = json.loads((diffusers / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert {k for k, v in index.items() if isinstance(v, list) and v[0]} == {
        "transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert index["boundary_ratio"] == json.loads((BUNDLED / "configuration.json").read_text())["boundary"]
    transformer = json.loads((diffusers / "transformer" / "config.json").read_text())
    assert transformer["text_len"] == 64  # no diffusers field: kept as an extra key
    scheduler = json.loads((diffusers / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["flow_shift"] == 3.0 and scheduler["prediction_type"] == "flow_prediction"

    pipe = DiffusersWanPipeline.from_pretrained(diffusers)  # extra config keys are tolerated
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.config.boundary_ratio == 0.75
    # `transformer` is the expert diffusers runs at t >= boundary: Wan2.2's high-noise expert.
    for name, expert in (("transformer", "high_noise_model"), ("transformer_2", "low_noise_model")):
        ours = load_file(BUNDLED / expert / "diffusion_pytorch_model.safetensors")
        theirs = keymaps.dit_diffusers_to_official(getattr(pipe, name).state_dict())
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours), name
    # The scheduler as configured spaces diffusers' σ grid from 1 where Wan's starts at 0.999: its timesteps are
    # Wan's or up to two above them (so at a boundary it may pick the high-noise expert one step longer).
    pipe.scheduler.set_timesteps(20)
    above = pipe.scheduler.timesteps - timesteps_from_sigmas(sampling_sigmas(20, 3.0, "unipc")[:-1])
    assert above.min() >= 0 and above.max() <= 2 and above.any()


@pytest.mark.slow
def test_openwan_generates_the_same_video_from_the_diffusers_folder(folders, bundled_video):
    diffusers, _ = folders
    pipe = WanPipeline.from_pretrained(diffusers, device="cpu")
    assert pipe.dit.cfg.text_len == 64 and pipe.boundary == 0.75
    out = _generate(pipe)
    assert torch.equal(out.latents, bundled_video.latents) and torch.equal(out.video, bundled_video.video)


@pytest.mark.slow
def test_diffusers_generates_what_openwan_generates(folders, bundled_video):
    """diffusers' WanPipeline on the converted folder, given Wan's σ grid (its own is spaced from σ = 1, see
    test_the_diffusers_folder_is_a_complete_pipeline) and prompts padded to text_len, makes openwan's video."""
    diffusers, _ = folders
    pipe = DiffusersWanPipeline.from_pretrained(diffusers)
    wan_grid = np.linspace(float(np.float32(0.999)), 0.0, STEPS + 1)[:-1]  # diffusers applies flow_shift to it
    set_timesteps = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda n, device=None: set_timesteps(sigmas=wan_grid, device=device)
    text_len = pipe.transformer.config["text_len"]
    video = pipe(prompt=PROMPT, negative_prompt="", height=64, width=64, num_frames=5, num_inference_steps=STEPS,
                 guidance_scale=1.5, latents=_noise()[None], max_sequence_length=text_len,
                 output_type="pt").frames[0].permute(0, 2, 3, 1)  # [T, H, W, 3] in [0, 1]
    assert torch.equal(pipe.scheduler.timesteps, timesteps_from_sigmas(sampling_sigmas(STEPS, 3.0, "unipc")[:-1]))
    diff = (video - bundled_video.video).abs().max().item()
    print(f"diffusers vs openwan: video max abs diff {diff:.2e}")
    # float32 on CPU; the two implementations order their sums differently (measured 3.1e-5 on videos in [0, 1]).
    assert diff <= 1e-4


@pytest.mark.slow
def test_official_diffusers_official_gives_back_every_file(folders, bundled_video):
    _, back = folders
    ours, theirs = _files(BUNDLED), _files(back)
    assert theirs.keys() == ours.keys()  # Wan2.1_VAE.json (the latent statistics) included
    for name, path in ours.items():
        if name.endswith(WEIGHT_SUFFIXES):
            a, b = read_state_dict(path), read_state_dict(theirs[name])
            assert a.keys() == b.keys(), name
            assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), name
        elif name.endswith(".json") and "umt5" not in name:
            assert json.loads(path.read_text()) == json.loads(theirs[name].read_text()), name
        else:
            assert path.read_bytes() == theirs[name].read_bytes(), name
    out = _generate(WanPipeline.from_pretrained(back, device="cpu"))
    assert torch.equal(out.video, bundled_video.video)


def test_a_single_dit_release_converts_both_ways(tmp_path):
    parts = tiny_components("tiny")
    src = save_release(tmp_path / "src", **parts)
    assert main(["convert", str(src), str(tmp_path / "d"), "--to", "diffusers", "--flow-shift", "5"]) == 0
    index = json.loads((tmp_path / "d" / "model_index.json").read_text())
    assert index["boundary_ratio"] is None and index["transformer_2"] == [None, None]
    pipe = DiffusersWanPipeline.from_pretrained(tmp_path / "d")
    assert pipe.transformer_2 is None and pipe.scheduler.config.flow_shift == 5.0
    video = tmp_path / "out.mp4"
    assert main(["generate", "--ckpt-dir", str(tmp_path / "d"), "--prompt", "a cat", "--size", "32*32",
                 "--frame-num", "5", "--sample-steps", "2", "--save-file", str(video)]) == 0
    assert video.is_file()
    assert main(["convert", str(tmp_path / "d"), str(tmp_path / "back"), "--to", "official"]) == 0
    assert _files(tmp_path / "back").keys() == _files(src).keys()
    back = WanDiT.from_pretrained(tmp_path / "back")
    assert back.cfg == parts["dit"].cfg
    assert all(torch.equal(v, parts["dit"].state_dict()[k]) for k, v in back.state_dict().items())


def test_an_i2v_release_carries_its_image_encoder(tmp_path):
    parts = tiny_components("tiny-i2v")
    src = save_release(tmp_path / "src", **parts)
    assert main(["convert", str(src), str(tmp_path / "d"), "--to", "diffusers"]) == 0
    pipe = DiffusersWanImageToVideoPipeline.from_pretrained(tmp_path / "d")
    assert isinstance(pipe.image_encoder, CLIPVisionModel) and isinstance(pipe.image_processor, CLIPImageProcessor)
    assert pipe.image_processor.crop_size == {"height": 224, "width": 224}
    assert main(["convert", str(tmp_path / "d"), str(tmp_path / "back"), "--to", "official"]) == 0
    ours, theirs = _files(src), _files(tmp_path / "back")
    assert theirs.keys() == ours.keys()
    for name in (n for n in ours if n.endswith(WEIGHT_SUFFIXES)):
        a, b = read_state_dict(ours[name]), read_state_dict(theirs[name])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # openwan runs the diffusers folder as it runs the release.
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    videos = [WanPipeline.from_pretrained(root, device="cpu")("a cat", task="i2v", image=image, size=(32, 32),
                                                              frame_num=5, sample_steps=2, latents=noise,
                                                              progress=False).video
              for root in (src, tmp_path / "d")]
    assert torch.equal(*videos)


def test_the_clip_text_tower_is_said_to_stay_behind(tmp_path, caplog):
    src = save_release(tmp_path / "src", **tiny_components("tiny-i2v"))
    clip = src / CLIP_OFFICIAL_FILE
    visual = {k: v.clone() for k, v in read_state_dict(clip).items()}  # not views of the file rewritten below
    full = {**visual, "textual.token_embedding.weight": torch.zeros(4, 2), "log_scale": torch.ones(())}
    torch.save(full, clip)  # as the release's file: the whole open-clip model
    with caplog.at_level(logging.WARNING, logger="openwan.checkpoints.convert"):
        assert main(["convert", str(src), str(tmp_path / "d"), "--to", "diffusers"]) == 0
    assert "text tower and projection head are not carried" in caplog.text
    config = tmp_path / "d" / "image_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "layer_norm_eps": 1e-6}))
    with caplog.at_level(logging.WARNING, logger="openwan.checkpoints.convert"):
        assert main(["convert", str(tmp_path / "d"), str(tmp_path / "back"), "--to", "official"]) == 0
    assert "layer_norm_eps=1e-06 is not carried" in caplog.text  # the official CLIP file has no config
    back = read_state_dict(tmp_path / "back" / CLIP_OFFICIAL_FILE)
    assert back.keys() == {k for k in full if k.startswith("visual.")}


def test_a_conversion_says_what_it_cannot_carry(tmp_path, caplog, capsys):
    dit = randomize(WanDiT(DIT_PRESETS["tiny"]))
    bare = tmp_path / "bare"
    write_release(_only_dit(dit), bare, "official")
    with caplog.at_level(logging.WARNING, logger="openwan.checkpoints.convert"):
        assert main(["convert", str(bare), str(tmp_path / "d"), "--to", "diffusers"]) == 0
    said = caplog.text
    assert "has no VAE" in said and "has no umT5 text encoder" in said and "has no tokenizer" in said
    index = json.loads((tmp_path / "d" / "model_index.json").read_text())
    assert index["vae"] == index["text_encoder"] == index["tokenizer"] == [None, None]

    windowed = _only_dit(dit)
    windowed.dits[0] = (dit.cfg.replace(window_size=(4, 4)), dit.state_dict())  # as a config.json may say
    write_release(windowed, tmp_path / "windowed", "official")
    assert main(["convert", str(tmp_path / "windowed"), str(tmp_path / "w"), "--to", "diffusers"]) == 2
    assert "local window" in capsys.readouterr().err
    with pytest.raises(ValueError, match="two experts but says nowhere where they meet"):
        write_release(_only_dit(dit, dit), tmp_path / "two", "diffusers")
    # A transformers umT5 config the official file (which has none) cannot state.
    parts = tiny_components("tiny")
    config = parts["text_encoder"].config
    config.relative_attention_max_distance = 64
    release = _only_dit(dit)
    release.text_encoder = (config, parts["text_encoder"].state_dict())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="openwan.checkpoints.convert"):
        write_release(release, tmp_path / "umt5", "official")
    assert "relative_attention_max_distance=64 is not carried" in caplog.text


def _only_dit(*dits) -> Release:
    return Release(dits=[(d.cfg, d.state_dict()) for d in dits], boundary=None, flow_shift=None, vae=None,
                   text_encoder=None, tokenizer=None, source=BUNDLED)


def test_diffusers_reads_a_transformer_config_with_text_len(folders):
    diffusers, _ = folders
    model = WanTransformer3DModel.from_pretrained(diffusers / "transformer")
    assert model.config["text_len"] == 64  # kept in the config diffusers loads, though it does not use it
