"""A `pixelrnn train` driver SIGKILLed mid-run, then `--resume`d: same MLflow run, no epoch twice.

Both drivers are real subprocesses that start their own local Ray cluster under a private temp
folder; the processes the killed driver leaves behind are ended by id, found by that folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from train_support import prepare_tiny_dataset, processes_mentioning, tiny_overrides

pytestmark = pytest.mark.ray
EPOCHS = 4


def wait_for(condition, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"driver exited early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.1)


def end_processes_under(folder: Path) -> None:
    for pid in processes_mentioning(str(folder)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ray_temp():
    """A short private Ray temp folder (Unix socket paths are limited to ~107 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    yield folder
    end_processes_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_killed_driver_resumes_from_its_checkpoint_in_the_same_mlflow_run(tmp_path, ray_temp):
    data_root = prepare_tiny_dataset(tmp_path)
    overrides = tiny_overrides(data_root, tmp_path, **{"train.epochs": EPOCHS,
                                                       "train.run_name": "resume"})  # fmt: skip
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(overrides))
    env_store = tmp_path / "env.db"  # MLFLOW_TRACKING_URI beats tracking.tracking_uri
    env = {**os.environ, "RAY_TMPDIR": str(ray_temp), "TMPDIR": str(ray_temp),
           "MLFLOW_TRACKING_URI": f"sqlite:///{env_store}", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(config)]
    snapshot = tmp_path / "runs" / "resume" / "checkpoint_manager_snapshot.json"

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            wait_for(
                lambda: snapshot.is_file() and "epoch_0001" in snapshot.read_text(), first, 240
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    end_processes_under(ray_temp)  # Ray fate-shares with its driver; this is a safety net

    second = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=400)  # fmt: skip
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert "resumed from epoch" in output
    assert not processes_mentioning(str(ray_temp)), "the resumed driver left Ray processes"

    client = MlflowClient(f"sqlite:///{env_store}")
    assert not (tmp_path / "mlflow.db").exists()
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["pixelrnn.resumed"] == "true"
    epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert epochs == [float(e) for e in range(1, EPOCHS + 1)]  # none repeated, none lost
    assert run.data.params["train.epochs"] == str(EPOCHS)
