"""The reworded prompts: what they ask for, what they cover, that no training caption is one of them, and
`openwan eval prompts --prompt-set reworded`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_prompts import _cli

from openwan.checkpoints.release import save_release
from openwan.data.synthetic import (
    COLOURS,
    MAX_CAPTION_CHARS,
    MOTIONS,
    SHAPE_NOUNS,
    can_generate,
    combinations,
    is_held_out,
    make_caption,
    parse_caption,
    render_clip,
    split_combinations,
)
from openwan.eval.prompts import evaluate_prompts, prompt_set
from openwan.eval.rewordings import REWORDED, ngram_overlap, reworded_prompts, reworded_split, reworded_targets
from openwan.pipelines import WanOutput
from openwan.pipelines.defaults import FAMILY_DEFAULTS
from tiny import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rewordings_parse_to_their_targets():
    for prompt, *target in REWORDED:
        assert parse_caption(prompt) == tuple(target), prompt


def test_rewordings_cover_every_value_on_training_and_held_out_combinations():
    assert len(REWORDED) >= 60 and len(set(reworded_prompts())) == len(REWORDED)
    targets = reworded_targets()
    assert {c for c, _, _ in targets} == set(COLOURS) and {m for _, _, m in targets} == set(MOTIONS)
    assert {(c, m) for c, _, m in targets} == {(c, m) for c in COLOURS for m in MOTIONS}
    words = {w for p in reworded_prompts() for w in p.lower().replace(",", " ").split()}
    assert {n for nouns in SHAPE_NOUNS.values() for n in nouns} <= words  # every shape noun, synonyms included
    assert set(split_combinations("heldout")) <= set(targets)  # every held-out combination
    assert reworded_split() == {"train": 50, "heldout": 18}
    assert reworded_split()["heldout"] == sum(is_held_out(*t) for t in targets)


def test_rewordings_fit_the_demo_models_text_length():
    assert max(len(p) for p in reworded_prompts()) <= MAX_CAPTION_CHARS


def test_no_rewording_is_a_caption_either_grammar_writes():
    for prompt in reworded_prompts():
        assert not can_generate(prompt, "templates") and not can_generate(prompt, "varied"), prompt
    # the check finds what the grammars do write, rewordings' neighbours included
    rng = np.random.default_rng(7)
    for kind in ("templates", "varied"):
        for i in range(150):
            assert can_generate(make_caption(*combinations()[i % 90], rng, kind), kind)
    assert can_generate("A purple ball floating towards the top.", "varied")
    assert can_generate("a blue circle ascending to the top", "varied")
    assert not can_generate("a blue circle ascending to the top", "templates")


def test_training_captions_share_little_of_the_rewordings_phrasing():
    """Words, yes (the grammar is built from the rewordings' kinds of phrasing); runs of four words, seldom."""
    rng = np.random.default_rng(0)
    varied = [make_caption(*combinations()[i % 90], rng, "varied") for i in range(2500)]
    templates = [make_caption(*combinations()[i % 90], rng) for i in range(2500)]
    prompts = reworded_prompts()
    assert ngram_overlap(prompts, varied, 1) > 0.9
    assert ngram_overlap(prompts, varied, 4) < 0.35
    assert ngram_overlap(prompts, templates, 4) < ngram_overlap(prompts, varied, 4) < ngram_overlap(prompts, varied, 3)


def test_prompt_sets():
    prompts, targets = prompt_set("reworded")
    assert prompts == reworded_prompts() and targets == reworded_targets()
    prompts, targets = prompt_set("heldout")
    assert targets == split_combinations("heldout") == [parse_caption(p) for p in prompts]
    with pytest.raises(ValueError, match="unknown prompt set 'fancy'"):
        prompt_set("fancy")


class TargetPipe:
    """Stands in for a model that does what each reworded prompt asks for (``REWORDED``'s attributes)."""

    defaults = FAMILY_DEFAULTS["tiny"]
    wanted = {prompt: (colour, shape, motion) for prompt, colour, shape, motion in REWORDED}

    def __call__(self, prompt, negative_prompt=None, *, task, size, frame_num, seed, **kwargs):
        video = render_clip(*self.wanted[prompt], seed=seed, frames=frame_num or 17)
        return WanOutput(video=video, latents=torch.zeros(1))


def test_evaluate_prompts_scores_against_the_given_targets(tmp_path):
    picks = [0, 1, 13, 17, 52]  # training and held-out combinations
    prompts, targets = [reworded_prompts()[i] for i in picks], [reworded_targets()[i] for i in picks]
    assert {is_held_out(*t) for t in targets} == {True, False}
    report = evaluate_prompts(TargetPipe(), tmp_path, prompts=prompts, targets=targets, seeds=[0],
                              save_videos=False, progress=False)
    assert report["accuracy"] == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}
    held = sum(is_held_out(*t) for t in targets)
    assert report["accuracy_by_split"] == {
        "train": {"num_videos": len(picks) - held, "colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0},
        "heldout": {"num_videos": held, "colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}}
    # a wrong target is counted wrong: the targets given are what the videos are judged by
    wrong = [("white", *targets[0][1:]), *targets[1:]]
    report = evaluate_prompts(TargetPipe(), tmp_path / "wrong", prompts=prompts, targets=wrong, seeds=[0],
                              save_videos=False, progress=False)
    assert report["accuracy"]["colour"] == pytest.approx(1 - 1 / len(picks))
    assert report["samples"][0]["target"] == {"colour": "white", "shape": "circle", "motion": "up"}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(targets=[("red", "circle", "up")]), "without their prompts"),
    (dict(prompts=["a blue ball sinking", "a red ball"], targets=[("blue", "circle", "down")]),
     "one target per prompt"),
    (dict(prompts=["a blue ball sinking"], targets=[("navy", "circle", "down")]), "the target of prompt"),
    (dict(prompts=["a blue ball sinking"], targets=[("blue", "circle")]), "give \\(colour, shape, motion\\)"),
])
def test_bad_targets_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_prompts(TargetPipe(), tmp_path, seeds=[0], progress=False, **kwargs)


def test_cli_reworded_prompt_set(tmp_path, capsys):
    release = save_release(tmp_path / "release", **tiny_components("tiny"))
    out = tmp_path / "report"
    code = _cli("prompts", "--ckpt-dir", str(release), "--prompt-set", "reworded", "--seeds", "0", "--limit", "2",
                "--size", "32*32", "--frame-num", "5", "--sample-steps", "2", "--device", "cpu", "--no-videos",
                "--out", str(out))
    assert code == 0 and "2 videos: colour" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == reworded_prompts()[:2]
    assert [tuple(s["target"].values()) for s in report["samples"]] == reworded_targets()[:2]
    with pytest.raises(SystemExit):  # a prompt set or prompts, not both
        _cli("prompts", "--ckpt-dir", str(release), "--out", str(out), "--prompt-set", "reworded",
             "--prompts", "a red circle moving to the left")
