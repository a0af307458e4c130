"""`pixelrnn config show [--config FILE] [--set KEY=VALUE ...]`: the resolved config, every key."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.options import load_experiment
from pipeline.config import load_config

COLUMN = 44  # descriptions start here unless a value is longer
EXAMPLE = "pixelrnn config show --config experiments/cifar10_row_lstm.yaml --set optim.lr=3e-4"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `config` command and its `show` sub-command."""
    parser = subparsers.add_parser(
        "config", help="show the resolved experiment config with a description of every key",
        description="Inspect experiment configs.", epilog=f"example: {EXAMPLE}",
    )  # fmt: skip
    actions = parser.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser(
        "show",
        help="every key with its value and a one-line description",
        description="Print every config key with its resolved value (defaults, then --config, "
        "then --set) and a one-line description; '*' marks values that differ from the "
        "defaults.",
        epilog=f"example: {EXAMPLE}",
    )
    show.add_argument(
        "--config", help="experiment YAML, a local file or a URI (default: the defaults alone)"
    )
    show.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=3 (repeatable)",
    )  # fmt: skip
    show.add_argument(
        "--format", choices=("text", "markdown"), default="text",
        help="text (default) or a markdown table (docs/configuration.md holds one)",
    )  # fmt: skip
    show.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """The listing as text lines or a markdown table."""
    from pipeline.config_reference import reference

    cfg = load_experiment(args.config, args.overrides) if args.config else None
    entries = reference(cfg or load_config(None, args.overrides))
    if args.format == "markdown":
        rows = ["| key | default | description |", "|---|---|---|"]
        rows += [f"| `{e.key}` | `{_show(e.default)}` | {e.description} |" for e in entries]
        return "\n".join(rows)
    width = min(COLUMN, max(len(f"{e.key} = {_show(e.value)}") for e in entries))
    lines = []
    for entry in entries:
        changed = "*" if entry.value != entry.default else " "
        setting = f"{entry.key} = {_show(entry.value)}"
        lines.append(f"{changed} {setting:<{width}}  # {entry.description}")
    return "\n".join(lines)


def _show(value) -> str:
    """Values as YAML/`--set` would write them: strings quoted, booleans lower case."""
    return json.dumps(value)
