"""Shared fixtures: one contained local Ray cluster per test session, and paths to real data.

The session runs under its own temporary root (temp_root.py): TMPDIR and RAY_TMPDIR point at a
fresh folder that is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import temp_root

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PIXELRNN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

# Keep every run quiet and inside scratch folders before anything imports ray or mlflow.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("RAY_ADDRESS", None)
SESSION_ROOT = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """Enter the session's temporary root before any test module imports Ray or MLflow."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(temp_root.session_root())
    except RuntimeError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[SESSION_ROOT] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave the temporary root: end what still runs from it, then remove it."""
    stack = config.stash.get(SESSION_ROOT, None)
    if stack is not None:  # None when pytest_configure refused the root
        stack.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1, for the whole session.

    The standard AWS variables and `MLFLOW_S3_ENDPOINT_URL` point at it while the session runs, so
    every S3 client (pyarrow, Ray, MLflow, subprocess drivers) reaches it as it would reach S3.
    `s3_server.bucket()` creates a fresh bucket per test.
    """
    from s3_support import S3Server, apply_env, restore_env

    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    previous = apply_env(server.env)
    yield server
    restore_env(previous)
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (runs in SQLite, artifacts proxied to the S3 server's
    bucket `s3://mlflow/artifacts`), as the cluster's head runs it; `.uri` is its tracking URI."""
    from mlflow_support import MlflowServer

    bucket = s3_server.bucket("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), f"{bucket}/artifacts")
    yield server.start(env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray cluster (4 logical CPUs) shared by every `ray` test; shut down at the end.

    It starts after the S3 server, so its workers inherit the variables that reach it.
    """
    import ray

    from pipeline import ray_runtime

    temp_dir = str(temp_root.short_dir("s"))  # Ray's socket paths under it stay short
    ray_runtime.connect(num_cpus=4, object_store_memory=256 * 1024**2, temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set PIXELRNN_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One intra-op thread: tests of tiny models run thousands of small ops, which extra threads
    only slow down (and stall when the shared machine is loaded)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
