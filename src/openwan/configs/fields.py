"""What every config shares: the dict -> dataclass reading, the range checks and the plain-dict writing."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, TypeVar

from openwan.configio import check, parse

C = TypeVar("C")

# Keys a release config.json carries that describe the file, not the network.
_METADATA_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "architectures"}


def _from_dict(cls: type[C], data: dict[str, Any], aliases: dict[str, str] | None = None) -> C:
    """Build ``cls`` from a plain dict with :func:`openwan.configio.parse`: each value checked against its field's
    type; an unknown key is an error that lists the allowed ones; file metadata keys are skipped."""
    return parse(cls, data, aliases=aliases, ignore=tuple(_METADATA_KEYS))


# Generous upper bounds (the largest release is 40 layers of width 5120): a value past them is a typo, and refusing
# it here saves building a network that could never be loaded.
MAX_LAYERS = 1000
MAX_WIDTH = 1 << 17


def _count(name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> None:
    """``value`` is an integer in [low, high] (bool is not a count)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    check(ok, name, f"an integer from {low} to {high}", value)


def _finite_number(value: Any) -> bool:
    """``value`` is an int or float (not a bool) and finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(name: str, value: Any, positive: bool = False) -> None:
    ok = _finite_number(value) and (value > 0 or not positive)
    check(ok, name, "a finite number above 0" if positive else "a finite number", value)


def _to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
