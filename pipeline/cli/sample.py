"""`pixelrnn sample --checkpoint PATH | --run-id ID | --model-uri URI --n 64 --out grid.png`: draw
images from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import completion
from pipeline.checkpointing import TrainedModel
from pipeline.cli.options import add_model_source, load_model
from pipeline.errors import PixelRNNError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sample` command."""
    parser = subparsers.add_parser(
        "sample", help="draw images from a trained model into a PNG grid",
        description="Draw images from a trained PixelRNN (ancestral sampling) into a PNG grid.",
        epilog="example: pixelrnn sample --model-uri models:/pixelrnn-cifar10@champion --n 16 "
        "--out samples.png",
    )  # fmt: skip
    add_model_source(parser)
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write")
    parser.add_argument("--size", help="HxW (default: the training image size)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    completion.add_arguments(parser)  # --complete-from DIR --rows K: occluded-image completion
    parser.set_defaults(func=run)


def _size(text: str | None, trained: TrainedModel) -> tuple[int, int]:
    if text:
        height, sep, width = text.lower().partition("x")
        if not (sep and height.isdigit() and width.isdigit() and int(height) and int(width)):
            raise PixelRNNError(f"--size {text!r}: expected HxW, e.g. 32x32")
        return int(height), int(width)
    _, height, width = trained.image_shape
    if not height:
        raise PixelRNNError("this checkpoint does not record its image size; pass --size HxW")
    return height, width


def run(args: argparse.Namespace) -> str:
    """Sample with a progress bar and write the grid."""
    import torch
    from tqdm import tqdm

    from pipeline.images import save_grid
    from pixelrnn_model import sample

    if args.n < 1 or args.temperature <= 0:
        raise PixelRNNError("--n must be >= 1 and --temperature > 0")
    trained, tracking_uri = load_model(args)
    if args.complete_from is not None:  # the size comes from the images
        generator = torch.Generator().manual_seed(args.seed)
        summary, grid = completion.run_completion(args, trained, generator)
        return summary + _log_back(args, tracking_uri, trained, grid, "cli_completions")
    height, width = _size(args.size, trained)
    generator = torch.Generator().manual_seed(args.seed)
    with tqdm(total=height * width * trained.model.config.channels, unit="sub-pixel") as bar:
        pixels = sample(trained.model, args.n, height, width, generator=generator,
                        temperature=args.temperature,
                        progress=lambda done, total: bar.update(done - bar.n))  # fmt: skip
    path = save_grid(pixels, trained.model.config.levels, args.out)  # pixels: (n, C, H, W)
    summary = f"wrote {args.n} samples of {height}x{width} to {path}"
    return summary + _log_back(args, tracking_uri, trained, path, "cli_samples")


def _log_back(args, tracking_uri: str, trained: TrainedModel, png: Path, key: str) -> str:
    """With `--run-id`, the grid also goes to that run as an MLflow image under `key`, at the
    checkpoint's step (beside the run's own `samples`)."""
    if not args.run_id:
        return ""
    from pipeline.tracking import RunTracker

    step = int(trained.metrics.get("step", 0))
    RunTracker(tracking_uri, args.run_id).log_image(png, key=key, step=step)
    return f" (logged to run {args.run_id} as image {key!r})"
