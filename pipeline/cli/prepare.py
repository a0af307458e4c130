"""`pixelrnn prepare SOURCE`: official dataset files -> checked Parquet shards + manifest.json."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline import storage
from pipeline.datasets import builtin, cifar, imagenet, images, mnist
from pipeline.datasets.base import SPLITS, SourcePlan
from pipeline.datasets.manifest import MANIFEST_NAME
from pipeline.datasets.prepare import prepare
from pipeline.datasets.shards import DEFAULT_SHARD_ROWS
from pipeline.errors import DataError

SOURCES = {
    "cifar10": "CIFAR-10, binary or python version, folder or .tar.gz",
    "imagenet32": "downsampled ImageNet 32x32: npz batches or train_32x32/ valid_32x32/ PNGs",
    "imagenet64": "downsampled ImageNet 64x64: npz batches or train_64x64/ valid_64x64/ PNGs",
    "binarized_mnist": "binarized MNIST: binarized_mnist_*.amat files or an .npz",
    "folder": "any folder of PNG/JPEG images (sub-folders = classes), centre-cropped and resized",
    "builtin": "random crops of the photographs shipped with scikit-image (no download)",
}
EXAMPLES = {  # where to download each: docs/datasets.md
    "cifar10": "--input cifar-10-batches-bin --output data/cifar10 --split val=data_batch_5.bin",
    "imagenet32": "--input Imagenet32_train_npz --output data/imagenet32 --val-fraction 0.01",
    "imagenet64": "--input Imagenet64_train_npz --output data/imagenet64 --val-fraction 0.01",
    "binarized_mnist": "--input binarized_mnist_train_valid.npz --output data/mnist",
    "folder": "--input my_photos --output data/my_photos --size 32 --val-fraction 0.05",
    "builtin": "--output data/builtin-32",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `prepare` and one sub-command per source."""
    parser = subparsers.add_parser(
        "prepare", help=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=f"example: pixelrnn prepare cifar10 {EXAMPLES['cifar10']} (download URLs and "
        "sizes: docs/datasets.md)",
    )  # fmt: skip
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--output",
        required=True,
        help="dataset folder to create, or an s3:// / gs:// URI to upload it to (shared storage)",
    )
    common.add_argument(
        "--shard-size", type=_positive, default=DEFAULT_SHARD_ROWS, help="rows per Parquet shard"
    )
    common.add_argument("--force", action="store_true", help="replace a dataset already there")
    common.add_argument("--seed", type=int, default=0, help="seed of the crops / val hold-out")
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--input", type=Path, required=True, help="the downloaded file or folder")
    held_out = files.add_mutually_exclusive_group()
    held_out.add_argument(
        "--val-fraction", type=_fraction, help="hold out this fraction of train as val (seeded)"
    )
    held_out.add_argument(
        "--split",
        type=_split_rule,
        action="append",
        metavar="SPLIT=GLOB",
        help="send source files matching GLOB to SPLIT, e.g. val=data_batch_5.bin (repeatable)",
    )
    for name, description in SOURCES.items():
        sub = sources.add_parser(
            name,
            parents=[common] if name == "builtin" else [common, files],
            help=description,
            description=description,
            epilog=f"example: pixelrnn prepare {name} {EXAMPLES[name]}",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        if name in ("folder", "builtin"):
            side = "side of the square output images"
            sub.add_argument("--size", type=_positive, default=builtin.DEFAULT_SIZE, help=side)
        if name == "builtin":
            for split, count in builtin.DEFAULT_COUNTS.items():
                sub.add_argument(
                    f"--{split}-images", type=int, default=count, help=f"{split} crops"
                )
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Prepare the dataset the arguments describe; return a one-line summary."""
    plan, options = _plan(args)
    settings = {
        "shard_rows": args.shard_size,
        "split_rules": dict(getattr(args, "split", None) or []),
        "val_fraction": getattr(args, "val_fraction", None),
        "seed": args.seed,
        "options": options,
    }
    if storage.is_uri(args.output):
        manifest = _prepare_to_uri(plan, args.output, args.force, settings)
    else:
        manifest = prepare(plan, Path(args.output), force=args.force, **settings)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    height, width, channels = manifest["shape"]
    return (
        f"prepared {plan.source} ({plan.layout}) into {args.output}: {counts} images of "
        f"{height}x{width}x{channels}, levels {manifest['levels']}"
    )


def _prepare_to_uri(plan: SourcePlan, uri: str, force: bool, settings: dict) -> dict:
    """Prepare into a local scratch folder (under TMPDIR), then upload it to `uri`.

    manifest.json goes up last, once every uploaded shard's sha256 has been read back and checked:
    readers start from it, so they never see a partial or corrupted dataset (with `--force`, the
    old dataset is deleted before the new one is uploaded).
    """
    from pipeline.data import verify_uploaded

    storage.require_bucket(uri)
    if storage.is_file(storage.join(uri, MANIFEST_NAME)):
        if not force:
            raise DataError(f"{uri}: already holds a prepared dataset; pass --force to replace it")
    elif storage.has_contents(uri):
        raise DataError(f"{uri}: exists and is not empty (and is not a prepared dataset)")
    with tempfile.TemporaryDirectory(prefix="pixelrnn-prepare-") as scratch:
        local = Path(scratch) / "dataset"
        manifest = prepare(plan, local, **settings)
        storage.upload_folder(local, uri, last=MANIFEST_NAME, replace=force,
                              check=lambda: verify_uploaded(uri, manifest))  # fmt: skip
    return manifest


def _plan(args: argparse.Namespace) -> tuple[SourcePlan, dict]:
    """The source plan and the source-specific options worth recording in the manifest."""
    if args.source == "cifar10":
        return cifar.plan(args.input), {}
    if args.source in ("imagenet32", "imagenet64"):
        return imagenet.plan(args.input, int(args.source.removeprefix("imagenet"))), {}
    if args.source == "binarized_mnist":
        return mnist.plan(args.input), {}
    if args.source == "folder":
        return images.plan_folder(args.input, args.size), {"size": args.size}
    counts = {split: getattr(args, f"{split}_images") for split in SPLITS}
    return builtin.plan(args.size, counts, args.seed), {"size": args.size, "counts": counts}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def _split_rule(text: str) -> tuple[str, str]:
    split, _, pattern = text.partition("=")
    if split not in SPLITS or not pattern:
        raise argparse.ArgumentTypeError(f"expected SPLIT=GLOB with SPLIT in {SPLITS}, got {text}")
    return split, pattern
