"""What the fuzz suites share: the count of inputs tried, handled and crashed, printed past pytest's capture."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field


@dataclass
class Tally:
    tried: int = 0
    handled: int = 0
    loaded: int = 0  # of the handled: valid inputs that went through (suites that have such inputs count them)
    crashed: int = 0
    failures: list = field(default_factory=list)


def print_uncaptured(pytestconfig, line: str) -> None:
    """Print ``line`` to the terminal even under pytest's output capture (the count belongs in every run's log)."""
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")
