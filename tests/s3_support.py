"""A real S3-compatible server on 127.0.0.1 for tests: moto's standalone server in a subprocess.

The project's code reaches it only through the standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `MLFLOW_S3_ENDPOINT_URL`), as
it would reach S3 or MinIO on a cluster: pyarrow, Ray Data, Ray Train and MLflow read them.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "pixelrnn-test",
    "AWS_SECRET_ACCESS_KEY": "pixelrnn-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service for credentials
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """True once `url` answers; False if `process` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except OSError:  # refused, reset or timed out: not up yet
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.3)


class S3Server:
    """moto's S3 server on 127.0.0.1:`port`, started by `start()` and ended by `stop()`."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None
        self._names = itertools.count()

    @property
    def env(self) -> dict[str, str]:
        """The standard variables that point S3 clients (pyarrow, boto3, MLflow) here."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> S3Server:
        server = Path(sys.executable).with_name("moto_server")
        command = [str(server), "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        if not wait_until_up(self.endpoint, self.process, timeout_s):
            self.stop()
            raise RuntimeError(f"moto_server did not start; see {self.log}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self):
        """A boto3 S3 client for this server (test set-up and inspection only)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())

    def bucket(self, prefix: str = "lab") -> str:
        """Create a new, empty bucket and return its URI, `s3://<prefix>-<n>`."""
        name = f"{prefix}-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, uri: str) -> list[str]:
        """Every object key under `s3://bucket/prefix` (sorted, without the bucket)."""
        return sorted(self.objects(uri))

    def objects(self, uri: str) -> dict[str, tuple[str, str]]:
        """{key: (ETag, LastModified)} of every object under `s3://bucket/prefix`."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        return {item["Key"]: (item["ETag"], str(item["LastModified"]))
                for page in pages for item in page.get("Contents", [])}  # fmt: skip


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set `env` in os.environ; return the previous values for `restore_env`."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
