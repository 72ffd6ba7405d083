"""Import times: what `import openwan` and `openwan --help` cost, and what each deferred import would add.

    python benchmarks/bench_import.py --reps 5

Each row is a fresh interpreter (so nothing is cached in the process), run ``--reps`` times; the table gives the
median wall time and, for the rows after the first, the difference to the row it builds on. docs/design.md says
which imports are deferred because of these figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

OPENWAN = str(Path(sys.executable).with_name("openwan"))
# (name, the row it adds to, command)
ROWS = [
    ("import torch", None, [sys.executable, "-c", "import torch"]),
    ("import openwan", "import torch", [sys.executable, "-c", "import openwan"]),
    ("openwan --help", "import openwan", [OPENWAN, "--help"]),
    ("+ openwan.parallel", "import openwan", [sys.executable, "-c", "import openwan, openwan.parallel"]),
    ("+ transformers configs", "import openwan",
     [sys.executable, "-c", "import openwan; from transformers import UMT5Config, CLIPVisionConfig"]),
    ("+ transformers encoders", "import openwan",
     [sys.executable, "-c", "import openwan; from transformers import UMT5EncoderModel, CLIPVisionModel"]),
    ("+ peft", "import openwan", [sys.executable, "-c", "import openwan, peft"]),
    ("+ openwan.train", "import openwan", [sys.executable, "-c", "import openwan, openwan.train"]),
]


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name, _, _ in ROWS}
    for _ in range(args.reps):  # interleaved, so a busy moment of the machine spreads over every row
        for name, _, command in ROWS:
            times[name].append(wall(command))
    print("| what | median wall time | added |\n|---|---|---|")
    for name, base, _ in ROWS:
        median = statistics.median(times[name])
        added = f"{median - statistics.median(times[base]):+.2f} s" if base else ""
        print(f"| {name} | {median:.2f} s | {added} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
