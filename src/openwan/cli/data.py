"""``openwan data``: dataset tools. ``openwan data synth`` writes the synthetic shapes dataset."""

from __future__ import annotations

import argparse

from openwan.data.synthetic import CAPTION_KINDS, PATHS

HELP = "dataset tools (synth: write the synthetic captioned shapes dataset)"
SYNTH_HELP = "write synthetic clips of a coloured shape moving over a background, with captions and a manifest"


def parse_size(text: str) -> tuple[int, int]:
    """``64`` (square) or ``96*64`` (width*height)."""
    try:
        values = [int(v) for v in text.lower().replace("x", "*").split("*")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ValueError(f"--size must be a number (e.g. 64) or WIDTH*HEIGHT (e.g. 96*64); got {text!r}.")
    return (values[0], values[-1])


def add_parser(sub) -> None:
    p = sub.add_parser("data", help=HELP, description=HELP + ".")
    tools = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    s = tools.add_parser("synth", help=SYNTH_HELP, description=SYNTH_HELP + ".")
    s.add_argument("--out", required=True, help="output folder (videos/ and the manifest are written there)")
    s.add_argument("--num", type=int, required=True, help="number of clips")
    s.add_argument("--seed", type=int, default=0, help="everything is deterministic from it")
    s.add_argument("--split", default="train", choices=["train", "heldout"],
                   help="train: the 72 training combinations; heldout: the 18 held-out ones (for evaluation)")
    s.add_argument("--size", default="64", help="frame size: 64 or WIDTH*HEIGHT (even, at least 32)")
    s.add_argument("--frames", type=int, default=17, help="frames per clip (4n+1 for the VAE)")
    s.add_argument("--fps", type=float, default=16)
    s.add_argument("--manifest", default="manifest.jsonl", help="manifest file name in --out (.jsonl or .parquet)")
    s.add_argument("--paths", default="long", choices=list(PATHS),
                   help="long: 40-60%% of the frame, the start gives the direction away; reversible: shorter, from "
                        "a start the reverse path would also fit from; wrap: a reversible path's speed for any "
                        "--frames, wrapping around the edges (long clips for the streaming student)")
    s.add_argument("--captions", default="templates", choices=list(CAPTION_KINDS),
                   help="templates: the dataset's caption templates; varied: a quarter of those and the rest from a "
                        "richer grammar (more verbs, direction phrases, adverbs, trailing phrases, word orders, ways "
                        "of not moving, short/long/formal/poetic styles); the clips are the same either way")
    s.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from openwan.data.synthetic import make_dataset

    manifest = make_dataset(args.out, args.num, seed=args.seed, split=args.split, size=parse_size(args.size),
                            frames=args.frames, fps=args.fps, manifest=args.manifest, paths=args.paths,
                            captions=args.captions)
    print(f"wrote {args.num} {args.split} clips ({args.captions} captions) and {manifest}")
    return 0
