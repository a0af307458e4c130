"""`python -m pipeline`: the `pixelrnn` command line (pipeline/cli/main.py)."""

from pipeline.cli.main import cli

if __name__ == "__main__":
    cli()
