"""The test footage is real video that decodes (every curation test builds on it)."""

from curate.footage import footage, write_video


def test_footage_round_trips_through_h264(tmp_path):
    import av

    frames = footage("carphone", 0, 8)
    assert frames.shape == (8, 144, 176, 3) and frames.std() > 20  # real pictures, not a flat field
    path = write_video(frames, tmp_path / "c.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 8
