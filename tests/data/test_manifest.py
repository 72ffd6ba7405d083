"""Manifests: Parquet and JSON Lines round trips, path resolution, stable ids, row validation, atomic writes."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openwan.data.manifest import ClipRecord, read_manifest, write_manifest

_GOOD = {"path": "a.mp4", "caption": "c", "frames": 9, "fps": 16.0, "width": 32, "height": 32}


def _records(folder):
    return [
        ClipRecord(str(folder / "clips" / "a.mp4"), "a cat", 81, 16.0, 832, 480),
        ClipRecord(str(folder / "clips" / "a.mp4"), "the same file, later", 81, 16.0, 832, 480, start=2.5, end=4.0),
        ClipRecord(str(folder / "img.png"), "ünïcode caption", 1, 0.0, 64, 32, id="image-1"),
        ClipRecord("/elsewhere/b.mp4", "", 9, 24.0, 48, 32),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    records = _records(tmp_path)
    path = write_manifest(records, tmp_path / f"m{suffix}")
    back = read_manifest(path)
    assert back == records
    a = str(tmp_path / "clips" / "a.mp4")
    assert [r.id for r in back] == [a, f"{a}@2.500", "image-1", "/elsewhere/b.mp4"]  # kept as first derived
    assert isinstance(back[0].frames, int) and isinstance(back[0].fps, float)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_paths_inside_the_folder_are_stored_relative_and_survive_a_move(tmp_path):
    write_manifest(_records(tmp_path / "data"), tmp_path / "data" / "m.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "data" / "m.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["clips/a.mp4", "clips/a.mp4", "img.png", "/elsewhere/b.mp4"]
    os.rename(tmp_path / "data", tmp_path / "moved")
    back = read_manifest(tmp_path / "moved" / "m.jsonl")
    assert back[0].path == str(tmp_path / "moved" / "clips" / "a.mp4")
    assert [r.id for r in back] == [r.id for r in _records(tmp_path / "data")]  # written out, so kept


def test_default_ids_come_from_the_path_as_written(tmp_path):
    row = {**_GOOD, "path": "clips/a.mp4"}
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "start": 0.5}))
        first, second = read_manifest(tmp_path / folder / "m.jsonl")
        assert first.path == str(tmp_path / folder / "clips" / "a.mp4")
        assert (first.id, second.id) == ("clips/a.mp4", "clips/a.mp4@0.500")  # the same wherever the folder is


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    row = {"path": "../v/x.mp4", "caption": "c", "frames": 9, "fps": 16, "width": 32, "height": 32, "start": 1}
    (tmp_path / "sub" / "m.jsonl").write_text(json.dumps(row) + "\n\n")  # a blank line is allowed
    monkeypatch.chdir("/")
    (record,) = read_manifest(tmp_path / "sub" / "m.jsonl")
    assert record.path == str(tmp_path / "v" / "x.mp4")
    assert record.id == "../v/x.mp4@1.000" and record.fps == 16.0 and record.start == 1.0


@pytest.mark.parametrize(
    "bad, match",
    [
        ({k: v for k, v in _GOOD.items() if k != "caption"}, r"row 2 .* no 'caption' field"),
        ({**_GOOD, "frames": "9"}, r"row 2 .*'frames' must be an integer"),
        ({**_GOOD, "frames": 9.0}, r"row 2 .*'frames' must be an integer"),
        ({**_GOOD, "width": True}, r"row 2 .*'width' must be an integer"),
        ({**_GOOD, "fps": "16"}, r"row 2 .*'fps' must be a number"),
        ({**_GOOD, "path": 3}, r"row 2 .*'path' must be a string"),
        ({**_GOOD, "start": "0"}, r"row 2 .*'start' must be a number"),
        ({**_GOOD, "id": 7}, r"row 2 .*'id' must be a string"),
        ({**_GOOD, "start": 2.0, "end": 1.0}, r"row 2 .*'end' must be after 'start'"),
        ({**_GOOD, "fps": 0.0}, r"row 2 .*'fps' must be positive"),
        ({**_GOOD, "height": 0}, r"row 2 .*positive"),
    ],
)
def test_bad_jsonl_rows_name_row_and_field(tmp_path, bad, match):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=match):
        read_manifest(path)


def test_bad_parquet_column_type_names_row_and_field(tmp_path):
    table = pa.table({**{k: [v, v] for k, v in _GOOD.items()}, "frames": ["9", "9"]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"row 1 .*'frames' must be an integer"):
        read_manifest(tmp_path / "m.parquet")
    table = pa.table({k: [v, None] if k == "height" else [v, v] for k, v in _GOOD.items()})
    pq.write_table(table, tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"row 2 .* no 'height' field"):
        read_manifest(tmp_path / "n.parquet")


def test_unreadable_manifests(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": \n')
    with pytest.raises(ValueError, match="line 1 .* not valid JSON"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "latin1.jsonl").write_bytes('{"path": "caf\u00e9.mp4"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl is not UTF-8 text \(byte 13"):
        read_manifest(tmp_path / "latin1.jsonl")
    with pytest.raises(ValueError, match=r"\*\.parquet or \*\.jsonl"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")


def test_unknown_columns_are_ignored(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({**_GOOD, "aesthetic": 5.5}) + "\n")
    assert read_manifest(tmp_path / "m.jsonl")[0].caption == "c"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_failed_write_keeps_the_old_manifest(tmp_path, suffix):
    path = write_manifest(_records(tmp_path), tmp_path / f"m{suffix}")
    broken = [ClipRecord(str(tmp_path / "x.mp4"), object(), 9, 16.0, 32, 32)]  # a caption that cannot be stored
    with pytest.raises((TypeError, ValueError, pa.ArrowException)):
        write_manifest(broken, path)
    assert read_manifest(path) == _records(tmp_path)
    assert os.listdir(tmp_path) == [path.name]


def test_atomic_writes_leave_files_with_ordinary_permissions(tmp_path):
    import stat
    from pathlib import Path

    import torch

    from openwan.data.video import save_video
    from openwan.fileio import atomic_write, default_mode

    umask = os.umask(0o022)
    default_mode.cache_clear()
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
        save_video(torch.zeros(5, 16, 16, 3), tmp_path / "b.mp4")
        for name in ("a.txt", "b.mp4"):  # temporary files are 0o600; the published file is what open() would make
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    finally:
        os.umask(umask)
        default_mode.cache_clear()


def test_atomic_torch_save_gives_the_same_bytes_for_the_same_tensors(tmp_path):
    import torch

    from openwan.fileio import atomic_torch_save

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    atomic_torch_save(state, tmp_path / "a.pth")
    atomic_torch_save(state, tmp_path / "b.pth")  # another random temporary name on the way
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    loaded = torch.load(tmp_path / "a.pth", weights_only=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth"]


def _curated(folder):
    return [
        ClipRecord(str(folder / "a.mp4"), "letterboxed", 81, 25.0, 640, 400, crop=(0, 64, 640, 336), weight=2.5),
        ClipRecord(str(folder / "a.mp4"), "later", 81, 25.0, 640, 400, start=1.0, end=3.0, weight=0.0),
        ClipRecord(str(folder / "b.png"), "still", 1, 0.0, 64, 32, crop=[8, 0, 56, 32]),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_crop_weight_and_extra_columns_round_trip(tmp_path, suffix):
    records = _curated(tmp_path)
    assert records[2].crop == (8, 0, 56, 32) and records[2].frame_size == (48, 32)  # a list is kept as a tuple
    extra = [{"quality_score": 0.8, "motion_tier": "optimal", "cluster": 3, "subset_i2v": True, "tags": [1, 2]},
             {"quality_score": 0.1, "motion_tier": "static", "cluster": 0, "subset_i2v": False},
             {"quality_score": None, "motion_tier": "optimal", "cluster": 3, "subset_i2v": True, "tags": []}]
    path = write_manifest(records, tmp_path / f"m{suffix}", extra=extra)
    assert read_manifest(path) == records  # extra columns are ignored by the reader
    if suffix == ".parquet":
        table = pq.read_table(path)
        assert table.schema.field("crop").type == pa.list_(pa.int64())
        assert table.schema.field("weight").type == pa.float64()
        assert table.schema.field("subset_i2v").type == pa.bool_()
        rows = table.to_pylist()
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["crop"] for r in rows] == [[0, 64, 640, 336], None, [8, 0, 56, 32]]
    assert [r["weight"] for r in rows] == [2.5, 0.0, None]
    assert [r["motion_tier"] for r in rows] == ["optimal", "static", "optimal"]
    assert [r.get("tags") for r in rows] == [[1, 2], None, []]  # a missing key is null
    assert rows[2]["quality_score"] is None


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("crop", [0, 0, 16], r"row 2 .*'crop' must be a list of 4 integers"),
        ("crop", [0, 0, 16.0, 16], r"row 2 .*'crop' must be a list of 4 integers"),
        ("crop", "0,0,16,16", r"row 2 .*'crop' must be a list of 4 integers"),
        ("crop", [0, 0, 40, 16], r"row 2 .*'crop' \[0, 0, 40, 16\] must lie inside the 32x32 source"),
        ("crop", [16, 0, 16, 32], r"row 2 .*left < right"),
        ("crop", [-1, 0, 16, 16], r"row 2 .*must lie inside"),
        ("weight", -0.5, r"row 2 .*'weight' must be a finite number >= 0"),
        ("weight", "2", r"row 2 .*'weight' must be a number"),
        ("weight", True, r"row 2 .*'weight' must be a number"),
    ],
)
def test_bad_crop_and_weight_rows_are_refused_naming_the_row(tmp_path, field, value, match):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_GOOD) + "\n" + json.dumps({**_GOOD, field: value}) + "\n")
    with pytest.raises(ValueError, match=match):
        read_manifest(path)
    table = pa.table({**{k: [v, v] for k, v in _GOOD.items()}, "weight": [1.0, float("inf")]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"row 2 .*'weight' must be a finite number"):
        read_manifest(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"clip 'x'.*'crop'"):
        ClipRecord("a.mp4", "c", 9, 16.0, 32, 32, id="x", crop=(0, 0, 64, 32))


def test_bad_extra_columns_are_refused_before_writing(tmp_path):
    records = _curated(tmp_path)
    with pytest.raises(ValueError, match="extra has 1 rows for 3 records"):
        write_manifest(records, tmp_path / "m.jsonl", extra=[{}])
    with pytest.raises(ValueError, match="extra row 2 has a column 'weight' that is a manifest field"):
        write_manifest(records, tmp_path / "m.jsonl", extra=[{}, {"weight": 3}, {}])
    with pytest.raises(ValueError, match="column 'mixed' mixes kinds"):
        write_manifest(records, tmp_path / "m.parquet", extra=[{"mixed": 1}, {"mixed": "one"}, {}])
    with pytest.raises(ValueError, match="extra row 1: column 'obj' holds a object"):
        write_manifest(records, tmp_path / "m.jsonl", extra=[{"obj": object()}, {}, {}])
    assert not list(tmp_path.iterdir())
