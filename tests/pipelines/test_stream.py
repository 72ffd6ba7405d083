"""The streaming sampler: the ordinary sampler as its uniform special case, the staircase each frame walks, bounded
memory, resume from a saved state, prompt switches the bundled model follows, refusals."""

from __future__ import annotations

import pytest
import torch

from openwan.eval.detector import detect
from openwan.pipelines import WanPipeline
from openwan.pipelines.components import BUNDLED
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream, stream
from tiny import tiny_components

RED = "a red circle moving to the right"


@pytest.fixture(scope="module")
def demo(one_thread):
    return WanPipeline.from_pretrained(BUNDLED, device="cpu")


@pytest.fixture(scope="module")
def tiny(one_thread):
    return WanPipeline(**tiny_components(), defaults=FAMILY_DEFAULTS["tiny"])  # 64x64, 20 steps


def test_uniform_window_of_the_clip_is_the_ordinary_euler_sampler(demo):
    """block = window = the clip's 3 latent frames, K = the steps: the same numbers as pipe(..., solver="euler"),
    bit for bit (both experts of the bundled model take part: the boundary falls inside the 4 steps)."""
    out = demo(RED, frame_num=9, sample_steps=4, solver="euler", seed=5, progress=False)
    s = stream(demo, RED, window=3, block=3, steps_per_shift=4, seed=5)
    video = s.read(9)
    assert torch.equal(video, out.video)
    assert detect(video).colour == "red"  # a real picture, not a flat one that any loop would reproduce


def test_each_latent_frame_walks_the_whole_staircase_in_order(tiny):
    """What the DiT is given, read off its inputs: every latent frame of the stream sees the grid's timesteps
    t_0 > t_1 > ... > t_{S-1} once each, in order, then leaves clean; the window never holds more than 3 frames."""
    s = stream(tiny, "a red ball", window=3, block=1, steps_per_shift=2, seed=0)
    seen: dict[int, list[int]] = {}

    def record(module, args):
        x, t = args[0], args[1]
        frames = x.shape[2]
        assert frames <= 3
        per_frame = t[0].reshape(frames, -1)[:, 0] if t.ndim == 2 else t[:1].expand(frames)
        for k, value in enumerate(per_frame.tolist()):
            seen.setdefault(s.joined + 1 - frames + k, []).append(int(value))  # joined counts the new frame after

    handle = tiny.dit.register_forward_pre_hook(record)
    try:
        s.read(1 + 4 * 5)  # 6 latent frames out
    finally:
        handle.remove()
    steps = s.timesteps[:-1].tolist()
    assert len(steps) == 6 and steps[0] == 1000
    for frame in range(6):
        assert seen[frame] == steps, frame
    assert s.decoder.latent_frames == 6


def test_prompt_switch_mixes_each_frames_velocity_as_separate_evaluations_do(tiny):
    """The window's guided velocity during a cross-fade, against one plain DiT call per prompt and branch: frame f
    takes (1 - w_f)·v_red + w_f·v_blue as its conditional velocity, w_f rising 1/3 per latent frame from the switch."""
    s = stream(tiny, "a red ball", then=[(0.25, "a blue box")], window=3, steps_per_shift=1, transition=2)
    s.joined = 3  # the window holds latent frames 0, 1, 2; the switch (video frame 4) is in latent frame 1
    assert [c for m in range(3) for c in s.prompt_mix(m)] == pytest.approx([1, 0, 2 / 3, 1 / 3, 1 / 3, 2 / 3])
    x, levels = torch.randn(16, 3, 8, 8), [2, 1, 0]
    got = s.velocity(x, levels)

    t = s.timesteps[torch.tensor(levels)].float().repeat_interleave(16)[None]  # 4x4 tokens per latent frame
    red, blue = (tiny.encode_text([p, ""]) for p in ("a red ball", "a blue box"))
    v_red, v_blue, v_neg = (tiny.dit(x[None], t, ctx)[0] for ctx in (red[:1], blue[:1], red[1:]))
    w = torch.tensor([0.0, 1 / 3, 2 / 3])[None, :, None, None]
    v_cond = (1 - w) * v_red + w * v_blue
    expected = v_neg + s.config.guide_scale * (v_cond - v_neg)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (v_red - v_blue).abs().max() > 1e-3  # the prompts differ, so the mix is seen


def test_memory_is_flat_in_stream_length(tiny):
    """What the stream holds between steps has the same count and bytes after 5 and after 24 queue steps."""
    s = stream(tiny, "a red ball", window=3, block=1, steps_per_shift=1, seed=0)

    def held():
        tensors = s.held_tensors()
        return len(tensors), sum(t.numel() * t.element_size() for t in tensors.values())

    sizes = []
    for step in range(24):
        s.step()
        s.read(s.pending.shape[0])  # the consumer takes what left the queue
        assert s.held_latent_frames <= 3
        if step in (4, 23):
            sizes.append(held())
    assert sizes[0] == sizes[1]
    assert s.joined == 24 and s.decoder.latent_frames == 22


def test_a_stream_killed_and_resumed_from_its_state_continues_identically(tiny, tmp_path):
    schedule = PromptSchedule.of("a red ball", then=[(0.5, "a blue box")])
    cfg = StreamConfig(window=3, block=1, steps_per_shift=2, seed=1, transition=2)
    first = VideoStream(tiny, schedule, cfg)
    first.read(7)  # stops inside a chunk: 2 frames of it stay pending
    path = first.save(tmp_path / "state.safetensors")
    expected = first.read(24)  # past the switch (0.5 s = frame 8) and its cross-fade
    del first
    resumed = VideoStream.resume(tiny, path)
    assert resumed.emitted == 7 and resumed.pending.shape[0] == 2
    assert torch.equal(resumed.read(24), expected)
    # a different seed would have given other frames: the equality above is not vacuous
    other = VideoStream(tiny, schedule, StreamConfig(window=3, block=1, steps_per_shift=2, seed=2))
    other.read(7)
    assert not torch.equal(other.read(24), expected)


def test_a_step_interrupted_midway_leaves_the_stream_as_it_was(tiny):
    """Ctrl-C inside a step (here: midway through the VAE decoder's pass, some of its cache already rewritten, after
    the DiT moved the queue) changes nothing: the stream then makes the frames an uninterrupted one makes."""
    cfg = StreamConfig(window=2, block=1, steps_per_shift=1, seed=3)
    expected = VideoStream(tiny, PromptSchedule.of("a red ball"), cfg).read(25)
    s = VideoStream(tiny, PromptSchedule.of("a red ball"), cfg)
    s.read(5)
    calls = [0]

    def interrupt(module, args):
        calls[0] += 1
        if calls[0] == 3:  # the third decoded latent frame's pass, after the layers before this block
            raise KeyboardInterrupt

    handle = tiny.vae.decoder.middle[2].register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            while True:
                s.step()
    finally:
        handle.remove()
    assert s.pending.shape[0] == 8  # two latent frames decoded before the interrupt
    assert torch.equal(torch.cat([expected[:5], s.read(20)]), expected)  # 3 latent frames decoded after it


def test_state_files_refuse_what_they_cannot_resume(tiny, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not an openwan stream state"):
        VideoStream.resume(tiny, bad)
    with pytest.raises(ValueError, match="no stream state file"):
        VideoStream.resume(tiny, tmp_path / "missing.safetensors")
    path = stream(tiny, "a red ball", window=2, steps_per_shift=1).save(tmp_path / "s.safetensors")
    other = WanPipeline(**tiny_components(num_layers=1), defaults=FAMILY_DEFAULTS["tiny"])
    with pytest.raises(ValueError, match="another model"):
        VideoStream.resume(other, path)


def test_a_prompt_switch_changes_the_bundled_models_colour(demo):
    """Red, then blue from 1 s (video frame 16, in latent frame 4 = frames 13-16): the detector sees red before the
    switch and blue once its cross-fade (one latent frame) is over."""
    s = stream(demo, RED, then=[(1.0, "a blue circle moving to the right")], window=3, steps_per_shift=2,
               transition=1, seed=0)
    video = s.read(40)
    before, after = detect(video[1:13]), detect(video[24:40])
    assert before.colour == "red", before
    assert after.colour == "blue", after


def test_prompt_schedule_weights_ramp_over_the_transition():
    sched = PromptSchedule.of("a", then=[(1.0, "b")])  # 1 s at 16 fps = video frame 16, in latent frame 4
    weights = [sched.weights(m, 16.0, 4, 2)[0] for m in range(8)]
    assert weights == [0, 0, 0, 0, 1 / 3, 2 / 3, 1, 1]


@pytest.mark.parametrize("change, message", [
    ({"window": 4, "block": 3}, "multiple of block"),
    ({"steps_per_shift": 0}, "steps_per_shift"),
    ({"sigmas": (1.0, 0.5, 0.6, 0.0)}, "strictly"),
    ({"guide_scale": float("nan")}, "guide_scale"),
    ({"transition": -1}, "transition"),
])
def test_config_refuses_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**change)


def test_bad_inputs_are_refused_before_compute(tiny):
    with pytest.raises(ValueError, match="start at 0 s and increase"):
        stream(tiny, "a", then=[(2.0, "b"), (1.0, "c")])
    with pytest.raises(ValueError, match="non-empty"):
        stream(tiny, " ")
    with pytest.raises(ValueError, match="sigmas holds 3 values"):
        stream(tiny, "a", window=2, steps_per_shift=2, sigmas=(1.0, 0.5, 0.0))
    with pytest.raises(ValueError, match="multiples of 16"):
        stream(tiny, "a", size=(72, 64))
    student = stream(tiny, "a", window=2, steps_per_shift=1, sigmas=(1.0, 0.4, 0.0))  # a student's own levels
    assert student.read(5).shape == (5, 64, 64, 3)
