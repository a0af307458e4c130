"""`pixelrnn train` as a Ray Jobs entrypoint, as on a cluster: a real head started with `ray start`
(dashboard and Jobs API on 127.0.0.1), the smoke job submitted through the Jobs API with its data
and storage behind `file://` URIs, and its run found in MLflow. Only that head is stopped after.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_support import free_port
from temp_root import short_dir

from pipeline.cli.main import main

pytestmark = pytest.mark.ray

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 240
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass(frozen=True)
class Head:
    """A head started by `ray start`: its daemons share the session `ray start` opened, and job
    entrypoints (which get a session of their own) name its GCS port in RAY_ADDRESS."""

    session_id: int
    gcs_port: int
    dashboard_url: str


@pytest.fixture
def head():
    temp_dir = str(short_dir("j"))  # Ray's socket paths under it stay short
    gcs_port, dashboard_port = free_port(), free_port()
    command = [
        str(VENV_BIN / "ray"), "start", "--head", f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        "--num-cpus=4", "--object-store-memory=268435456", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]  # fmt: skip
    env = {**os.environ, **QUIET, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    starter = subprocess.Popen(command, env=env, start_new_session=True, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    started = Head(starter.pid, gcs_port, f"http://127.0.0.1:{dashboard_port}")
    try:
        output, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, f"ray start failed:\n{output}"
        yield started
    finally:
        _stop(started)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(head: Head) -> None:
    """End every process of this head (never `ray stop`: it would end every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = _processes_of(head)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while victims and time.monotonic() < deadline and _processes_of(head):
            time.sleep(0.5)
    assert not _processes_of(head), "processes of the test's Ray head survived SIGKILL"


def _processes_of(head: Head) -> list[int]:
    found = []
    job_driver = re.compile(rb"(^|\0)RAY_ADDRESS=[^\0]*:%d\0" % head.gcs_port)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie waits for its parent; it holds nothing
            in_session = os.getsid(int(entry.name)) == head.session_id
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if in_session or job_driver.search(environ):
            found.append(int(entry.name))
    return found


def test_smoke_training_job_attaches_to_the_cluster_and_logs_to_mlflow(head, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    data = f"file://{tmp_path}/shared/builtin-8"
    sizes = ["--size=8", "--train-images=64", "--val-images=16", "--test-images=8"]
    assert main(["prepare", "builtin", "--output", data, *sizes]) == 0
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = {"data.path": data, "train.storage_path": f"file://{tmp_path}/runs",
                 "train.run_name": "job"}  # fmt: skip
    entrypoint = shlex.join([
        "pixelrnn", "train", "--config", str(REPO_ROOT / "experiments/smoke.yaml"),
        *(arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")),
    ])  # fmt: skip
    client = JobSubmissionClient(head.dashboard_url)
    # One variable the pipeline also exports to its workers: the job's value must win quietly.
    env_vars = {"MLFLOW_TRACKING_URI": store, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env_vars})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            break
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}; its log:\n{logs[-8000:]}"
    assert "connecting to the Ray cluster at" in logs  # attached, no cluster of its own
    assert "starting a local Ray cluster" not in logs

    mlflow = MlflowClient(tracking_uri=store)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "job"
    assert f"MLflow run {run.info.run_id} in {store}" in logs
    assert math.isfinite(run.data.metrics["val/bits_per_dim"]) and run.data.metrics["epoch"] == 2
    assert run.data.tags["pixelrnn.run_dir"] == f"file://{tmp_path}/runs/job"
    assert run.data.tags["pixelrnn.best_checkpoint"].startswith(f"file://{tmp_path}/runs/job/")
    assert (tmp_path / "runs/job/pixelrnn_run.json").is_file()
