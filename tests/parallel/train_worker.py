"""Several ``openwan train`` runs on the ranks of one torchrun job, for tests/parallel/test_train_distributed.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 train_worker.py SPEC.json

SPEC.json holds {"runs": {name: argv}, "result": path}. Each run is one call of the CLI's entry point
(``openwan.cli.main.main(argv)``, what ``-m openwan`` calls) in the same process group — one launch, several
distributed runs. Rank 0 writes each run's exit status and error output to ``result``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from openwan.cli.main import main as openwan_main
from openwan.parallel import init_distributed


def run(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)  # the CLI's own setup is then a no-op: logs stay on stderr
    rank, _ = init_distributed()  # joined here, so the CLI leaves the process group up between runs
    results = {}
    try:
        for name, argv in spec["runs"].items():
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors):
                code = openwan_main(argv)
            results[name] = {"code": code, "stderr": errors.getvalue()[-3000:]}
            dist.barrier()
        if rank == 0:
            Path(spec["result"]).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
