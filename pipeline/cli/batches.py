"""`pixelrnn batches DATA`: which images each worker trains on, step by step.

Prints the data order training uses (`pipeline.data_order`), one JSON line per step and worker:
`{"epoch": E, "step": k, "rank": r, "index": [...]}`, the `index` values (positions in the
source, as `prepare` numbered them) of the rows worker r trains on in global batch k of epoch E.
The order depends on the dataset, `train.seed`, the epoch and `train.batch_size` only: with
another worker count the same global batch is split differently, never filled differently.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

from pipeline.config import TrainConfig
from pipeline.errors import PixelRNNError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `batches` command."""
    parser = subparsers.add_parser(
        "batches",
        help="print which images each worker trains on in each step of an epoch",
        description=__doc__.splitlines()[0],
        epilog="example: pixelrnn batches s3://lab/data/imagenet32 --epoch 3 --workers 16 "
        "--batch-size 256 --steps 1200:1202 (docs/datasets.md: finding the images of a step)",
    )
    parser.add_argument("data", help="prepared dataset: a local folder or a URI (s3://...)")
    parser.add_argument("--split", default="train", help="the split, as data.train_split")
    parser.add_argument(
        "--epoch",
        type=int,
        required=True,
        help="1 for the first epoch, as in the training log and MLflow's `epoch`",
    )
    parser.add_argument("--workers", type=int, required=True, help="scaling.num_workers")
    parser.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="train.batch_size: images per step over all workers",
    )
    parser.add_argument("--seed", type=int, default=TrainConfig().seed, help="train.seed")
    parser.add_argument(
        "--steps",
        default=":",
        metavar="A:B",
        help="only steps A to B-1 of the epoch (0 is the first; A:, :B and A alone work as well)",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="the split as validation reads it: in order, every image once",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Iterator[str]:
    """Check the flags and the dataset and read the `index` columns, then return the lines."""
    from pipeline.data import index_values, open_prepared

    for flag, value in (
        ("--epoch", args.epoch),
        ("--workers", args.workers),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise PixelRNNError(f"{flag}: expected a positive integer, got {value}")
    first, stop = _step_range(args.steps)
    if args.batch_size < args.workers:  # uneven shares are fine: an elastic run's are
        raise PixelRNNError(
            f"--batch-size {args.batch_size} leaves some of --workers {args.workers} without an "
            f"image; use at least {args.workers}"
        )
    dataset = open_prepared(args.data)
    ranks = list(range(args.workers))
    orders = dataset.rank_orders(args.split, ranks, args.workers, args.batch_size, args.seed,
                                 args.epoch - 1, shuffle=not args.validation)  # fmt: skip
    steps = orders[0].steps
    if not steps:
        raise PixelRNNError(
            f"{args.data}: split {args.split!r} has {dataset.count(args.split)} "
            f"images, fewer than one batch of {args.batch_size}"
        )
    if first >= steps:
        raise PixelRNNError(
            f"--steps {args.steps}: epoch {args.epoch} has {steps} steps (0 to {steps - 1})"
        )
    stop = steps if stop is None else min(stop, steps)
    selected = [order.after(first).until(stop - first) for order in orders]
    indices = [index_values(dataset, order) for order in selected]
    return _lines(args.epoch, first, stop, selected, indices)


def _lines(epoch: int, first: int, stop: int, orders, indices) -> Iterator[str]:
    starts = [0] * len(orders)
    for step in range(first, stop):
        for rank, order in enumerate(orders):
            size = int(order.batch_sizes[step - first])
            batch = indices[rank][starts[rank] : starts[rank] + size]
            starts[rank] += size
            yield json.dumps({"epoch": epoch, "step": step, "rank": rank, "index": batch.tolist()})


def _step_range(text: str) -> tuple[int, int | None]:
    """'A:B', 'A:', ':B' or 'A' -> (A, B or None); steps count from 0."""
    low, colon, high = text.partition(":")
    try:
        first = int(low) if low.strip() else 0
        stop = (int(high) if high.strip() else None) if colon else first + 1
    except ValueError:
        first, stop = -1, None
    if first < 0 or (stop is not None and stop <= first):
        raise PixelRNNError(f"--steps {text}: expected A:B with 0 <= A < B (steps count from 0)")
    return first, stop
