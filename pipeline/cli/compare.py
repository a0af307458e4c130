"""`pixelrnn compare [--experiment NAME | --runs ID ... | --parent ID] [--metric KEY]
[--x epoch|step|minutes]`; with no selection, the experiment whose run started last."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import TrackingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare` command."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: a table of architecture, optimizer and results, and a curves PNG",
        description="Compare MLflow runs: layer, depth, hidden channels, optimizer, learning "
        "rate, best validation value, epoch reached, images/s and status, plus a PNG of the "
        "validation curves. With no selection: the experiment whose run started last.",
        epilog="example: pixelrnn compare --experiment cifar10 --out compare.png",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--experiment", help="every training run of this MLflow experiment (default: the "
        "experiment whose run started last)",
    )  # fmt: skip
    which.add_argument("--runs", nargs="+", metavar="ID", help="these MLflow runs")
    which.add_argument(
        "--parent", metavar="ID", help="the trials of this sweep run (the PNG is logged to it)"
    )
    parser.add_argument("--metric", default="val/bits_per_dim", help="metric to compare (lower "
                        "is better)")  # fmt: skip
    parser.add_argument(
        "--x", choices=("epoch", "step", "minutes"), default="epoch",
        help="the curves' x axis: epochs, optimizer steps, or minutes of training (wall clock, "
        "as the runs' time/train_minutes counts it; default: epoch)",
    )  # fmt: skip
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("compare.png"), help="PNG of the validation curves"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Print the comparison table and say where the curves went."""
    from pipeline import compare, tracking  # imports MLflow: keep `pixelrnn --help` fast

    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
    experiment = args.experiment
    if not (experiment or args.runs or args.parent):
        experiment = tracking.latest_experiment(uri)
    rows, table, png = compare.compare(
        uri, args.metric, args.out, experiment, tuple(args.runs or ()), args.parent, args.x
    )
    logged = f" (logged to run {args.parent})" if args.parent else ""
    which = "" if args.experiment or args.runs or args.parent else f"experiment {experiment}: "
    return f"{table}\n\n{which}{len(rows)} runs; validation curves: {png}{logged}"
