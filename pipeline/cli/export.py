"""`pixelrnn export --checkpoint LOC --data DIR --out FILE`: a checkpoint as a weights file.

The weights file is the checkpoint without its optimizer and RNG state (a few hundred kB for the
small models), plus the sha256 of the manifest of the dataset it was trained on; `evaluate` and
`sample` take it with `--checkpoint FILE`, and it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` command."""
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint's model as one weights file for publishing",
        description=__doc__.splitlines()[0],
        epilog="example: pixelrnn export --checkpoint runs/cifar10/epoch_0042 "
        "--data data/cifar10 --out weights/cifar10_row_lstm.pt",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or file (or URI)")
    parser.add_argument("--data", required=True, help="the prepared dataset it was trained on")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Export, after checking the dataset matches the model."""
    from pipeline.checkpointing import export_weights, model_from_checkpoint
    from pipeline.data import open_prepared
    from pipeline.errors import ConfigError
    from pipeline.sanity import dataset_name
    from pipeline.tracking import manifest_sha256

    trained = model_from_checkpoint(args.checkpoint)
    dataset = open_prepared(args.data)
    for key in ("channels", "levels"):
        if getattr(dataset, key) != getattr(trained.model.config, key):
            raise ConfigError(f"--data: {key}={getattr(dataset, key)} but the model has "
                              f"{getattr(trained.model.config, key)}")  # fmt: skip
    digest = manifest_sha256(dataset.manifest)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    export_weights(args.checkpoint, args.out, digest, dataset_name=dataset_name(dataset.manifest))
    size = args.out.stat().st_size
    return f"wrote {args.out} ({size / 1e6:.2f} MB; dataset manifest sha256 {digest[:12]}...)"
