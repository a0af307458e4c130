"""Command-line options shared by the commands that run an experiment config."""

from __future__ import annotations

import argparse
import textwrap

from pipeline import storage
from pipeline.config import ExperimentConfig, field_types, load_config
from pipeline.errors import ConfigError


def add_experiment_options(
    parser: argparse.ArgumentParser, example: str, resume_help: str, command: str
) -> None:
    """`--config FILE`, repeatable `--set KEY=VALUE` (into `args.overrides`) and `--resume`;
    the help ends with an example command and every config key `--set` accepts.

    Args:
        parser: the sub-command's parser.
        example: an override shown in `--set`'s help, e.g. "optim.lr=3e-4".
        resume_help: what `--resume` continues, for its help text.
        command: a whole example command line for the help's epilog.
    """
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"example:\n  {command}\n\n{config_keys_help()}"
    parser.add_argument(
        "--config",
        required=True,
        help="experiment YAML (deltas from defaults): a local file or a URI (s3://...)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key, e.g. --set {example} (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument(
        "--verify",
        dest="overrides",
        action="append_const",
        const="data.verify=true",
        help="check every dataset shard's sha256 before starting (same as --set data.verify=true)",
    )


def load_experiment(location: str, overrides: list[str]) -> ExperimentConfig:
    """The config of `--config` (a local file or a URI) with the `--set` overrides on top."""
    if not storage.is_uri(location):
        return load_config(location, overrides)
    try:
        text = storage.read_text(location)
    except FileNotFoundError:
        raise ConfigError(f"{location}: cannot read config (not found)") from None
    return load_config(location, overrides, text=text)


def config_keys_help() -> str:
    """Every config key, grouped by section, for a help epilog."""
    sections: dict[str, list[str]] = {}
    for key in field_types():
        section, _, name = key.rpartition(".")
        sections.setdefault(section or "(top level)", []).append(name)
    lines = ["config keys for --set (values and descriptions: pixelrnn config show):"]
    for section, names in sections.items():
        lines += textwrap.wrap(", ".join(names), 96, initial_indent=f"  {section}: ",
                               subsequent_indent="    ")  # fmt: skip
    return "\n".join(lines)
