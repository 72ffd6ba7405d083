"""Anchored streams: the stream's first latent frame (or an image's) kept clean ahead of every later window, what the
DiT is given then, a prompt switch re-anchoring on a fresh frame of the new prompt, bounded memory, resume, and
the refusals."""

from __future__ import annotations

import pytest
import torch

from openwan.data.video import resize_crop
from openwan.pipelines import WanPipeline
from openwan.pipelines.conditioning import to_model_range
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream, stream
from openwan.pipelines.stream_state import StreamDecoder
from tiny import tiny_components


@pytest.fixture(scope="module")
def tiny(one_thread):
    return WanPipeline(**tiny_components(), defaults=FAMILY_DEFAULTS["tiny"])  # 64x64, 20 steps


def _image() -> torch.Tensor:
    """A smooth 80x96 picture [1, H, W, 3] in [0, 1] (scaled and cropped to the stream's 64x64)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 80), torch.linspace(0, 1, 96), indexing="ij")
    return torch.stack([x, y, (x + y) / 2], dim=-1)[None]


def test_the_first_frame_out_becomes_the_anchor_every_later_window_leads_with(tiny):
    """Window 3 with an anchor: the staircase walks 2 groups; until frame 0 leaves, windows hold up to 2 frames; from
    then on every DiT call sees frame 0's clean latent first, at t 0, then at most 2 frames of the queue."""
    s = stream(tiny, "a red ball", window=3, steps_per_shift=2, anchor=True, seed=0)
    assert s.config.groups == 2 and s.sigmas.numel() == 5
    out: list[torch.Tensor] = []
    decode = s.decoder.decode
    s.decoder.decode = lambda z: (out.append(z.clone()), decode(z))[1]
    calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def record(module, args):
        calls.append((args[0][0].clone(), args[1][0].clone(), s.anchor is not None))

    handle = tiny.dit.register_forward_pre_hook(record)
    try:
        s.read(1 + 4 * 5)
    finally:
        handle.remove()
    assert torch.equal(s.anchor, out[0])  # the first latent frame out, and it stays
    tokens = s.tokens_per_frame
    before = [c for c in calls if not c[2]]
    after = [c for c in calls if c[2]]
    assert before and after
    assert all(x.shape[1] <= 2 for x, _, _ in before)
    for x, t, _ in after:
        assert x.shape[1] <= 3
        assert torch.equal(x[:, 0], s.anchor[:, 0].to(x.dtype))
        per_frame = t.reshape(x.shape[1], tokens)[:, 0] if t.ndim == 1 and t.numel() > 1 else t
        assert per_frame[0] == 0 and bool((per_frame[1:] > 0).all())


def test_an_anchored_velocity_is_the_dit_on_the_anchor_and_the_window(tiny):
    s = stream(tiny, "a red ball", window=3, steps_per_shift=1, anchor=True)
    s.anchor, s.joined = torch.randn(16, 1, 8, 8), 6
    x, levels = torch.randn(16, 2, 8, 8), [1, 0]
    got = s.velocity(x, levels)
    t = torch.cat([torch.zeros(1), s.timesteps[torch.tensor(levels)].float()]).repeat_interleave(16)[None]
    ctx = tiny.encode_text(["a red ball", ""])
    v_cond, v_neg = (tiny.dit(torch.cat([s.anchor, x], dim=1)[None], t, c)[0] for c in (ctx[:1], ctx[1:]))
    expected = (v_neg + s.config.guide_scale * (v_cond - v_neg))[:, 1:]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    no_anchor = stream(tiny, "a red ball", window=3, steps_per_shift=1, anchor=True)
    no_anchor.joined = 6
    assert (no_anchor.velocity(x, levels) - got).abs().max() > 1e-4  # the anchor is seen


def test_an_image_started_stream_opens_on_the_image_and_keeps_its_latent(tiny):
    image = _image()
    s = stream(tiny, "a red ball", image=image, window=3, steps_per_shift=1, seed=0)
    assert s.config.anchor and s.joined == 1
    pixels = to_model_range(resize_crop(image, (64, 64)))
    with torch.no_grad():
        z = tiny.vae.encode(pixels).float()[0]
    assert torch.equal(s.anchor, z)
    first = s.read(1)
    assert torch.equal(first, StreamDecoder(tiny.vae).decode(z))  # the image as the VAE reconstructs it
    assert (first[0] - resize_crop(image, (64, 64))[0]).abs().mean() < 0.5  # a picture of it, not noise
    more = s.read(12)  # the queue fills from latent frame 1 behind it
    assert more.shape == (12, 64, 64, 3) and torch.equal(s.anchor, z)


def test_a_prompt_switch_re_anchors_on_a_fresh_frame_of_the_new_prompt_as_its_first_frame_joins(tiny):
    s = stream(tiny, "a red ball", then=[(0.5, "a blue box")], window=3, steps_per_shift=1, anchor=True,
               transition=1, seed=2)
    # 0.5 s = video frame 8, in latent frame 2, whose cross-fade over 1 frame ends at latent frame 3
    assert [s.pure_prompt(m) for m in range(5)] == [0, 0, None, 1, 1]
    anchors, before = [], None
    for step in range(12):
        if step == 2:  # latent frame 2 joins at queue step 2: the switch's first frame
            before = s.generator.get_state()
        s.step()
        anchors.append((s.anchor_prompt, None if s.anchor is None else s.anchor.clone()))
    # frame 0 leaves the 2-group queue (1 sub-step per shift) at the second queue step and anchors the red stream;
    # at the third, frame 2 joins and the anchor turns to the blue box's, which stays until another switch
    assert [p for p, _ in anchors[:4]] == [None, 0, 1, 1] and anchors[-1][0] == 1
    assert torch.equal(anchors[2][1], anchors[-1][1]) and not torch.equal(anchors[1][1], anchors[2][1])
    # the new anchor is the first frame out of a stream of the new prompt alone, drawn from the stream's noise
    fresh = stream(tiny, "a blue box", window=3, steps_per_shift=1, anchor=True, seed=2)
    fresh.generator.set_state(before)
    while fresh.anchor is None:
        fresh.step()
    assert torch.equal(anchors[2][1], fresh.anchor)


def test_an_anchored_stream_holds_flat_memory_and_resumes_identically(tiny, tmp_path):
    cfg = StreamConfig(window=3, steps_per_shift=2, seed=1, anchor=True)
    schedule = PromptSchedule.of("a red ball")
    s = VideoStream(tiny, schedule, cfg)
    sizes = []
    for step in range(20):
        s.step()
        s.read(s.pending.shape[0])
        assert s.held_latent_frames <= 2
        if step in (6, 19):
            tensors = s.held_tensors()
            sizes.append((len(tensors), sum(t.numel() * t.element_size() for t in tensors.values())))
    assert sizes[0] == sizes[1] and "anchor" in s.held_tensors()
    path = s.save(tmp_path / "state.safetensors")
    expected = s.read(16)
    resumed = VideoStream.resume(tiny, path)
    assert torch.equal(resumed.anchor, VideoStream.resume(tiny, path).anchor)
    assert torch.equal(resumed.read(16), expected)
    started = stream(tiny, "a red ball", image=_image(), window=3, steps_per_shift=1)
    started.read(5)
    again = VideoStream.resume(tiny, started.save(tmp_path / "image.safetensors"))
    assert torch.equal(again.read(8), started.read(8))


@pytest.mark.parametrize("change, message", [
    (dict(window=4, block=2, anchor=True), "plus the anchor's slot"),
    (dict(window=1, anchor=True), "plus the anchor's slot"),
    (dict(anchor="yes"), "anchor must be True or False"),
])
def test_anchor_settings_are_refused_when_they_cannot_stream(change, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**change)


def test_an_image_needs_an_anchored_stream(tiny):
    with pytest.raises(ValueError, match="keeps the image as its anchor"):
        VideoStream(tiny, PromptSchedule.of("a red ball"), StreamConfig(window=3), image=_image())
