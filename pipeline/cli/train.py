"""`pixelrnn train --config FILE [--set key=value ...] [--resume]`: the distributed training job."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_experiment_options, load_experiment


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = subparsers.add_parser(
        "train",
        help="train a PixelRNN on Ray Train, tracked in MLflow",
        description="Train a PixelRNN with Ray Train (DDP workers), logging to MLflow.",
    )
    add_experiment_options(
        parser,
        "optim.lr=3e-4",
        "continue the run named by train.run_name (default: this experiment's latest run) "
        "from its last checkpoint, in the same MLflow run",
        "pixelrnn train --config experiments/cifar10_row_lstm.yaml --set train.epochs=20",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Train and describe the result: final metrics, checkpoint, and how to look at the run."""
    cfg = load_experiment(args.config, args.overrides)
    from pipeline.train import run_training  # imports Ray: keep `pixelrnn --help` fast

    summary = run_training(cfg, resume=args.resume)
    metrics = summary.metrics
    lines = [
        f"run {summary.run_name}: {summary.epochs} epochs, "
        f"val {metrics['val/bits_per_dim']:.4f} bits/dim ({metrics['val/nll_nats']:.2f} "
        f"nats/image), train {metrics['train/bits_per_dim']:.4f} bits/dim",
        f"best checkpoint: {summary.best_checkpoint}",
        f"MLflow run {summary.mlflow_run_id} in {summary.tracking_uri}",
    ]
    if summary.model_uri:
        lines.append(f"MLflow model: {summary.model_uri} (pixelrnn evaluate --model-uri ...)")
    if summary.tracking_uri.startswith("sqlite:"):
        lines.append(f"view it with: mlflow ui --backend-store-uri {summary.tracking_uri}")
    if metrics.get("time/train_minutes") is not None:
        lines.insert(1, f"training loop: {metrics['time/train_minutes']:.1f} min of wall clock")
    if summary.warning:
        lines.insert(0, summary.warning)
    return "\n".join(lines)
