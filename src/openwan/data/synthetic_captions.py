"""The synthetic dataset's attributes and its language: colours, shapes and motions, the words and grammar its captions
are written in (:func:`make_caption`), and the reading of a caption back into attributes (:func:`parse_caption`).

Template captions vary verbs, word order and articles ("red ball sliding leftward", "a box, blue, drifting up").
Varied captions (``captions="varied"``) also come from a richer grammar (:data:`VARIED_GRAMMAR`): more verbs, some
carrying their direction ("rising", "sinking"), direction phrases ("off to the left", "from top to bottom"),
adverbs, trailing phrases ("across the frame"), adjectives, fronted predicates, many ways of not moving
("motionless", "which does not move"), and short, long, formal and poetic styles. It never writes the reworded
prompts that :mod:`openwan.eval.rewordings` holds out (:func:`can_generate` checks a caption).
:func:`parse_caption` recovers the attributes from any caption :func:`make_caption` writes, and from those.
:mod:`openwan.data.synthetic` renders the clips.
"""

from __future__ import annotations

import functools
import re

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.78, 0.20),
    "blue": (0.12, 0.30, 0.95),
    "yellow": (0.95, 0.86, 0.10),
    "white": (0.96, 0.96, 0.96),
    "purple": (0.62, 0.18, 0.85),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
SHAPE_NOUNS = {"circle": ("circle", "ball", "disc"), "square": ("square", "box"), "triangle": ("triangle",)}
# verb: (third person, -ing form)
VERBS = (("moves", "moving"), ("slides", "sliding"), ("drifts", "drifting"), ("travels", "traveling"),
         ("glides", "gliding"))
DIRECTION_PHRASES = {
    "left": ("to the left", "left", "leftward", "leftwards", "towards the left"),
    "right": ("to the right", "right", "rightward", "rightwards", "towards the right"),
    "up": ("up", "upward", "upwards", "towards the top"),
    "down": ("down", "downward", "downwards", "towards the bottom"),
}
ARTICLES = ("a", "the", "")

# {a}: article, {c}: colour, {n}: shape noun, {v}/{ving}: verb forms, {d}: direction phrase.
MOVING_TEMPLATES = (
    "{a} {c} {n} {ving} {d}",
    "{c} {n} {ving} {d}",
    "{a} {n}, {c}, {ving} {d}",
    "{a} {c} {n} that {v} {d}",
    "{a} {c} {n} {v} {d}",
    "{a} {n} in {c} {ving} {d}",
    "{c} {n}, {ving} {d}",
)
STILL_TEMPLATES = (
    "{a} {c} {n} that stays still",
    "{a} {c} {n} staying still",
    "{c} {n}, not moving",
    "{a} {c} {n} that is not moving",
    "{a} stationary {c} {n}",
    "{a} {n}, {c}, stationary",
    "{a} {n} in {c}, staying still",
    "{c} {n} stays still",
)

# The varied captions (``captions="varied"``): a quarter are the templates' captions, the rest come from a grammar
# of symbols. An alternative's {name} is replaced by one alternative of that symbol; the symbols that depend on the
# attributes (c, n, d, vd_ing, vd3) are filled by _attribute_symbols. Empty alternatives are optional parts.
CAPTION_KINDS = ("templates", "varied")
TEMPLATE_SHARE = 0.25  # of varied captions, written by the templates
FORMAL_SHARE = 0.25  # of the grammar's captions, capitalised and ended with a full stop
# Longest caption the grammar writes, in characters: the demo DiTs read 64 byte tokens, the EOS included, and a longer
# caption would lose its end (often its direction) to truncation.
MAX_CAPTION_CHARS = 63
# lemma: (third person forms, -ing forms). The verbs of DIRECTED_VERBS say the direction themselves.
MOTION_VERBS = {
    "move": (("moves",), ("moving",)), "slide": (("slides",), ("sliding",)), "drift": (("drifts",), ("drifting",)),
    "travel": (("travels",), ("traveling", "travelling")), "glide": (("glides",), ("gliding",)),
    "float": (("floats",), ("floating",)), "head": (("heads",), ("heading",)), "go": (("goes",), ("going",)),
    "shift": (("shifts",), ("shifting",)), "roll": (("rolls",), ("rolling",)), "wander": (("wanders",), ("wandering",)),
    "sail": (("sails",), ("sailing",)),
}
DIRECTED_VERBS = {
    "up": {"rise": (("rises",), ("rising",)), "ascend": (("ascends",), ("ascending",)),
           "climb": (("climbs",), ("climbing",))},
    "down": {"sink": (("sinks",), ("sinking",)), "descend": (("descends",), ("descending",)),
             "fall": (("falls",), ("falling",)), "drop": (("drops",), ("dropping",))},
}
# Direction phrases by family: adverbs, "to/towards the X", an edge or the frame named, "from X to Y", along the
# frame, "off to the X".
DIRECTION_FORMS = {
    "left": {"adverb": ("left", "leftward", "leftwards"),
             "towards": ("to the left", "towards the left", "toward the left"),
             "edge": ("to the left side", "to the left edge", "towards the left edge", "to the left of the frame",
                      "toward the left of the screen"),
             "from": ("from right to left", "from the right to the left"),
             "off": ("off to the left", "away to the left")},
    "right": {"adverb": ("right", "rightward", "rightwards"),
              "towards": ("to the right", "towards the right", "toward the right"),
              "edge": ("to the right side", "to the right edge", "towards the right edge", "to the right of the frame",
                       "toward the right of the screen"),
              "from": ("from left to right", "from the left to the right"),
              "off": ("off to the right", "away to the right")},
    "up": {"adverb": ("up", "upward", "upwards"), "towards": ("to the top", "towards the top", "toward the top"),
           "edge": ("to the top edge", "towards the top edge", "to the top of the frame",
                    "toward the top of the screen"),
           "from": ("from bottom to top", "from the bottom to the top"),
           "along": ("up the frame", "up the screen")},
    "down": {"adverb": ("down", "downward", "downwards"),
             "towards": ("to the bottom", "towards the bottom", "toward the bottom"),
             "edge": ("to the bottom edge", "towards the bottom edge", "to the bottom of the frame",
                      "toward the bottom of the screen"),
             "from": ("from top to bottom", "from the top to the bottom"),
             "along": ("down the frame", "down the screen")},
}
# (verb lemma, direction family) pairs the grammar never writes: the reworded prompts' (openwan.eval.rewordings), so
# no training caption holds those collocations. "alone": a verb that carries its direction, with no phrase after it.
UNWRITTEN_PAIRS = frozenset({
    ("move", "adverb"), ("move", "edge"), ("move", "from"), ("slide", "adverb"), ("slide", "towards"),
    ("slide", "edge"), ("drift", "adverb"), ("drift", "off"), ("head", "adverb"), ("head", "towards"),
    ("travel", "adverb"), ("travel", "towards"), ("travel", "along"), ("glide", "adverb"), ("glide", "edge"),
    ("glide", "along"), ("go", "adverb"), ("roll", "adverb"), ("roll", "towards"), ("float", "adverb"),
    ("climb", "towards"), ("rise", "alone"), ("rise", "edge"), ("ascend", "alone"), ("sink", "alone"),
    ("sink", "towards"), ("fall", "edge"), ("descend", "alone"), ("drop", "along"),
})
VARIED_GRAMMAR: dict[str, tuple[str, ...]] = {
    "moving": ("{np} {vp_ing}", "{np} that {vp3}", "{np} is {vp_ing}", "{np}, {vp_ing}", "{vp_ing}, {np}",
               "{np} {vp3}", "{video} {np} {vp_ing}", "{np} on {backdrop}, {vp_ing}", "there is {np} {vp_ing}",
               "{poetic_np} {poetic_vp}"),
    "still": ("{np} {still_phrase}", "{np}, {still_comma}", "{a} {still_before} {c} {n} {still_where}",
              "{still_first}, {np}", "{video} {np} {still_phrase}", "{np} on {backdrop}, {still_comma}",
              "there is {np} {still_phrase}", "{poetic_np} {poetic_still}"),
    "np": ("{a} {size} {tone} {c} {n}", "{a} {size} {n} in {c}"),
    "a": ("a", "the", "", "one", "a single"),
    "size": ("", "small", "little", "large", "big", "tiny"),
    "tone": ("", "bright", "vivid", "solid", "flat"),
    "video": ("a video of", "a clip of", "a short clip of", "footage of", "an animation of"),
    "backdrop": ("a grey background", "a dark background", "a plain backdrop", "a muted background"),
    "vp_ing": ("{vd_ing} {adverb} {moving_where}", "{ving} {adverb_word} {d}"),
    "vp3": ("{vd3} {adverb} {moving_where}", "{v3} {adverb_word} {d}"),
    "adverb": ("", "slowly", "steadily", "gently", "smoothly", "calmly", "at a steady pace"),
    "adverb_word": ("slowly", "steadily", "gently", "smoothly", "calmly"),
    "moving_where": ("", "across the frame", "across the screen", "in the frame", "on screen",
                     "over a grey background"),
    "ving": tuple(f for _, forms in MOTION_VERBS.values() for f in forms),
    "v3": tuple(f for forms, _ in MOTION_VERBS.values() for f in forms),
    "poetic_np": ("a lone {c} {n}", "a solitary {c} {n}", "a little {c} {n}"),
    "poetic_vp": ("{ving} {adverb_poetic} {d}", "{vd_ing} {adverb_poetic}"),
    "adverb_poetic": ("lazily", "softly", "quietly", "dreamily"),
    "still_phrase": ("staying still", "that stays still", "keeping still", "remaining still",
                     "remaining motionless", "that is motionless", "that remains stationary", "which does not move",
                     "which doesn't move", "that never moves", "not moving", "that is not moving", "without moving",
                     "at rest", "resting in place", "staying in place", "that stays put", "sitting motionless",
                     "standing motionless", "holding perfectly still", "perfectly still", "that is static",
                     "that is unmoving", "staying stationary"),
    "still_comma": ("motionless", "unmoving", "at rest", "perfectly still", "staying still", "static",
                    "remaining in place"),
    "still_before": ("stationary", "still", "resting"),
    "still_where": ("", "in the centre of the frame", "on screen", "on a grey background", "against a dark backdrop"),
    "still_first": ("motionless", "at rest", "perfectly still", "staying in place"),
    "poetic_still": ("resting quietly", "waiting, perfectly still", "keeping perfectly still", "at peace, unmoving"),
}

# What parse_caption reads beyond the templates' words: plurals, "disk", verbs that carry a direction, and ways of
# saying that nothing moves.
_SHAPE_OF_NOUN = {noun: shape for shape, nouns in SHAPE_NOUNS.items() for noun in nouns}
_SHAPE_OF_NOUN |= {"circles": "circle", "balls": "circle", "discs": "circle", "disk": "circle", "disks": "circle",
                   "squares": "square", "boxes": "square", "triangles": "triangle"}
_DIRECTION_WORDS = {"left": "left", "leftward": "left", "leftwards": "left", "right": "right",
                    "rightward": "right", "rightwards": "right", "up": "up", "upward": "up", "upwards": "up",
                    "top": "up", "down": "down", "downward": "down", "downwards": "down", "bottom": "down"}
_DIRECTION_WORDS |= {form: direction for direction, verbs in DIRECTED_VERBS.items() for forms in verbs.values()
                     for group in forms for form in group}
_STILL_WORDS = {"still", "stationary", "motionless", "static", "unmoving", "resting"}
_STILL_PHRASES = re.compile(r"\b(?:not|never|without|[a-z]*n t) (?:moving|move|moves)\b|\bin place\b|\bat rest\b"
                            r"|\bstays? put\b")
# "from left to right": the side it starts from is not the direction it goes.
_FROM_SIDE = re.compile(r"\bfrom (?:the )?(?:left|right|top|bottom)(?: side| edge)? (?=to(?:wards?)? )")


def make_caption(colour: str, shape: str, motion: str, rng: np.random.Generator, captions: str = "templates") -> str:
    """A caption for the attributes, with phrasing drawn from ``rng``: from the templates, or (``captions="varied"``)
    a quarter from the templates and the rest from :data:`VARIED_GRAMMAR`."""
    _check_attributes(colour, shape, motion)
    _check_captions(captions)
    if captions == "varied" and rng.random() >= TEMPLATE_SHARE:
        return _grammar_caption(colour, shape, motion, rng)
    still = motion == "still"
    template = _pick(rng, STILL_TEMPLATES if still else MOVING_TEMPLATES)
    v, ving = _pick(rng, VERBS)
    fields = {"a": _pick(rng, ARTICLES), "c": colour, "n": _pick(rng, SHAPE_NOUNS[shape]), "v": v, "ving": ving,
              "d": "" if still else _pick(rng, DIRECTION_PHRASES[motion])}
    return " ".join(template.format(**fields).split())  # an empty article leaves no double space


def parse_caption(caption: str) -> tuple[str, str, str]:
    """(colour, shape, motion) of a caption in this dataset's vocabulary; ValueError when it does not name
    exactly one colour, one shape and one motion."""
    words = re.findall(r"[a-z]+", caption.lower())
    colours = {w for w in words if w in COLOURS}
    shapes = {_SHAPE_OF_NOUN[w] for w in words if w in _SHAPE_OF_NOUN}
    text = _FROM_SIDE.sub("", " ".join(words))
    still = bool(_STILL_WORDS.intersection(words)) or bool(_STILL_PHRASES.search(text))
    directions = {_DIRECTION_WORDS[w] for w in text.split() if w in _DIRECTION_WORDS}
    motions = directions | ({"still"} if still else set())
    for name, found, vocabulary in (("colour", colours, list(COLOURS)), ("shape", shapes, list(_SHAPE_OF_NOUN)),
                                    ("motion", motions, [*DIRECTION_PHRASES, "stays still"])):
        if len(found) != 1:
            raise ValueError(f"caption {caption!r} names {len(found)} {name}s; name exactly one of "
                             f"{', '.join(vocabulary)}.")
    return colours.pop(), shapes.pop(), motions.pop()


def _check_captions(captions: str) -> None:
    if captions not in CAPTION_KINDS:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_KINDS)}; got {captions!r}.")


def _verb_phrases(motion: str, third_person: bool) -> tuple[str, ...]:
    """Every verb with a direction phrase of ``motion`` (and every verb that carries the direction alone), less
    :data:`UNWRITTEN_PAIRS`."""
    forms = DIRECTION_FORMS.get(motion, {})
    out = []
    for verbs, families in ((MOTION_VERBS, forms), (DIRECTED_VERBS.get(motion, {}), {"alone": ("",), **forms})):
        for lemma, (v3, ving) in verbs.items():
            for family, phrases in families.items():
                if (lemma, family) not in UNWRITTEN_PAIRS:
                    out += [f"{verb} {phrase}".strip() for verb in (v3 if third_person else ving) for phrase in phrases]
    return tuple(out)


@functools.cache
def _attribute_symbols(colour: str | None, shape: str | None, motion: str | None) -> dict[str, tuple[str, ...]]:
    """The grammar's symbols that depend on the attributes; ``None`` takes every value (for :func:`can_generate`)."""
    colours = tuple(COLOURS) if colour is None else (colour,)
    shapes = SHAPES if shape is None else (shape,)
    motions = [m for m in MOTIONS if m != "still"] if motion is None else [motion]
    return {"c": colours, "n": tuple(n for s in shapes for n in SHAPE_NOUNS[s]),
            "d": tuple(p for m in motions for forms in DIRECTION_FORMS.get(m, {}).values() for p in forms),
            "vd_ing": tuple(p for m in motions for p in _verb_phrases(m, third_person=False)),
            "vd3": tuple(p for m in motions for p in _verb_phrases(m, third_person=True))}


def _expand(symbol: str, symbols: dict[str, tuple[str, ...]], rng: np.random.Generator) -> str:
    text = _pick(rng, symbols.get(symbol) or VARIED_GRAMMAR[symbol])
    return re.sub(r"\{(\w+)\}", lambda m: _expand(m.group(1), symbols, rng), text)


def _grammar_caption(colour: str, shape: str, motion: str, rng: np.random.Generator) -> str:
    """A caption of :data:`VARIED_GRAMMAR`, drawn again until it fits in :data:`MAX_CAPTION_CHARS`."""
    symbols = _attribute_symbols(colour, shape, motion)
    caption = ""
    for _ in range(1000):
        caption = " ".join(_expand("still" if motion == "still" else "moving", symbols, rng).split())
        if len(caption) < MAX_CAPTION_CHARS:  # room for the full stop
            break
    if rng.random() < FORMAL_SHARE:
        caption = caption[0].upper() + caption[1:] + "."
    return caption


def normalize_caption(caption: str) -> str:
    """Lower case, single spaces, no full stop at the end: the form :func:`can_generate` compares."""
    return " ".join(caption.lower().strip().rstrip(".").split())


def _words_regex(options: list[list[str]]) -> str:
    """A regular expression for word sequences (a trie, so that long lists of phrases sharing their first words
    stay short); spaces optional, as in :func:`_symbol_regex`."""
    branches: dict[str, list[list[str]]] = {}
    ends = False
    for words in options:
        if words:
            branches.setdefault(words[0], []).append(words[1:])
        else:
            ends = True
    parts = [re.escape(first) + (f" *{rest}" if (rest := _words_regex(tails)) else "")
             for first, tails in branches.items()]
    if not parts:
        return ""
    return "(?:" + "|".join(parts) + ")" + ("?" if ends else "")


def _symbol_regex(symbol: str, grammar: dict[str, tuple[str, ...]], memo: dict[str, str]) -> str:
    if symbol not in memo and not any("{" in text for text in grammar[symbol]):
        memo[symbol] = _words_regex([text.lower().split() for text in grammar[symbol]]) or "(?:)"
    if symbol not in memo:
        alternatives = []
        for text in grammar[symbol]:
            pieces = re.split(r"\{(\w+)\}", text.lower())  # literal, symbol, literal, ...
            alternatives.append("".join(
                _symbol_regex(piece, grammar, memo) if i % 2 else " *".join(map(re.escape, piece.split(" ")))
                for i, piece in enumerate(pieces)))
        memo[symbol] = "(?:" + "|".join(alternatives) + ")"
    return memo[symbol]


def _caption_patterns() -> dict[str, re.Pattern]:
    """One regular expression per caption kind that matches (at least) every caption the kind can write, once
    normalized. Spaces are optional in it, so that empty options leave no gaps; it may match a few captions that
    no draw writes, never miss one that a draw does."""
    if not _PATTERNS:
        templates = {"templates": MOVING_TEMPLATES + STILL_TEMPLATES, "a": ARTICLES, "v": tuple(v for v, _ in VERBS),
                     "ving": tuple(v for _, v in VERBS), **_attribute_symbols(None, None, None),
                     "d": tuple(p for phrases in DIRECTION_PHRASES.values() for p in phrases)}
        grammar = {**VARIED_GRAMMAR, **_attribute_symbols(None, None, None),
                   "grammar": (VARIED_GRAMMAR["moving"] + VARIED_GRAMMAR["still"])}
        template_regex = _symbol_regex("templates", templates, {})
        _PATTERNS["templates"] = re.compile(template_regex)
        _PATTERNS["varied"] = re.compile(f"{template_regex}|{_symbol_regex('grammar', grammar, {})}")
    return _PATTERNS


_PATTERNS: dict[str, re.Pattern] = {}


def can_generate(caption: str, captions: str = "templates") -> bool:
    """Whether some draw of :func:`make_caption` with ``captions`` could write ``caption`` (compared normalized:
    case, spacing and a final full stop aside). Each symbol's options are taken independently of the others, so it
    may say True for a few captions that no draw writes, never False for one that a draw does."""
    _check_captions(captions)
    return _caption_patterns()[captions].fullmatch(normalize_caption(caption)) is not None


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _check_attributes(colour: str, shape: str, motion: str) -> None:
    for name, value, allowed in (("colour", colour, list(COLOURS)), ("shape", shape, SHAPES),
                                 ("motion", motion, MOTIONS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}.")
