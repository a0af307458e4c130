"""`pixelrnn evaluate --checkpoint PATH | --run-id ID | --model-uri URI --data DIR`: exact NLL.

Every image of the split is scored once (section 5.1: bits per sub-pixel, and nats per image
for binarized data); with `--run-id` the result is logged back to that MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import math

from pipeline.cli.options import add_model_source, load_model
from pipeline.errors import ConfigError, DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command."""
    parser = subparsers.add_parser(
        "evaluate", help="exact bits/dim of a trained model on a dataset split",
        description="Score every image of a prepared split with a trained PixelRNN.",
        epilog="example: pixelrnn evaluate --model-uri models:/pixelrnn-cifar10@champion "
        "--data data/cifar10 --split test",
    )  # fmt: skip
    add_model_source(parser)
    parser.add_argument("--data", required=True, help="prepared dataset: a folder or a URI")
    parser.add_argument(
        "--verify", action="store_true", help="check every shard's sha256 before scoring"
    )
    parser.add_argument(
        "--split", default="", help="split to score (default: the model's data.val_split)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Evaluate with a progress bar; log `<split>/bits_per_dim` back when given a run."""
    from tqdm import tqdm

    from pipeline import data, ray_runtime
    from pipeline.engine import evaluate, pixel_batches
    from pipeline.sanity import dataset_name, leak_warning

    trained, tracking_uri = load_model(args)
    model_cfg = trained.model.config
    dataset = data.open_prepared(args.data, verify_checksums=args.verify)
    split = args.split or trained.config.data.val_split
    for key in ("channels", "levels"):
        if getattr(dataset, key) != getattr(model_cfg, key):
            raise ConfigError(f"--data: {key}={getattr(dataset, key)} but the model has "
                              f"{getattr(model_cfg, key)}")  # fmt: skip
    count = dataset.count(split)
    ray_runtime.connect()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the progress bar says enough
    rows = data.read_split(dataset, split).iter_torch_batches(batch_size=args.batch_size)
    with tqdm(total=count, unit="image") as bar:
        batches = _counted(pixel_batches(rows, trained.config.data.crop_size), bar)
        metrics = evaluate(trained.model, batches)
        scored = bar.n
    if scored != count:
        raise DataError(f"{args.data}: scored {scored} images of {split}, manifest says {count}")
    if args.run_id:
        _log_back(tracking_uri, args.run_id, split, metrics, trained.metrics)
    nats = f", {metrics['nll_nats']:.2f} nats/image" if model_cfg.levels == 2 else ""
    line = f"{split}: {metrics['bits_per_dim']:.4f} bits/dim{nats} over {count} images"
    warning = leak_warning(dataset_name(dataset.manifest), metrics, split)
    return f"{warning}\n{line}" if warning else line


def _counted(batches, bar):
    for pixels in batches:  # (B, C, H, W)
        bar.update(pixels.shape[0])
        yield pixels


def _log_back(uri: str, run_id: str, split: str, metrics: dict, trained_metrics: dict) -> None:
    from pipeline.tracking import RunTracker

    step = int(trained_metrics.get("step", 0))
    values = {f"{split}/{key}": value for key, value in metrics.items() if math.isfinite(value)}
    RunTracker(uri, run_id).log_metrics(values, step)
