"""The team MLflow server's run store, kept where `ray down` cannot delete it.

`python -m pipeline.mlflow_store serve --backup s3://bucket/pixelrnn/mlflow.db ...` is what the
cluster's head runs (cluster.yaml): it restores the SQLite file from the bucket when the head's
disk has none, starts `mlflow server` on it, and copies it back to the bucket every
`--every-minutes` and when it is stopped (SIGTERM/SIGINT). `--backend-store-uri` (e.g.
`postgresql://...`) serves from a database instead and skips the copies. The copy is SQLite's
online backup of a consistent snapshot, uploaded whole: a reader of the bucket never sees a half
file. `backup` and `restore` do one copy by hand (e.g. before `ray down`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline import storage
from pipeline.errors import PixelRNNError

logger = logging.getLogger(__name__)


def backup(database: Path, location: str) -> None:
    """Copy a consistent snapshot of the SQLite file `database` to `location` (path or URI)."""
    if not database.is_file():
        raise PixelRNNError(f"{database}: no MLflow database to back up")
    with tempfile.TemporaryDirectory(prefix="mlflow-backup-") as scratch:
        snapshot = Path(scratch) / database.name
        source, target = sqlite3.connect(database), sqlite3.connect(snapshot)
        try:
            source.backup(target)  # consistent even while the server writes
        finally:
            source.close()
            target.close()
        fs, path = storage.filesystem(location)
        with storage.reaching(location):
            fs.create_dir(path.rpartition("/")[0], recursive=True)
            with fs.open_output_stream(path) as stream:  # an object appears only when complete
                stream.write(snapshot.read_bytes())


def restore(location: str, database: Path) -> bool:
    """Copy the backup at `location` to `database` unless that file exists; True if copied."""
    if database.exists():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.partial")
    try:
        storage.download(location, partial)
    except FileNotFoundError:
        return False
    partial.replace(database)
    return True


def serve(args: argparse.Namespace) -> int:
    """Restore, run `mlflow server` until it ends or we are stopped, backing up as we go."""
    server_args = ["--host", args.host, "--port", str(args.port), *args.server_args]
    if args.backend_store_uri:
        store = args.backend_store_uri
    else:
        if restore(args.backup, args.database):
            logger.info("restored %s from %s", args.database, args.backup)
        store = f"sqlite:///{args.database.resolve()}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", args.artifacts_destination, *server_args]  # fmt: skip
    server = subprocess.Popen(command)
    stopped = threading.Event()

    def stop(signum, frame) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopped.is_set() and server.poll() is None:
        due = time.monotonic() + args.every_minutes * 60
        while time.monotonic() < due and not stopped.is_set() and server.poll() is None:
            stopped.wait(1.0)
        _backup_quietly(args)
    server.terminate()
    server.wait()
    _backup_quietly(args)  # what the server wrote last
    return 0 if stopped.is_set() else server.returncode


def _backup_quietly(args: argparse.Namespace) -> None:
    """A periodic backup: a failure is logged and serving goes on."""
    if args.backend_store_uri or not args.database.is_file():
        return
    try:
        backup(args.database, args.backup)
    except PixelRNNError as error:
        logger.error("backup failed: %s", error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.mlflow_store", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="restore, run mlflow server, back up periodically")
    run.add_argument("--backup", required=True, help="where the SQLite copy lives (s3://...)")
    run.add_argument("--database", type=Path, default=Path.home() / "mlflow.db")
    run.add_argument("--backend-store-uri", default="", help="a database URI instead of SQLite")
    run.add_argument("--artifacts-destination", required=True, help="e.g. s3://bucket/mlflow")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=5000)
    run.add_argument("--every-minutes", type=float, default=5.0)
    run.add_argument("server_args", nargs="*", help="more `mlflow server` options, after --")
    for name in ("backup", "restore"):
        one = commands.add_parser(name, help=f"{name} the SQLite file once")
        one.add_argument("--backup", required=True)
        one.add_argument("--database", type=Path, default=Path.home() / "mlflow.db")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "backup":
            backup(args.database, args.backup)
        elif not restore(args.backup, args.database):
            print(f"{args.database}: kept (it exists, or {args.backup} has no backup)")
    except PixelRNNError as error:
        print(f"mlflow_store: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
