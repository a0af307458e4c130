"""Command-line options shared by several commands: an experiment config (train, tune, config)
and the trained model to use (sample, evaluate)."""

from __future__ import annotations

import argparse
import tempfile
import textwrap

from pipeline import storage
from pipeline.checkpointing import CHECKPOINT_FILE, TrainedModel, model_from_checkpoint
from pipeline.config import ExperimentConfig, TrackingConfig, field_types, load_config
from pipeline.errors import ConfigError, PixelRNNError


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


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint PATH`, `--run-id ID` or `--model-uri URI` (+ `--tracking-uri`): which
    trained model to use."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="checkpoint folder, checkpoint.pt or weights file; a local path or a URI (s3://...)",
    )
    source.add_argument("--run-id", help="MLflow run whose best checkpoint to use")
    source.add_argument(
        "--model-uri",
        help="MLflow model: models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model "
        "(only its weights-only file is read; no code from the run is run)",
    )
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow store of --run-id / --model-uri (default: MLFLOW_TRACKING_URI, else "
        "./mlflow.db)",
    )


def load_model(args: argparse.Namespace) -> tuple[TrainedModel, str]:
    """The trained model the arguments name, and the resolved tracking URI ("" without a run)."""
    if args.checkpoint is not None:
        return model_from_checkpoint(args.checkpoint), ""
    from pipeline import tracking, tracking_models  # MLflow only when a run or model is named

    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_uri:
            return model_from_checkpoint(
                tracking_models.download_weights(args.model_uri, uri, tmp)
            ), uri
        try:
            path = tracking.download_artifact(
                uri, args.run_id, f"checkpoint/{CHECKPOINT_FILE}", tmp
            )
        except Exception as error:  # MLflow raises several kinds for a bad id or a missing file
            raise PixelRNNError(
                f"--run-id {args.run_id}: no checkpoint in {uri} ({error})"
            ) from None
        return model_from_checkpoint(path), uri
