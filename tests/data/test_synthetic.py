"""The synthetic shapes dataset: the held-out split, captions that parse back, clips, files and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from openwan.cli import data as data_cmd
from openwan.data.manifest import read_manifest
from openwan.data.synthetic import (
    COLOURS,
    DIRECTED_VERBS,
    DIRECTION_FORMS,
    DIRECTION_PHRASES,
    MAX_CAPTION_CHARS,
    MOTION_VERBS,
    MOTIONS,
    SHAPE_NOUNS,
    SHAPES,
    UNWRITTEN_PAIRS,
    VARIED_GRAMMAR,
    VERBS,
    can_generate,
    combinations,
    dataset_combinations,
    heldout_prompts,
    is_held_out,
    make_caption,
    make_dataset,
    parse_caption,
    render_clip,
    sample_layout,
    shape_coverage,
    split_combinations,
)
from openwan.data.video import probe_video

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------------ split


def test_held_out_split_keeps_every_value_and_pair_in_training():
    held, train = split_combinations("heldout"), split_combinations("train")
    assert len(held) + len(train) == len(combinations()) == 90
    assert len(held) / 90 >= 0.2 and set(held).isdisjoint(train)
    assert all(is_held_out(*c) for c in held) and not any(is_held_out(*c) for c in train)
    for i, values in enumerate((COLOURS, SHAPES, MOTIONS)):
        assert {c[i] for c in train} == set(values)
    for i, j in itertools.combinations(range(3), 2):  # every pair of attribute values is seen in training
        assert {(c[i], c[j]) for c in train} == {(c[i], c[j]) for c in combinations()}
    assert Counter((c, s) for c, s, _ in held) == Counter({(c, s): 1 for c in COLOURS for s in SHAPES})


def test_heldout_prompts_name_the_held_out_combinations():
    prompts = heldout_prompts()
    assert [parse_caption(p) for p in prompts] == split_combinations("heldout")
    assert "a red circle moving to the left" in prompts


# ---------------------------------------------------------------------------------------------- captions


def test_thousands_of_captions_parse_back_to_their_attributes():
    rng = np.random.default_rng(0)
    combos = combinations()
    captions = set()
    for i in range(5000):
        attrs = combos[i % len(combos)]
        caption = make_caption(*attrs, rng)
        assert parse_caption(caption) == attrs, caption
        captions.add(caption)
    assert len(captions) > 2500  # phrasing really varies
    words = set(" ".join(captions).replace(",", " ").split())
    vocabulary = {w for nouns in SHAPE_NOUNS.values() for w in nouns} | {w for pair in VERBS for w in pair}
    vocabulary |= {w for phrases in DIRECTION_PHRASES.values() for p in phrases for w in p.split()}
    vocabulary |= {"stationary", "still", "not", "stays", "a", "the"} | set(COLOURS)
    assert vocabulary <= words


# The templates' captions as the code that made the bundled model wrote them: the first of them for dataset seeds 1
# (train) and 0 (held out), and a digest of 3,000 drawn from one generator.
TEMPLATE_CAPTIONS = {
    ("train", 1): ["white box that drifts to the left", "the blue box that slides leftwards",
                   "red triangle drifts upward", "white triangle that is not moving", "the green disc slides leftwards",
                   "the box in white sliding downwards", "the box in green moving rightwards",
                   "the ball in white sliding downwards"],
    ("heldout", 0): ["the square in blue traveling right", "white triangle that glides upwards",
                     "purple ball, moving left", "red box that glides downwards",
                     "the green circle that is not moving", "yellow box slides left",
                     "the yellow circle that drifts towards the top", "a triangle in purple moving rightwards"],
}
TEMPLATE_DIGEST = "29abe68f65d1539bc6d97e94ba8b24d0b30f6e9afcbe834b10ad37549072c96d"


def test_template_captions_are_unchanged():
    rng = np.random.default_rng(0)
    captions = [make_caption(*combinations()[i % 90], rng) for i in range(3000)]
    assert hashlib.sha256("\n".join(captions).encode()).hexdigest() == TEMPLATE_DIGEST
    rng = np.random.default_rng(0)
    assert [make_caption(*combinations()[i % 90], rng, captions="templates") for i in range(3000)] == captions


def test_thousands_of_varied_captions_parse_back_to_their_attributes():
    rng = np.random.default_rng(1)
    combos = combinations()
    captions = [make_caption(*combos[i % 90], rng, captions="varied") for i in range(6000)]
    for i, caption in enumerate(captions):
        assert parse_caption(caption) == combos[i % 90], caption
    assert len(set(captions)) > 5500 and max(map(len, captions)) <= MAX_CAPTION_CHARS
    text = " ".join(c.lower() for c in captions)
    words = set(text.replace(",", " ").replace(".", " ").split())
    for lemma, (v3, ving) in [*MOTION_VERBS.items(), *(p for verbs in DIRECTED_VERBS.values() for p in verbs.items())]:
        assert set(v3) | set(ving) <= words, lemma
    for phrases in (p for forms in DIRECTION_FORMS.values() for p in forms.values()):
        assert any(p in text for p in phrases), phrases
    for symbol in ("still_phrase", "still_comma", "still_before", "adverb", "moving_where", "tone", "size"):
        assert all(option in text for option in VARIED_GRAMMAR[symbol]), symbol
    assert sum(c.endswith(".") for c in captions) > 600  # the formal style
    # the pairs left unwritten are absent, the others present
    assert {("float", "adverb"), ("rise", "alone")} <= UNWRITTEN_PAIRS
    assert "floating upwards" not in text and "rising steadily" not in text
    assert re.search(r"floating towards? the", text) and re.search(r"rising (up|to|towards?) ", text)


def test_varied_captions_need_a_known_kind():
    with pytest.raises(ValueError, match="captions must be one of templates, varied"):
        make_caption("red", "circle", "left", np.random.default_rng(0), captions="fancy")


def test_can_generate_reads_the_templates():
    assert can_generate("a red circle moving to the left") and can_generate("Purple disc, not moving.")
    assert not can_generate("a red circle moving to the left slowly")
    assert can_generate("a red circle moving to the left slowly", "varied")
    assert not can_generate("a red circle moving left slowly", "varied")  # ("move", "adverb") is unwritten
    assert can_generate("a red circle moving slowly left", "varied")


@pytest.mark.parametrize(("caption", "attrs"), [
    ("a red circle moving to the left", ("red", "circle", "left")),
    ("red ball sliding leftward", ("red", "circle", "left")),
    ("a box, blue, drifting up", ("blue", "square", "up")),
    ("a green triangle that stays still", ("green", "triangle", "still")),
    ("The purple disc is not moving.", ("purple", "circle", "still")),
    ("a stationary white box", ("white", "square", "still")),
    ("yellow ball glides towards the bottom", ("yellow", "circle", "down")),
    ("a blue circle moving from right to left", ("blue", "circle", "left")),
    ("white disc heading from the bottom to the top", ("white", "circle", "up")),
    ("a blue square that does not move", ("blue", "square", "still")),
    ("a blue disc that doesn't move", ("blue", "circle", "still")),
    ("a box that never moves, green", ("green", "square", "still")),
    ("the purple square stays put", ("purple", "square", "still")),
    ("red balls sinking", ("red", "circle", "down")),
    ("a bright green disk ascending", ("green", "circle", "up")),
])
def test_issue_phrasings_parse(caption, attrs):
    assert parse_caption(caption) == attrs


@pytest.mark.parametrize("caption", ["a red blue circle moving left", "a red circle", "a red thing moving up",
                                     "a red circle moving left and up", "a red ball moving left, then still"])
def test_ambiguous_captions_are_rejected(caption):
    with pytest.raises(ValueError, match="exactly one"):
        parse_caption(caption)


# ------------------------------------------------------------------------------------------------ clips


def test_render_is_deterministic_and_seed_dependent():
    a = render_clip("red", "circle", "left", seed=3)
    assert a.shape == (17, 64, 64, 3) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, render_clip("red", "circle", "left", seed=3))
    assert not torch.equal(a, render_clip("red", "circle", "left", seed=4))
    assert render_clip("white", "triangle", "up", seed=0, size=(96, 64), frames=5).shape == (5, 64, 96, 3)


def _in_frame(layout) -> bool:
    """The whole bounding box is in frame at both ends of the path."""
    boxes = [layout.box(t) for t in (0, layout.frames - 1)]
    return all(left >= 0 and top >= 0 and right <= layout.width and bottom <= layout.height
               for left, top, right, bottom in boxes)


@pytest.mark.parametrize("paths", ["long", "reversible"])
@pytest.mark.parametrize("motion", MOTIONS)
def test_object_stays_whole_in_frame_and_moves_as_named(motion, paths):
    for seed, shape in itertools.product(range(8), SHAPES):
        layout = sample_layout("blue", shape, motion, seed, size=(64, 80), frames=9, paths=paths)
        assert _in_frame(layout)
        # Nothing is cut off: on a canvas padded by 20 pixels all round, the drawn area is the same.
        padded = replace(layout, width=layout.width + 40, height=layout.height + 40,
                         start=tuple(v + 20 for v in layout.start), end=tuple(v + 20 for v in layout.end))
        for t in range(layout.frames):
            assert torch.allclose(shape_coverage(layout, t).sum(), shape_coverage(padded, t).sum())
        dx, dy = (e - s for s, e in zip(layout.start, layout.end))
        expected = {"left": (dx < 0, dy == 0), "right": (dx > 0, dy == 0), "up": (dx == 0, dy < 0),
                    "down": (dx == 0, dy > 0), "still": (dx == 0, dy == 0)}[motion]
        assert all(expected)
        if paths == "long":
            assert motion == "still" or max(abs(dx) / layout.width, abs(dy) / layout.height) >= 0.25
        else:  # shorter, and the start does not give the direction away: the reverse path fits as well
            assert motion == "still" or max(abs(dx) / layout.width, abs(dy) / layout.height) >= 0.15
            reverse = replace(layout, end=(2 * layout.start[0] - layout.end[0], 2 * layout.start[1] - layout.end[1]))
            assert _in_frame(reverse)


def test_paths_choose_how_much_the_start_tells():
    """Long paths: a right mover starts in the left part of the frame, a left mover in the right. Reversible
    paths: the starts of both directions spread over the same middle band."""
    def starts(motion, paths):
        return np.array([sample_layout("red", "circle", motion, seed, paths=paths).start[0] for seed in range(300)])

    assert starts("right", "long").max() < starts("left", "long").min()
    right, left = starts("right", "reversible"), starts("left", "reversible")
    assert abs(right.mean() - left.mean()) < 1.0 and abs(right.mean() - 32) < 1.0
    assert right.std() > 2.0  # the start still varies
    with pytest.raises(ValueError, match="paths must be one of long, reversible"):
        sample_layout("red", "circle", "left", 0, paths="short")


def test_wrap_paths_keep_their_speed_at_any_length_and_wrap_around():
    """paths="wrap": a 49-frame clip runs at the speed its 17-frame twin has (a reversible path's), keeps the
    object whole on the torus in every frame, and carries it past the edge and back in by the other side."""
    wrapped = 0
    for seed, shape, motion in itertools.product(range(6), SHAPES, MOTIONS):
        short = sample_layout("green", shape, motion, seed, frames=17, paths="wrap")
        long = sample_layout("green", shape, motion, seed, frames=49, paths="wrap")
        assert long.wrap and long.start == short.start
        velocity = [(e - s) / (lay.frames - 1) for lay in (short, long) for s, e in zip(lay.start, lay.end)]
        assert velocity[:2] == pytest.approx(velocity[2:])
        if motion != "still":  # a reversible path's per-frame speed: 35-50% of the room over 16 frames
            speed = max(map(abs, velocity[2:]))
            assert 0.35 * 0.5 * 64 / 16 < speed < 0.5 * 64 / 16
        areas = torch.stack([shape_coverage(long, t).sum() for t in range(long.frames)])
        # Never cut off (sub-pixel anti-aliasing aside): what leaves by one edge enters by the other.
        assert torch.allclose(areas, areas[0], rtol=3e-3)
        xs = [long.centre(t)[0] for t in range(long.frames)] + [long.centre(t)[1] for t in range(long.frames)]
        assert all(0 <= v < 64 for v in xs)
        wrapped += any(abs(a - b) > 32 for a, b in zip(xs[1:long.frames], xs[:long.frames - 1]))
        wrapped += any(abs(a - b) > 32 for a, b in zip(xs[long.frames + 1:], xs[long.frames:-1]))
    assert wrapped >= 0.4 * 6 * len(SHAPES) * 4  # most moving objects cross an edge within 49 frames


def test_background_is_never_an_object_colour():
    palette = torch.tensor(list(COLOURS.values()))  # [6, 3]
    for seed in range(200):
        corners = render_clip("red", "circle", "still", seed, frames=2)[0, [0, 0, -1, -1], [0, -1, 0, -1]]  # [4, 3]
        assert torch.cdist(corners, palette).min() > 0.3, sample_layout("red", "circle", "still", seed)


def test_bad_attributes_and_sizes_are_user_errors():
    with pytest.raises(ValueError, match="unknown colour"):
        render_clip("orange", "circle", "left", 0)
    with pytest.raises(ValueError, match="unknown shape"):
        render_clip("red", "hexagon", "left", 0)
    with pytest.raises(ValueError, match="even"):
        render_clip("red", "circle", "left", 0, size=63)
    with pytest.raises(ValueError, match="split"):
        split_combinations("test")


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_combinations_are_balanced():
    combos = dataset_combinations(144, seed=5)
    assert Counter(combos) == Counter({c: 2 for c in split_combinations("train")})
    assert combos != dataset_combinations(144, seed=6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_dataset(root / "a", 8, seed=1), make_dataset(root / "b", 8, seed=1), root


def test_dataset_files_and_manifest(dataset):
    manifest, _, _ = dataset
    records = read_manifest(manifest)
    assert len(records) == 8 and len({r.id for r in records}) == 8
    for record in records:
        assert (record.frames, record.fps, record.width, record.height) == (17, 16.0, 64, 64)
        assert not is_held_out(*parse_caption(record.caption))
        assert probe_video(record.path) == {"frames": 17, "fps": 16.0, "width": 64, "height": 64}
    assert '"path": "videos/000000.mp4"' in manifest.read_text()  # stored folder-relative: the folder can move


def test_dataset_is_deterministic(dataset):
    a, b, root = dataset
    assert a.read_text() == b.read_text()
    for ra, rb in zip(read_manifest(a), read_manifest(b)):
        assert Path(ra.path).read_bytes() == Path(rb.path).read_bytes()
    other = make_dataset(root / "c", 8, seed=2)
    assert [r.caption for r in read_manifest(other)] != [r.caption for r in read_manifest(a)]


def test_dataset_captions_are_the_templates_by_default(dataset):
    manifest, _, _ = dataset
    assert [r.caption for r in read_manifest(manifest)] == TEMPLATE_CAPTIONS[("train", 1)]


def test_varied_dataset_has_the_same_clips_and_other_captions(tmp_path):
    plain = read_manifest(make_dataset(tmp_path / "plain", 4, seed=0, split="heldout", frames=5))
    varied = read_manifest(make_dataset(tmp_path / "varied", 4, seed=0, split="heldout", frames=5,
                                        captions="varied"))
    assert [r.caption for r in plain] == TEMPLATE_CAPTIONS[("heldout", 0)][:4]
    assert [r.caption for r in varied] != [r.caption for r in plain]
    for a, b in zip(plain, varied):
        assert parse_caption(a.caption) == parse_caption(b.caption)
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    with pytest.raises(ValueError, match="captions must be one of"):
        make_dataset(tmp_path / "x", 1, captions="fancy")
    assert not (tmp_path / "x").exists()


def test_heldout_split_dataset_and_parquet(tmp_path):
    manifest = make_dataset(tmp_path, 4, seed=0, split="heldout", size=(48, 32), frames=5,
                            manifest="clips.parquet")
    records = read_manifest(manifest)
    assert all(is_held_out(*parse_caption(r.caption)) for r in records)
    assert (records[0].width, records[0].height, records[0].frames) == (48, 32, 5)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.run(args)


def test_cli_synth(tmp_path, capsys):
    assert _cli("synth", "--out", str(tmp_path), "--num", "3", "--seed", "7", "--frames", "9") == 0
    assert "wrote 3 train clips" in capsys.readouterr().out
    records = read_manifest(tmp_path / "manifest.jsonl")
    assert len(records) == 3 and records[0].frames == 9
    assert _cli("synth", "--out", str(tmp_path / "rev"), "--num", "1", "--seed", "7", "--frames", "9",
                "--paths", "reversible") == 0
    assert (tmp_path / "rev" / "videos" / "000000.mp4").read_bytes() != Path(records[0].path).read_bytes()
    assert _cli("synth", "--out", str(tmp_path / "varied"), "--num", "3", "--seed", "7", "--frames", "9",
                "--captions", "varied") == 0
    assert "(varied captions)" in capsys.readouterr().out
    varied = read_manifest(tmp_path / "varied" / "manifest.jsonl")
    assert [parse_caption(r.caption) for r in varied] == [parse_caption(r.caption) for r in records]
    with pytest.raises(SystemExit):
        _cli("synth", "--out", str(tmp_path / "x"), "--num", "1", "--captions", "fancy")
    with pytest.raises(ValueError, match="jsonl or"):
        _cli("synth", "--out", str(tmp_path / "x"), "--num", "1", "--manifest", "m.csv")
    with pytest.raises(ValueError, match="--size"):
        _cli("synth", "--out", str(tmp_path / "x"), "--num", "1", "--size", "big")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ the text encoder's corpus


def test_text_pretraining_labels_the_varied_vocabulary(tmp_path, monkeypatch):
    """recipes/demo_text.py: its corpus follows the data's phrasing, and its vocabulary heads' labels name what
    each new verb, direction phrase and way of not moving means."""
    from demo_text import ATTRIBUTES, attribute_labels, caption_corpus, caption_kind, pretrained_text_encoder

    corpus = caption_corpus(400, seed=3, captions="varied")
    assert not any(is_held_out(*parse_caption(c)) for c in corpus) and len(set(corpus)) > 380
    assert caption_corpus(400, seed=3) != corpus and caption_corpus(400, seed=3, captions="varied") == corpus
    combos, rng = split_combinations("train"), np.random.default_rng(0)
    captions = [make_caption(*combos[i % 72], rng, "varied") for i in range(720)]
    expected = [[list(values).index(v) for values, v in zip(ATTRIBUTES.values(), combos[i % 72])] for i in range(720)]
    assert attribute_labels(captions).tolist() == expected
    motion = list(ATTRIBUTES).index("motion")
    for direction, verbs in DIRECTED_VERBS.items():
        for v3, ving in verbs.values():
            labels = attribute_labels([f"a red ball {v}" for v in (*v3, *ving)])[:, motion]
            assert labels.tolist() == [MOTIONS.index(direction)] * len(v3 + ving)
    stills = [f"a red ball {phrase}" for phrase in VARIED_GRAMMAR["still_phrase"] + VARIED_GRAMMAR["poetic_still"]]
    assert attribute_labels(stills)[:, motion].tolist() == [MOTIONS.index("still")] * len(stills)
    # the kind: given, else CAPTIONS, else the templates; an encoder folder of another kind is refused
    monkeypatch.delenv("CAPTIONS", raising=False)
    assert caption_kind() == "templates"
    monkeypatch.setenv("CAPTIONS", "varied")
    assert caption_kind() == "varied" and caption_kind("templates") == "templates"
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="pre-trained on templates captions, not varied"):
        pretrained_text_encoder(tmp_path / "text")
    monkeypatch.setenv("CAPTIONS", "fancy")
    with pytest.raises(ValueError, match="CAPTIONS environment variable"):
        caption_kind()
