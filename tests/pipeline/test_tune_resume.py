"""A `pixelrnn tune` driver SIGKILLed after its first trial finished, then `--resume`d.

Both drivers are real subprocesses with their own local Ray cluster under a private temp folder
(ended by id afterwards). The resumed sweep must finish the second trial in the same MLflow
parent run and leave the finished trial alone: no epoch trained twice, its run not reopened.
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
SWEEP = {"scaling.num_workers": 1, "train.epochs": 2, "train.max_steps_per_epoch": 4,
         "train.max_val_batches": 2, "tracking.num_samples": 0, "tune.sweep_name": "s"}  # fmt: skip
COMMAND = ["tune", "--space", "cross_architecture", "--num-samples", "2", "--max-concurrent", "1"]


@pytest.fixture
def ray_temp():
    """A short private Ray temp folder; whatever Ray left running under it is ended by id."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield folder
    end_processes_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def end_processes_under(folder: Path) -> None:
    for pid in processes_mentioning(str(folder)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def finished_children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("t")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "tags.pixelrnn.trial_id != ''")
    return [run for run in runs if run.info.status == "FINISHED"]


def test_an_interrupted_sweep_resumes_without_rerunning_the_finished_trial(tmp_path, ray_temp):
    overrides = tiny_overrides(prepare_tiny_dataset(tmp_path), tmp_path, **SWEEP)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(overrides))
    env = {**os.environ, "RAY_TMPDIR": str(ray_temp), "TMPDIR": str(ray_temp),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipeline", *COMMAND, "--config", str(config)]
    client = MlflowClient(overrides["tracking.tracking_uri"])

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 300
            while not finished_children(client):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first trial did not finish in time"
                time.sleep(0.5)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    end_processes_under(ray_temp)
    (done,) = finished_children(client)
    train_dir = tmp_path / "runs" / "s" / "train" / done.info.run_name
    untouched = {path: path.stat().st_mtime_ns for path in train_dir.rglob("*")}

    second = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=400)  # fmt: skip
    output = second.stdout + second.stderr
    (tmp_path / "second.log").write_text(output)
    assert second.returncode == 0, output[-4000:]
    assert "restoring sweep" in output and "best trial" in output
    assert not processes_mentioning(str(ray_temp)), "the resumed driver left Ray processes"

    parent = client.get_run(done.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["pixelrnn.resumed"] == "true"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(child.info.run_name for child in children) == [
        f"{done.info.run_name[:-1]}0", f"{done.info.run_name[:-1]}1"
    ]  # fmt: skip
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED"), child.data.tags
        assert "val/bits_per_dim" in child.data.metrics
    again = client.get_run(done.info.run_id)
    assert again.info.status == "FINISHED" and "pixelrnn.resumed" not in again.data.tags
    epochs = [m.value for m in client.get_metric_history(done.info.run_id, "epoch")]
    assert epochs == [1.0, 2.0]  # trained once
    assert {path: path.stat().st_mtime_ns for path in train_dir.rglob("*")} == untouched
    assert (tmp_path / "runs" / "s" / "best_experiment.yaml").is_file()
    assert Path(output.split("best config: ")[1].split()[0]).is_file()
