"""`pixelrnn verify DATA`: the full sha256 pass over a prepared dataset's shards.

Every other command checks at start only that each shard is there with its recorded size (one
listing request per shard); this reads every byte once and compares each shard's sha256 with the
manifest, with a progress bar over bytes. A changed shard fails with its name and a non-zero exit.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `verify` command."""
    parser = subparsers.add_parser(
        "verify",
        help="check every shard of a prepared dataset against its manifest's sha256",
        description=__doc__.splitlines()[0],
        epilog="example: pixelrnn verify s3://lab/data/cifar10",
    )
    parser.add_argument("data", help="prepared dataset: a local folder or a URI (s3://...)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Verify and summarise; a `DataError` names the first shard that differs."""
    from pipeline.data import verify_with_progress
    from pipeline.datasets.manifest import read_manifest, total_bytes

    manifest = read_manifest(args.data)
    verify_with_progress(args.data, manifest)
    shards = sum(len(split["shards"]) for split in manifest["splits"].values())
    return f"{args.data}: {shards} shards, {total_bytes(manifest):,} bytes: every sha256 matches"
