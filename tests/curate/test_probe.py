"""probe() reads real files' container facts and refuses every kind of broken file with its name; content_hash
tells files apart by their bytes."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest

from curate.footage import DATA, corrupt_copy, footage, garbage, write_video
from openwan.curate.probe import content_hash, probe


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_video(footage("bikes", 0, 50, (320, 136)), tmp_path_factory.mktemp("probe") / "good.mp4")


def _faststart(frames, path, fps=25):
    """An mp4 with its index at the front (as web video is): cut short, it still opens."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_probe_good_file(good):
    info = probe(good)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"], info["frames"]) == (320, 136, 50)
    assert info["fps"] == 25.0 and info["duration"] == pytest.approx(2.0)
    assert info["has_audio"] is False
    assert info["bytes"] == good.stat().st_size and info["bit_rate"] > 0


def test_probe_real_sources_and_audio():
    bunny = probe(DATA / "bigbuckbunny.mp4")
    assert bunny["has_audio"] is True and (bunny["width"], bunny["height"], bunny["frames"]) == (1280, 720, 132)
    carphone = probe(DATA / "carphone_pristine.mp4")
    assert carphone["fps"] == pytest.approx(30000 / 1001) and carphone["frames"] == 120
    assert carphone["has_audio"] is False


def test_probe_refuses_broken_files(tmp_path, good):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cases = {
        tmp_path / "missing.mp4": "does not exist",
        tmp_path: "is a folder",
        empty: "empty",
        garbage(tmp_path / "noise.mp4"): "not a readable video",
        corrupt_copy(good, tmp_path / "cut.mp4"): "truncated",  # index at the end: it is lost
        corrupt_copy(_faststart(footage("bikes", 0, 100, (320, 136)), tmp_path / "fs.mp4"),
                     tmp_path / "cut_fs.mp4", keep=0.9): "truncated",  # index at the front: the data ends early
    }
    for path, words in cases.items():
        with pytest.raises(ValueError, match=words) as err:
            probe(path)
        assert str(path) in str(err.value)


def _tone(container, stream, seconds: float, rate: int = 16000) -> None:
    """Mux ``seconds`` of a sine tone into ``stream`` (AAC at ``rate``)."""
    samples = (np.sin(np.arange(int(seconds * rate)) / 5.0) * 0.2).astype(np.float32)[None]
    for i in range(0, samples.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(samples[:, i:i + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, i
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def test_probe_refuses_audio_only(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        _tone(container, container.add_stream("aac", rate=16000), 1.0)
    with pytest.raises(ValueError, match="no video stream"):
        probe(path)


def test_probe_mkv_with_longer_audio(tmp_path):
    """Matroska declares no video duration; the container's is the longer audio track's, which is not a
    truncation: the video's duration is where its data ends. Cut short, the file is refused."""
    path = tmp_path / "a.mkv"
    frames = footage("carphone", 0, 50)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 176, 144, "yuv420p"
        audio = container.add_stream("aac", rate=16000)  # every stream before the first packet
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        _tone(container, audio, 3.0)
    info = probe(path)
    assert info["duration"] == pytest.approx(2.0) and info["frames"] == 50 and info["has_audio"] is True
    with pytest.raises(ValueError, match="truncated"):
        probe(corrupt_copy(path, tmp_path / "cut.mkv", keep=0.8))


def test_probe_faststart_whole_file_passes(tmp_path):
    path = _faststart(footage("carphone", 0, 30), tmp_path / "fs.mp4")
    assert probe(path)["frames"] == 30


def test_content_hash(tmp_path, good):
    copy = shutil.copy(good, tmp_path / "other-name.mp4")
    assert content_hash(copy) == content_hash(good)
    assert len(content_hash(good)) == 64
    edited = tmp_path / "edited.mp4"
    data = bytearray(good.read_bytes())
    data[-1] ^= 1
    edited.write_bytes(bytes(data))
    assert content_hash(edited) != content_hash(good)
    assert content_hash(good, chunk=1000) == content_hash(good)
    with pytest.raises(ValueError, match="does not exist"):
        content_hash(tmp_path / "nope.mp4")
