"""The curation run end to end on real footage: nothing lost, errors recorded, resumable, and its manifest trains.

The corpus (tests/curate/corpus.py) holds good videos beside a truncated mp4, random bytes, a zero-length file, a
folder named like a video and a shot too short to keep. The default-tier runs use configs/curate-fast.yaml's
choices (content shot detector, no OCR or NSFW models); the full default config runs in the slow tier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.corpus import BAD, GOOD, UNREADABLE, build_corpus
from openwan.curate import curate, load_config
from openwan.curate import pipeline as pipeline_mod
from openwan.curate.pipeline import check_inputs, clip_id
from openwan.curate.sources import list_sources
from openwan.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
FAST = REPO / "configs" / "curate-fast.yaml"
QUIET = ["run.progress=false", "report.enabled=false", "limits.min_short_side=64"]  # the corpus: 90-180 px tall
TABLES = ("manifest.parquet", "clips.parquet", "errors.parquet", "sources.parquet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def fast_config(*overrides: str):
    return load_config(FAST, [*QUIET, *overrides])


class Calls:
    """Counts the calls of the pipeline's clip and split steps (what a run computed rather than read back)."""

    def __init__(self, monkeypatch):
        self.clips = self.splits = 0
        clip_call, split_call = pipeline_mod.ClipStep.__call__, pipeline_mod.SplitStep.__call__

        def count_clip(step, task):
            if step.decode:
                self.clips += 1
            return clip_call(step, task)

        def count_split(step, task):
            self.splits += 1
            return split_call(step, task)

        monkeypatch.setattr(pipeline_mod.ClipStep, "__call__", count_clip)
        monkeypatch.setattr(pipeline_mod.SplitStep, "__call__", count_split)


@pytest.fixture(scope="module")
def fast_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "out"
    return curate(fast_config(), out, paths=[corpus])


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_every_source_and_clip_is_accounted_for(fast_run, corpus):
    out = fast_run.out_dir
    sources = _rows(out / "sources.parquet")
    assert sorted(Path(s["source"]).name for s in sources) == sorted(GOOD + BAD)
    status = {Path(s["source"]).name: s["status"] for s in sources}
    assert {n for n, s in status.items() if s == "error"} == set(UNREADABLE)
    assert all(status[n] == "processed" for n in GOOD)
    short = next(s for s in sources if s["source"].endswith("short.mp4"))
    assert short["status"] == "processed" and short["clips"] == 0 and short["dropped_seconds"] == pytest.approx(1.0)

    errors = _rows(out / "errors.parquet")
    failed = {Path(e["source"]).name: e for e in errors if e["clip_id"] is None}
    assert set(failed) == set(UNREADABLE)
    assert "truncated" in failed["truncated.mp4"]["error"] and "empty" in failed["empty.mp4"]["error"]
    assert "folder" in failed["folder.mp4"]["error"] and failed["noise.mp4"]["stage"] == "probe"

    clips = _rows(out / "clips.parquet")
    assert clips and len({c["clip_id"] for c in clips}) == len(clips)
    for clip in clips:
        assert (clip["decision"] == "kept") == (not clip["reasons"]), clip
    assert [(c["source"], c["start"]) for c in clips] == sorted((c["source"], c["start"]) for c in clips)
    per_source = {s["source"]: s["clips"] for s in sources}
    assert sum(per_source.values()) == len(clips)
    kept = [c for c in clips if c["decision"] == "kept"]
    assert fast_run.counts == {"sources": len(GOOD + BAD), "processed": len(GOOD) + 1, "failed": len(UNREADABLE),
                               "clips": len(clips), "kept": len(kept), "rejected": len(clips) - len(kept),
                               "errors": len(errors)}

    manifest = read_manifest(out / "manifest.parquet")  # the data layer reads it as a training manifest
    assert [m.id for m in manifest] == [c["clip_id"] for c in kept]
    by_id = {c["clip_id"]: c for c in kept}
    for record in manifest:
        clip = by_id[record.id]
        assert (record.path, record.start, record.end) == (clip["source"], clip["start"], clip["end"])
        assert record.frames >= clip["frames"] and record.fps == clip["fps"]
        assert record.crop == (tuple(clip["crop"]) if clip["crop"] else None)
    captions = {Path(c["source"]).name: c["caption"] for c in clips}
    assert captions["carphone.mp4"] == "a man talks on a phone in a car"  # sidecar NAME.txt
    assert captions["bikes_letterbox.mp4"] == "cyclists ride past a crowd"  # sidecar NAME.mp4.txt
    assert captions["frozen.mp4"] == ""
    assert fast_run.notes["aesthetic"].startswith("not measured: give aesthetic.clip_path")  # no weights given
    assert fast_run.notes["scorer"].startswith("not measured")


def test_the_cut_splits_the_source_into_its_shots(fast_run):
    clips = [c for c in _rows(fast_run.out_dir / "clips.parquet") if c["source"].endswith("bunny_cut.mp4")]
    assert [c["start"] for c in clips][:2] == [0.0, pytest.approx(2.4)]
    assert clips[0]["clip_id"] == clip_id(clips[0]["source"], clips[0]["source_hash"], 0.0, 2.4)
    assert clips[0]["clip_id"].startswith("bunny_cut-") and clips[0]["clip_id"].endswith("#0.000-2.400")


def test_a_rerun_computes_nothing_and_writes_the_same_bytes(fast_run, corpus, monkeypatch):
    before = {name: (fast_run.out_dir / name).read_bytes() for name in TABLES}
    calls = Calls(monkeypatch)
    again = curate(fast_config(), fast_run.out_dir, paths=[corpus])
    assert (calls.splits, calls.clips) == (0, 0)
    assert again.computed == {"split": 0, "clips": 0, "captions": 0, "reencode": 0}
    assert {name: (fast_run.out_dir / name).read_bytes() for name in TABLES} == before


def test_a_changed_setting_recomputes_the_clips_and_a_failing_stage_is_recorded(fast_run, corpus, tmp_path,
                                                                                  monkeypatch):
    """A new exposure limit reuses every split (same split settings) but analyses every clip again; a stage that
    raises on one source's clips rejects those clips with the reason and an error row, and the run goes on."""
    from openwan.curate.filters import BlurStage

    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    (out / "cache" / "split").symlink_to(fast_run.out_dir / "cache" / "split")
    original = BlurStage.__call__

    def flaky(self, clip, frames):
        if "frozen" in clip["source"]:
            raise RuntimeError("simulated failure")
        return original(self, clip, frames)

    monkeypatch.setattr(BlurStage, "__call__", flaky)
    calls = Calls(monkeypatch)
    result = curate(fast_config("exposure.max_dark_share=0.5"), out, paths=[corpus])
    assert calls.splits == 0 and calls.clips == result.counts["clips"] > 0

    errors = [e for e in _rows(result.errors) if e["clip_id"]]
    assert errors and all(e["stage"] == "blur" and "simulated failure" in e["error"] for e in errors)
    clips = _rows(result.clips)
    frozen = [c for c in clips if "frozen" in c["source"]]
    assert frozen and all(c["decision"] == "rejected" and any("blur stage failed" in r for r in c["reasons"])
                          for c in frozen)
    assert {c["clip_id"] for c in clips} == {c["clip_id"] for c in _rows(fast_run.clips)}
    # a failed clip is not cached, so the next run tries it again
    assert len(list((out / "cache" / "clips").glob("*.json"))) == len(clips) - len(frozen)


def test_inputs_are_listed_from_folders_globs_files_and_manifests(corpus, tmp_path):
    cfg = fast_config()
    from_folder = [Path(s.path).name for s in list_sources(cfg, [corpus])]
    assert from_folder == sorted(GOOD + BAD)
    assert [Path(s.path).name for s in list_sources(cfg, [str(corpus / "carphone*.mp4")])] == [
        "carphone.mp4", "carphone_copy.mp4", "carphone_dark.mp4"]
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"path": str(corpus / "frozen.mp4"), "caption": "a still"}) + "\n"
                        + json.dumps({"path": "raw/carphone.mp4"}) + "\n")
    (tmp_path / "raw").symlink_to(corpus)
    listed = list_sources(cfg, [manifest])
    assert [s.path for s in listed] == sorted(s.path for s in listed)
    assert {Path(s.path).name: s.caption for s in listed} == {
        "carphone.mp4": "a man talks on a phone in a car", "frozen.mp4": "a still"}  # the sidecar fills a gap


@pytest.mark.parametrize("case, match", [
    ("nothing", "no inputs given"),
    ("missing", "does not exist"),
    ("no videos", "no videos found"),
    ("glob", "matches no file"),
    ("out is a file", "is a file"),
])
def test_bad_inputs_are_refused_before_any_work(case, match, corpus, tmp_path):
    cfg = fast_config()
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {"nothing": [], "missing": [tmp_path / "nope"], "no videos": [empty], "glob": [str(tmp_path / "*.mkv")],
             "out is a file": [corpus]}[case]
    if case == "out is a file":
        out.write_text("x")
    with pytest.raises(ValueError, match=match):
        check_inputs(cfg, out, paths)
    assert not (out / "cache").exists()


@pytest.mark.parametrize("override, match", [
    ("nosuch.field=1", "unknown config field 'nosuch'"),
    ("run.workers=0", "run.workers"),
    ("run.executor=spark", "run.executor"),
    ("split.detector=magic", "split.detector"),
])
def test_bad_config_is_refused_naming_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        fast_config(override)


@pytest.mark.slow  # builds and steps a tiny model: ~10 s
def test_openwan_train_runs_on_the_curated_manifest(fast_run, tmp_path, one_thread):
    """The manifest is a training manifest as written: a tiny random-weight DiT trains two steps on it, reading
    the kept clips' ranges and crops through the data layer."""
    from openwan.cli.main import main
    from openwan.train import read_metrics

    manifest = fast_run.manifest
    assert len(read_manifest(manifest)) >= 2
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"""
model: {{preset: tiny, vae: tiny, text_encoder: tiny, tokenizer: byt5}}
data: {{manifest: {manifest}, fps: 8, num_workers: 0}}
stages: [{{steps: 2, batch_size: 1, buckets: [[5, 32, 32]]}}]
log: {{progress: false, tensorboard: false}}
checkpoint: {{every: 0, keep_last: 1}}
output_dir: {run}
""")
    argv = ["train", "--config", str(config)]
    assert main(argv) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


KILL_CHILD = """
import sys, time
from pathlib import Path
from openwan.curate import curate, load_config, pipeline
from openwan.fileio import atomic_write

config, raw, out, mode = sys.argv[1:5]
cfg = load_config(config, {overrides!r})
if mode == "kill":  # freeze half-way through writing the third clip's cache entry, for the parent to SIGKILL
    written = []
    write_json = pipeline._write_json

    def write(path, data):
        if path.parent.name == "clips":
            written.append(path)
            if len(written) == 3:
                def half(tmp):
                    Path(tmp).write_text('{{"values": {{"half')
                    print("READY", flush=True)
                    time.sleep(600)
                atomic_write(path, half)
        write_json(path, data)

    pipeline._write_json = write
curate(cfg, out, paths=[raw])
print("DONE")
"""


@pytest.mark.slow
def test_a_sigkilled_run_rerun_writes_what_an_uninterrupted_run_writes(corpus, tmp_path):
    """SIGKILL in the middle of writing a clip's cache entry (a half-written temporary file left behind), then a
    rerun: the same manifest.parquet and clips.parquet bytes as a run never interrupted, and no temporary file."""
    from train.test_train_resume import _run_child

    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD.format(overrides=QUIET))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run_child([str(script), str(FAST), str(corpus), str(whole), "run"], kill_on_ready=False)
    _run_child([str(script), str(FAST), str(corpus), str(killed), "kill"], kill_on_ready=True)
    assert len(list((killed / "cache" / "clips").glob("*.json"))) == 2
    assert list((killed / "cache" / "clips").glob(".*~*"))  # the killed writer's temporary file
    assert not (killed / "manifest.parquet").exists()
    _run_child([str(script), str(FAST), str(corpus), str(killed), "run"], kill_on_ready=False)
    for name in TABLES:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert not list((killed / "cache").rglob(".*~*"))


@pytest.mark.slow
def test_the_default_config_runs_every_stage_on_the_corpus(corpus, tmp_path):
    """TransNetV2, OCR, NSFW, the quality score, embeddings, subsets, dedup and clusters, on the corpus: each
    stage's columns are in the table and the planted defects come out as planted. (The overlay stage and the
    shake limit stay out of the way here, so the duplicate pair both reach deduplication.)"""
    cfg = load_config(REPO / "configs" / "curate-default.yaml",
                      [*QUIET, "overlay.enabled=false", "motion.reject_tiers=[]"])
    assert cfg.split.detector == "transnetv2" and cfg.ocr.enabled and cfg.nsfw.enabled
    result = curate(cfg, tmp_path / "out", paths=[corpus])
    clips = {Path(c["source"]).stem + "#" + str(round(c["start"], 1)): c for c in _rows(result.clips)}
    for column in ("limits_short_side", "borders_bars", "exposure_mean_luma", "blur_focus", "ocr_text_coverage",
                   "nsfw_score", "motion_tier", "quality_score", "embed_vector", "subset_i2v", "dedup_phash",
                   "dedup_group", "cluster_id", "captions_missing"):
        assert all(column in c for c in clips.values()), column
    assert set(clips) >= {"bunny_cut#0.0", "bunny_cut#2.4", "carphone#0.0", "carphone_copy#0.0",
                          "carphone_dark#0.0", "bikes_letterbox#0.0", "frozen#0.0"}
    assert clips["bikes_letterbox#0.0"]["crop"] == [0, 22, 320, 158]  # the 22 px bars of the letterbox
    assert any(r.startswith("Underexposed") for r in clips["carphone_dark#0.0"]["reasons"])
    assert clips["frozen#0.0"]["motion_tier"] == "static"
    pair = [clips["carphone#0.0"], clips["carphone_copy#0.0"]]
    duplicate = [c for c in pair if c["dedup_of"]]
    assert len(duplicate) == 1 and duplicate[0]["decision"] == "rejected"
    assert duplicate[0]["dedup_of"] in {c["clip_id"] for c in pair}
    assert all(c["ocr_text_coverage"] < 0.05 and c["nsfw_score"] < 0.5 for c in clips.values())
    print({k: round(v, 1) for k, v in result.seconds.items()}, result.counts)


def test_the_ready_configs_load_and_the_default_one_lists_the_defaults():
    assert load_config(REPO / "configs" / "curate-default.yaml") == load_config(None)
    fast = load_config(FAST)
    assert fast.split.detector == "content" and not fast.ocr.enabled and not fast.nsfw.enabled


def test_caches_are_keyed_by_content_or_by_path_size_and_time(corpus, tmp_path):
    from openwan.curate.pipeline import source_key

    copy = tmp_path / "renamed.mp4"
    copy.write_bytes((corpus / "frozen.mp4").read_bytes())
    by_content, by_stat = fast_config(), fast_config("run.hash_content=false")
    assert source_key(str(copy), by_content) == source_key(str(corpus / "frozen.mp4"), by_content)
    assert source_key(str(copy), by_stat) != source_key(str(corpus / "frozen.mp4"), by_stat)
    before = source_key(str(copy), by_stat)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert source_key(str(copy), by_stat) != before


def test_rejections_are_counted_by_kind():
    from openwan.curate.report import reason_kind

    assert reason_kind("the camera shakes: jitter 0.0027 frame diagonals per frame (limit 0.002).") == reason_kind(
        "the camera shakes: jitter 0.0031 frame diagonals per frame (limit 0.002).")
    assert reason_kind("near-duplicate of a-1f2e3d4c#0.000-2.000 (hash distance 2 <= 10)") == "near-duplicate of N"


def test_reencoded_clips_are_their_own_files_in_the_manifest(corpus, tmp_path):
    from openwan.curate.probe import probe

    out = tmp_path / "out"
    paths = [corpus / "frozen.mp4", corpus / "bunny_cut.mp4"]
    result = curate(fast_config("split.reencode=true", "overlay.enabled=false"), out, paths=paths)
    kept = [c for c in _rows(result.clips) if c["decision"] == "kept"]
    records = read_manifest(result.manifest)
    assert len(records) == len(kept) >= 2
    for record, clip in zip(records, kept):
        assert record.start is None and record.end is None
        assert Path(record.path) == out / clip["clip_path"] and record.path.startswith(str(out / "clips"))
        assert abs(probe(record.path)["frames"] - clip["frames"]) <= 1  # the clip's frames, re-encoded
    assert result.computed["reencode"] == len(kept)
    assert curate(fast_config("split.reencode=true", "overlay.enabled=false"), out, paths=paths).computed == {
        "split": 0, "clips": 0, "captions": 0, "reencode": 0}
