"""A real `mlflow server` process on 127.0.0.1 for tests, as the cluster's head runs it.

Runs live in a SQLite file; artifacts are proxied by the server (`--artifacts-destination`), so
clients log and read them over HTTP and need no storage credentials of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from s3_support import free_port, wait_until_up


class MlflowServer:
    """`mlflow server` with its backend store in `folder` and artifacts under `artifacts`."""

    def __init__(self, folder: Path, artifacts: str) -> None:
        self.folder, self.artifacts = folder, artifacts
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow-server.log"
        self.process: subprocess.Popen | None = None

    def start(self, env: dict[str, str], timeout_s: float = 90.0) -> MlflowServer:
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            # its own process group: the server's worker processes end with it
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, start_new_session=True,
                env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job workers
            )  # fmt: skip
        if not wait_until_up(f"{self.uri}/health", self.process, timeout_s):
            self.stop()
            raise RuntimeError(f"mlflow server did not start; see {self.log}")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
