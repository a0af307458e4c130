"""The `pixelrnn` command line: `main.py` parses and dispatches, one module per command.

The top layer of `pipeline`: commands import orchestration (train, tune, sweeps, runs) and
services (data, tracking, storage, checkpointing); nothing outside this package imports it.
"""
