"""Ctrl-C on `pixelrnn train`: the command says so and exits 130, its MLflow run ends KILLED (not
left RUNNING), and `--resume` continues the run from its last checkpoint to FINISHED (the
"interrupted" failure tag kept as `pixelrnn.previous_failure`).

The driver is a real subprocess attached to the session cluster, interrupted with SIGINT as a
terminal's Ctrl-C would (Ray Train's own handler then aborts the controller and exits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient
from train_support import latest_checkpoint, prepare_tiny_dataset, tiny_overrides, wait_for

pytestmark = pytest.mark.ray


def test_ctrl_c_ends_the_run_killed_and_resume_finishes_it(ray_cluster, tmp_path):
    data_root = prepare_tiny_dataset(tmp_path)
    work = tmp_path / "work"
    overrides = tiny_overrides(data_root, work, **{"train.run_name": "interrupted",
                               "train.epochs": 40, "tracking.num_samples": 0})  # fmt: skip
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(overrides))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(config)]
    run_dir = work / "runs" / "interrupted"

    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: latest_checkpoint(run_dir) != "", driver, 300, "a first checkpoint")
            driver.send_signal(signal.SIGINT)
            returncode = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    output = (tmp_path / "first.log").read_text()
    assert returncode == 130, output[-4000:]
    assert "pixelrnn: interrupted" in output

    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["pixelrnn.failure"] == "interrupted"

    done = int(latest_checkpoint(run_dir).removeprefix("epoch_")[:4])  # epochs kept
    resumed = subprocess.run(
        [*command, "--resume", "--set", f"train.epochs={done + 1}"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"resumed from epoch {done}" in resumed.stdout + resumed.stderr
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and "pixelrnn.failure" not in finished.data.tags
    assert finished.data.tags["pixelrnn.previous_failure"] == "interrupted"
