"""``openwan curate``: raw videos into a training manifest (``run``), per-phase selections (``select``), the expert
scorer's label sheet and training (``label-sheet``, ``train-scorer``), and the report of a finished run
(``report``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "turn raw videos into a training manifest: split, filter, score, deduplicate, caption (see docs/curation.md)"
RUN_HELP = "curate videos (folders, globs, files or a manifest) into DIR/manifest.parquet with every clip's scores"
RUN_EPILOG = """examples:
  openwan curate run raw/ --out curated/
  openwan curate run 'raw/**/*.mp4' --out curated/ --config configs/curate-fast.yaml ocr.enabled=false
  openwan curate run videos.jsonl --out curated/ --executor ray --workers 8
  openwan curate run raw/ --out curated/ --executor ray --ray-address ray://head:10001

Outputs in DIR: manifest.parquet (the kept clips; openwan train reads it as data.manifest), clips.parquet
(every clip: its scores, decision and reasons), errors.parquet (unreadable sources, failed stages),
sources.parquet (per source: processed or error, clips, seconds dropped in short shots), report.html, and
cache/ (what a rerun reuses: a killed or repeated run computes only what is missing).
FIELD=VALUE overrides any config field (values are read as YAML), e.g. split.detector=content run.workers=2."""
SELECT_HELP = "select the clips of a training phase from clips.parquet, with sampling weights, as a manifest"
LABEL_HELP = "write a CSV of clips per cluster for a person to score (the expert scorer's training labels)"
TRAIN_SCORER_HELP = "train the expert scorer on a filled label sheet and save it (then set scorer.path to it)"
REPORT_HELP = "rebuild the report (HTML or PNG) of a finished run from its tables"


def add_parser(sub) -> None:
    p = sub.add_parser("curate", help=HELP, description=HELP + ".")
    tools = p.add_subparsers(dest="curate_command", required=True, metavar="COMMAND")

    r = tools.add_parser("run", help=RUN_HELP, description=RUN_HELP + ".", epilog=RUN_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("items", nargs="*", metavar="INPUT | FIELD=VALUE",
                   help="video folders (searched recursively), globs (quote them), video files, or manifests "
                        "(.parquet/.jsonl with a path column; their captions are kept); and config overrides "
                        "FIELD=VALUE")
    r.add_argument("--out", required=True, help="output folder (created; a rerun into it resumes)")
    r.add_argument("--config", help="curation config (.yaml, .yml or .toml); default: every section's defaults "
                                    "(configs/curate-default.yaml lists them)")
    r.add_argument("--executor", choices=["local", "ray"], help="local (default): this process or a pool of "
                                                                "--workers; ray: Ray Data")
    r.add_argument("--ray-address", help="a Ray cluster to join (e.g. ray://head:10001 or auto); implies "
                                         "--executor ray. Default: a local Ray started for the run")
    r.add_argument("--workers", type=int, help="parallel workers: processes (local) or CPUs of the local Ray "
                                               "(default 1, or run.workers)")
    r.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(run=run_curate, extra_items=[])

    s = tools.add_parser("select", help=SELECT_HELP, description=SELECT_HELP + ".")
    s.add_argument("--clips", required=True, help="a run's clips.parquet")
    s.add_argument("--config", help="the phase's selection config (.yaml/.toml); default: keep every kept clip "
                                    "with weight 1")
    s.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="selection config overrides")
    s.add_argument("--out", required=True, help="the phase's manifest (.parquet or .jsonl); openwan train reads it")
    s.set_defaults(run=run_select)

    lab = tools.add_parser("label-sheet", help=LABEL_HELP, description=LABEL_HELP + ".")
    lab.add_argument("--clips", required=True, help="a run's clips.parquet (with the clusters stage's cluster_id)")
    lab.add_argument("--per-cluster", type=int, default=5, help="clips sampled per cluster (default 5)")
    lab.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    lab.add_argument("--all", action="store_true", help="sample rejected clips too (default: kept clips only)")
    lab.add_argument("--out", required=True, help="the CSV to write (columns clip_id, cluster_id, source, start, "
                                                  "end, score; fill in score)")
    lab.set_defaults(run=run_label_sheet)

    t = tools.add_parser("train-scorer", help=TRAIN_SCORER_HELP, description=TRAIN_SCORER_HELP + ".")
    t.add_argument("--clips", required=True, help="the clips.parquet the label sheet was written from")
    t.add_argument("--labels", required=True, help="the filled label sheet (CSV with clip_id and score)")
    t.add_argument("--out", required=True, help="folder for the scorer (scorer.safetensors + scorer.json)")
    t.add_argument("--model", choices=["ridge", "mlp"], default="ridge", help="ridge regression (default) or a "
                                                                               "small MLP")
    t.add_argument("--alpha", type=float, default=1.0, help="L2 strength (default 1.0)")
    t.add_argument("--hidden", type=int, default=64, help="MLP hidden units (default 64)")
    t.add_argument("--measures", default="", help="comma-separated numeric columns used beside embed_vector "
                                                  "(e.g. quality_sharpness,motion_magnitude)")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds for the reported metrics (default 5)")
    t.add_argument("--seed", type=int, default=0, help="seed of the folds and the MLP (default 0)")
    t.set_defaults(run=run_train_scorer)

    rep = tools.add_parser("report", help=REPORT_HELP, description=REPORT_HELP + ".")
    rep.add_argument("dir", metavar="DIR", help="the --out folder of a finished openwan curate run")
    rep.add_argument("--format", choices=["html", "png"], default="html", help="report.html (default) or report.png")
    rep.add_argument("--thumbnails", type=int, default=6, help="thumbnails per tier in the HTML (default 6)")
    rep.set_defaults(run=run_report)


def _split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, overrides): an item is an override when it reads FIELD=VALUE with a dotted field name and is not
    an existing path."""
    inputs, overrides = [], []
    for item in items:
        key, sep, _ = item.partition("=")
        if sep and key and not os.path.exists(item) and all(part.isidentifier() for part in key.split(".")):
            overrides.append(item)
        else:
            inputs.append(item)
    return inputs, overrides


def run_curate(args: argparse.Namespace) -> int:
    from openwan.curate import curate, load_config

    inputs, overrides = _split_items(args.items + args.extra_items)
    if args.executor or args.ray_address:
        overrides.append(f"run.executor={'ray' if args.ray_address else args.executor}")
    if args.ray_address:
        overrides.append(f"run.ray_address={args.ray_address}")
    if args.workers is not None:
        overrides.append(f"run.workers={args.workers}")
    if args.no_progress:
        overrides.append("run.progress=false")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    result = curate(cfg, args.out, paths=inputs)
    c = result.counts
    print(f"{c['sources']} sources ({c['processed']} processed, {c['failed']} failed), {c['clips']} clips: "
          f"{c['kept']} kept, {c['rejected']} rejected, {c['errors']} errors; wrote {result.manifest}, "
          f"{result.clips.name}, {result.errors.name}, {result.sources.name}"
          + (f" and {result.report.name}" if result.report else "") + f" in {result.out_dir}")
    for section, note in result.notes.items():
        print(f"{section}: {note}")
    if result.rejections:
        top = sorted(result.rejections.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        print("rejected: " + "; ".join(f"{n} x {reason}" for reason, n in top))
    return 0


def _read_clips(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--clips {file} does not exist; give the clips.parquet of a finished openwan curate run.")
    try:
        return pq.read_table(file).to_pylist()
    except Exception as err:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a bad file
        raise ValueError(f"--clips {file} is not a readable Parquet table ({err}); give a run's clips.parquet.") \
            from None


def run_select(args: argparse.Namespace) -> int:
    from openwan.curate.select import load_select_config, read_clips_table, select_clips, write_selection

    cfg = load_select_config(args.config, args.overrides)
    rows = read_clips_table(args.clips)
    selection = select_clips(rows, cfg)
    path = write_selection(selection, args.out, clips_path=args.clips)
    print(f"selected {len(selection)} of {len(rows)} clips into {path}")
    return 0


def run_label_sheet(args: argparse.Namespace) -> int:
    from openwan.curate.scorer import label_sample, write_label_sheet

    if args.per_cluster < 1:
        raise ValueError(f"--per-cluster must be >= 1; got {args.per_cluster}.")
    rows = _read_clips(args.clips)
    if not args.all:
        rows = [r for r in rows if r.get("decision") == "kept"]
    sample = label_sample(rows, args.per_cluster, args.seed)
    path = write_label_sheet(sample, args.out)
    clusters = len({r["cluster_id"] for r in sample})
    print(f"wrote {len(sample)} clips of {clusters} clusters to {path}; fill in the score column, then run "
          f"openwan curate train-scorer --clips {args.clips} --labels {path} --out SCORER_DIR")
    return 0


def run_train_scorer(args: argparse.Namespace) -> int:
    from openwan.curate.scorer import TrainScorerConfig, read_labels, train_scorer

    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip())
    cfg = TrainScorerConfig(model=args.model, alpha=args.alpha, hidden=args.hidden, measures=measures,
                            folds=args.folds, seed=args.seed)
    rows = _read_clips(args.clips)
    labels = read_labels(args.labels)
    scorer, metrics = train_scorer(rows, labels, cfg)
    folder = scorer.save(args.out)
    print(f"trained on {metrics['n']} labelled clips: cross-validated Spearman {metrics['spearman']:.3f}, "
          f"MAE {metrics['mae']:.3f} ({metrics['folds']} folds); saved to {folder}. Score clips with "
          f"scorer.path={folder}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from openwan.curate.config import ReportConfig
    from openwan.curate.report import report_from_tables

    path = report_from_tables(args.dir, ReportConfig(format=args.format, thumbnails=args.thumbnails))
    print(f"wrote {path}")
    return 0
