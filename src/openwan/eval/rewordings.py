"""Reworded prompts: the synthetic shapes' attributes phrased the way a new user phrases them, held out of training.

The dataset's captions come from fixed templates (:func:`openwan.data.synthetic.make_caption`); a user writes "a
purple ball floating upwards", "red square moving downward slowly", "moving left, a green triangle" or "a blue
square that does not move". :data:`REWORDED` holds such prompts with the colour, shape and motion each one asks
for, written out rather than parsed, since the detector's verdicts are compared with them. They use other verbs
(floating, ascending, rising, sinking, heading, travelling, rolling, ...), trailing phrases ("of the frame",
"across the screen", "slowly"), other word orders, articles, plurals and adjectives ("a small", "bright"), and
negations of motion ("does not move", "motionless", "stationary").

Neither caption grammar (``templates`` or ``varied``, :func:`openwan.data.synthetic.can_generate`) produces any of
them, so no training caption is one of them; they cover every colour, shape noun and motion, on the training
combinations and on the held-out ones (:func:`reworded_split`). ``openwan eval prompts --prompt-set reworded``
measures prompt following on them.
"""

from __future__ import annotations

from collections.abc import Iterable

from openwan.data.synthetic import is_held_out, normalize_caption

# (prompt, colour, shape, motion)
REWORDED: tuple[tuple[str, str, str, str], ...] = (
    # up
    ("a purple ball floating upwards", "purple", "circle", "up"),
    ("a blue circle ascending", "blue", "circle", "up"),
    ("green square rising toward the top of the frame", "green", "square", "up"),
    ("a small yellow triangle drifting up slowly", "yellow", "triangle", "up"),
    ("moving up, a white box", "white", "square", "up"),
    ("the red disc climbs to the top", "red", "circle", "up"),
    ("bright purple triangle heading upward", "purple", "triangle", "up"),
    ("a white triangle rising steadily", "white", "triangle", "up"),
    ("one blue triangle gliding up the frame", "blue", "triangle", "up"),
    ("a tiny red square travelling upwards across the screen", "red", "square", "up"),
    ("yellow balls floating up", "yellow", "circle", "up"),
    ("upward motion of a green disc", "green", "circle", "up"),
    ("A green triangle goes up.", "green", "triangle", "up"),
    # down
    ("red square moving downward slowly", "red", "square", "down"),
    ("a blue ball sinking", "blue", "circle", "down"),
    ("the white triangle falls to the bottom of the frame", "white", "triangle", "down"),
    ("a purple box descending slowly", "purple", "square", "down"),
    ("yellow circle dropping down the screen", "yellow", "circle", "down"),
    ("sliding down, a green ball", "green", "circle", "down"),
    ("a big yellow triangle heading downwards", "yellow", "triangle", "down"),
    ("bright white disc sinking toward the bottom", "white", "circle", "down"),
    ("a green square travelling down the frame", "green", "square", "down"),
    ("the blue triangle is moving down", "blue", "triangle", "down"),
    ("purple circle going downward across the frame", "purple", "circle", "down"),
    ("a yellow box drifting down gently", "yellow", "square", "down"),
    ("small blue squares moving downwards", "blue", "square", "down"),
    # left
    ("a red ball moving to the left of the frame", "red", "circle", "left"),
    ("moving left, a green triangle", "green", "triangle", "left"),
    ("a blue box sliding left slowly", "blue", "square", "left"),
    ("yellow disc drifting leftwards across the screen", "yellow", "circle", "left"),
    ("the white square heads to the left", "white", "square", "left"),
    ("a purple triangle gliding toward the left side", "purple", "triangle", "left"),
    ("a small red triangle travelling left", "red", "triangle", "left"),
    ("bright green ball going left", "green", "circle", "left"),
    ("a blue circle moving from right to left", "blue", "circle", "left"),
    ("white ball rolling left", "white", "circle", "left"),
    ("a yellow square that keeps moving left", "yellow", "square", "left"),
    ("a purple disc, sliding to the left", "purple", "circle", "left"),
    ("Green box goes leftward.", "green", "square", "left"),
    # right
    ("a yellow square moving to the right of the frame", "yellow", "square", "right"),
    ("a red ball drifting off to the right", "red", "circle", "right"),
    ("the purple disc slides to the right slowly", "purple", "circle", "right"),
    ("sliding right, a blue triangle", "blue", "triangle", "right"),
    ("a white triangle heading rightwards", "white", "triangle", "right"),
    ("a small green circle travelling to the right across the frame", "green", "circle", "right"),
    ("bright red triangle gliding right", "red", "triangle", "right"),
    ("a blue square moving from left to right", "blue", "square", "right"),
    ("yellow ball going right steadily", "yellow", "circle", "right"),
    ("the green triangle is sliding towards the right edge", "green", "triangle", "right"),
    ("a purple ball rolling to the right", "purple", "circle", "right"),
    ("white disc heads rightward.", "white", "circle", "right"),
    ("a tiny purple triangle travelling right", "purple", "triangle", "right"),
    # still
    ("a blue square that does not move", "blue", "square", "still"),
    ("a motionless red ball", "red", "circle", "still"),
    ("a green triangle, not moving", "green", "triangle", "still"),
    ("stationary yellow box in the middle of the frame", "yellow", "square", "still"),
    ("a white circle standing still", "white", "circle", "still"),
    ("the purple square stays in place", "purple", "square", "still"),
    ("a small blue disc that doesn't move", "blue", "circle", "still"),
    ("bright red triangle resting motionless", "red", "triangle", "still"),
    ("not moving, a yellow triangle", "yellow", "triangle", "still"),
    ("a green box sitting still in the frame", "green", "square", "still"),
    ("a purple ball that is completely still", "purple", "circle", "still"),
    ("white triangle, stationary", "white", "triangle", "still"),
    ("a static blue triangle", "blue", "triangle", "still"),
    ("white box holding still", "white", "square", "still"),
    ("a yellow circle not moving at all", "yellow", "circle", "still"),
    ("an unmoving green disc", "green", "circle", "still"),
)


def reworded_prompts() -> list[str]:
    """The prompts of :data:`REWORDED`, in order."""
    return [prompt for prompt, *_ in REWORDED]


def reworded_targets() -> list[tuple[str, str, str]]:
    """(colour, shape, motion) of each prompt of :data:`REWORDED`, in order."""
    return [(colour, shape, motion) for _, colour, shape, motion in REWORDED]


def reworded_split() -> dict[str, int]:
    """How many reworded prompts ask for a training combination and how many for a held-out one."""
    held = sum(is_held_out(*target) for target in reworded_targets())
    return {"train": len(REWORDED) - held, "heldout": held}


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The runs of ``n`` consecutive words of ``text`` (normalized; a comma counts as a word)."""
    words = normalize_caption(text).replace(",", " ,").split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(prompts: Iterable[str], captions: Iterable[str], n: int) -> float:
    """The share of the distinct ``n``-word runs of ``prompts`` that some caption of ``captions`` holds too: how
    much of the prompts' phrasing training captions have shown, short of whole prompts."""
    wanted = set().union(*(word_ngrams(p, n) for p in prompts))
    seen = set().union(*(word_ngrams(c, n) for c in captions))
    return len(wanted & seen) / len(wanted) if wanted else 0.0


__all__ = ["REWORDED", "reworded_prompts", "reworded_targets", "reworded_split", "word_ngrams", "ngram_overlap"]
