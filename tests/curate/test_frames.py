"""read_clip_frames samples a real clip's range at the analysis rate and size, the same way every time."""

from __future__ import annotations

import numpy as np
import pytest

from curate.footage import DATA, footage, garbage, write_video
from openwan.curate.frames import analysis_size, iter_frames, read_clip_frames

BUNNY = DATA / "bigbuckbunny.mp4"  # 1280x720, 132 frames at 25 fps (keyframe only at 0)


def test_samples_range_at_fps_with_source_times():
    clip = read_clip_frames(BUNNY, 1.0, 3.0, fps=8.0)
    assert clip.frames.shape == (16, 256, 455, 3) and clip.frames.dtype == np.uint8
    assert clip.source_size == (1280, 720) and clip.fps == 8.0
    targets = 1.0 + np.arange(16) / 8.0
    assert np.all(np.abs(clip.times - targets) <= 0.02 + 1e-9)  # nearest of frames 0.04 s apart
    assert clip.times[0] == pytest.approx(1.0) and clip.times[-1] < 3.0
    # the frame at 1.0 s decoded in full and downscaled is what the clip holds
    full = footage("bunny", 25, 1, (455, 256))[0]
    assert np.abs(clip.frames[0].astype(int) - full.astype(int)).mean() < 2.0


def test_deterministic_and_seek_matches_decoding_from_start():
    a = read_clip_frames(BUNNY, 2.2, 4.0, fps=5.0, short_side=64)
    b = read_clip_frames(BUNNY, 2.2, 4.0, fps=5.0, short_side=64)
    assert a.frames.tobytes() == b.frames.tobytes() and np.array_equal(a.times, b.times)
    times = [t for t, _ in iter_frames(BUNNY, 2.2, 4.0)]
    assert len(times) == 45 and times[0] == pytest.approx(2.2) and times[-1] == pytest.approx(3.96)


def test_never_upscales_and_repeats_frames_above_source_rate():
    clip = read_clip_frames(DATA / "carphone_pristine.mp4", 0.5, 1.0, fps=60.0, short_side=512)
    assert clip.frames.shape[1:3] == (144, 176)  # source size: no upscale
    assert len(clip) == 30 and len(np.unique(clip.times)) == 15  # 30 fps source sampled at 60: each frame twice
    assert analysis_size(1920, 1080, 256) == (455, 256) and analysis_size(100, 50, 256) == (100, 50)


def test_max_frames_and_range_past_the_end():
    clip = read_clip_frames(DATA / "bikes.mp4", 9.5, 20.0, fps=8.0, max_frames=3)
    assert len(clip) == 3 and clip.times[0] == pytest.approx(9.52)
    tail = read_clip_frames(DATA / "bikes.mp4", 9.5, 20.0, fps=8.0)
    assert tail.times.max() == pytest.approx(9.96)  # the last frame, repeated for targets past it
    assert len(tail) == 84


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no frames between"):
        read_clip_frames(BUNNY, 30.0, 31.0)
    with pytest.raises(ValueError, match="end after it starts"):
        read_clip_frames(BUNNY, 2.0, 2.0)
    with pytest.raises(ValueError, match="not a readable video"):
        read_clip_frames(garbage(tmp_path / "x.mp4"), 0.0, 1.0)
    with pytest.raises(ValueError, match="fps"):
        read_clip_frames(BUNNY, 0.0, 1.0, fps=0)


def test_odd_sized_video(tmp_path):
    path = write_video(footage("carphone", 0, 10, (98, 60)), tmp_path / "s.mp4", fps=10)
    clip = read_clip_frames(path, 0.0, 1.0, fps=4.0, short_side=30)
    assert clip.frames.shape == (4, 30, 49, 3)


@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_seek_lands_on_the_range_in_other_containers(tmp_path, suffix):
    """MPEG-TS seeks by bytes and lands after the asked time: the range must still start where it should."""
    import av

    path = tmp_path / f"gop{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 68, "yuv420p"
        stream.codec_context.gop_size = 24
        for i, image in enumerate(footage("bikes", 80, 100, (160, 68))):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    full = [(t, f.to_ndarray(format="rgb24")) for t, f in iter_frames(path)]
    assert len(full) == 100 and full[0][0] == 0.0
    for start in (0.5, 1.0, 2.37, 3.5):
        part = [(t, f.to_ndarray(format="rgb24")) for t, f in iter_frames(path, start, start + 0.5)]
        first = int(np.ceil(start * 25 - 1e-6))
        assert [round(t * 25) for t, _ in part] == list(range(first, first + len(part))) and len(part) >= 12
        assert all(np.array_equal(full[round(t * 25)][1], image) for t, image in part)
