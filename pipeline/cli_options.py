"""Command-line options shared by the commands that run an experiment config."""

from __future__ import annotations

import argparse


def add_experiment_options(parser: argparse.ArgumentParser, example: str, resume_help: str) -> None:
    """`--config FILE`, repeatable `--set KEY=VALUE` (into `args.overrides`) and `--resume`.

    Args:
        parser: the sub-command's parser.
        example: an override shown in `--set`'s help, e.g. "optim.lr=3e-4".
        resume_help: what `--resume` continues, for its help text.
    """
    parser.add_argument("--config", required=True, help="experiment YAML (deltas from defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key, e.g. --set {example} (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help=resume_help)
