"""`pixelrnn` command line: one sub-command per module in `COMMANDS`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> str | Iterable[str] | None` as the parser default; what `func` returns is printed
here (an iterable line by line, as it is produced).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

from pipeline.errors import PixelRNNError

COMMANDS = (
    "pipeline.cli.prepare",
    "pipeline.cli.train",
    "pipeline.cli.evaluate",
    "pipeline.cli.sample",
    "pipeline.cli.tune",
    "pipeline.cli.compare",
    "pipeline.cli.config",
    "pipeline.cli.verify",
    "pipeline.cli.export",
    "pipeline.cli.batches",
)


def build_parser() -> argparse.ArgumentParser:
    """The `pixelrnn` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="pixelrnn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}",
        help="print the installed pixelrnn version and exit",
    )  # fmt: skip
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _version() -> str:
    try:
        return version("pixelrnn")
    except PackageNotFoundError:
        return "(not installed: run `pip install -e .`)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pixelrnn` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials in ..."
    try:
        output = args.func(args)
        if output and not isinstance(output, str):  # an iterable: line by line, as produced
            for line in output:
                print(line)
            output = None
    except PixelRNNError as error:
        print(f"pixelrnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixelrnn: interrupted", file=sys.stderr)
        return 130
    if output:
        print(output)
    return 0


def cli() -> None:
    """Console-script wrapper: exit with `main`'s status."""
    sys.exit(main())
