"""A run SIGKILLed mid-epoch and again at an epoch end, resumed each time, retraces the same run
uninterrupted: identical final parameters, the same val bits/dim, the same MLflow history.

The uninterrupted reference runs in this process; the interrupted run's three drivers are real
subprocesses attached to the same session cluster (as under `ray job submit`), so a SIGKILLed
driver takes its Train controller and workers with it while the cluster stays up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from train_support import (
    DETERMINISM_RUN,
    latest_checkpoint,
    reference_run,
    tiny_overrides,
    wait_for,
)

from pipeline.checkpointing import load_checkpoint

pytestmark = pytest.mark.ray
EVERY_STEP = 1e-4  # minutes: a mid-epoch checkpoint after every step


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def wait_until_released(ray, cpus: float, timeout_s: float = 120) -> None:
    """Wait until a killed driver's workers have given their CPUs back to the cluster."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, "a killed driver's workers kept their CPUs"
        time.sleep(0.2)


def test_killed_and_resumed_run_retraces_the_uninterrupted_run(
    ray_cluster, tmp_path, tmp_path_factory
):
    reference, data_root = reference_run(tmp_path_factory)

    work = tmp_path / "killed"
    overrides = tiny_overrides(data_root, work, **DETERMINISM_RUN, **{
        "train.run_name": "killed", "train.checkpoint_every_minutes": EVERY_STEP})  # fmt: skip
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(overrides))
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    all_cpus = ray_cluster.cluster_resources()["CPU"]
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(config)]
    run_dir = work / "runs" / "killed"

    def drive(extra: list[str], kill_when, log_name: str) -> str:
        with open(tmp_path / log_name, "w") as log:
            driver = subprocess.Popen([*command, *extra], cwd=tmp_path, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            try:
                if kill_when is None:
                    assert driver.wait(timeout=400) == 0, (tmp_path / log_name).read_text()[-4000:]
                else:
                    wait_for(lambda: kill_when(latest_checkpoint(run_dir)), driver, 300, log_name)
            finally:
                driver.send_signal(signal.SIGKILL)
                driver.wait()
        wait_until_released(ray_cluster, all_cpus)
        return (tmp_path / log_name).read_text()

    # Killed inside epoch 1, after its 2nd..5th batch (8 batches per epoch).
    drive([], lambda name: name.startswith("epoch_0001_sample_")
          and int(name[-8:]) >= 2 * 8, "first.log")  # fmt: skip
    mid = latest_checkpoint(run_dir)
    # Resumed there without mid-epoch checkpoints, killed again once epoch 1's end is saved.
    second = drive(["--resume", "--set", "train.checkpoint_every_minutes=0"],
                   lambda name: name == "epoch_0001", "second.log")  # fmt: skip
    assert f"{int(mid[-8:])} samples into epoch 1" in second
    third = drive(["--resume"], None, "third.log")
    assert "resumed from epoch 1 (step 8)" in third and "samples into" not in third

    final = load_checkpoint(run_dir / "epoch_0002")
    expected = load_checkpoint(Path(reference.run_dir) / "epoch_0002")
    assert final["step"] == expected["step"] == 16
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert final["metrics"]["val/bits_per_dim"] == pytest.approx(
        reference.metrics["val/bits_per_dim"], abs=1e-6
    )

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED"
    ref_client = MlflowClient(reference.tracking_uri)
    for key in ("epoch", "train/bits_per_dim", "val/bits_per_dim"):
        got = history(client, run.info.run_id, key)
        want = history(ref_client, reference.mlflow_run_id, key)
        assert [step for step, _ in got] == [step for step, _ in want], key  # none twice/lost
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), key
