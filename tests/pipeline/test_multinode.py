"""Several Ray nodes on one machine: a worker node preempted mid-epoch costs no batch twice.

`cluster_drill.py` runs in its own process (one `ray.init` per process, and this session has its
own cluster): a head with no CPUs for workers, three worker nodes carrying the stand-in
accelerator resource (two training workers and a spare), data and checkpoints on the S3 test
server. A node holding a worker is removed after a mid-epoch checkpoint; the run must restart its
worker group from that checkpoint in S3 and end exactly where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from temp_root import short_dir
from train_support import (
    DETERMINISM_RUN,
    TRAIN_IMAGES,
    VAL_IMAGES,
    end_processes_under,
    reference_run,
    tiny_overrides,
)

from pipeline.checkpointing import load_checkpoint
from pipeline.cli.main import main

pytestmark = pytest.mark.ray
DRILL = Path(__file__).with_name("cluster_drill.py")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_worker_node_removed_mid_epoch_resumes_from_s3_and_retraces_the_run(
    ray_cluster, s3_server, tmp_path, tmp_path_factory
):
    reference, _ = reference_run(tmp_path_factory)
    bucket = s3_server.bucket()
    counts = [f"--train-images={TRAIN_IMAGES}", f"--val-images={VAL_IMAGES}", "--test-images=8"]
    assert main(["prepare", "builtin", "--output", f"{bucket}/ds", "--size", "8", *counts]) == 0
    overrides = tiny_overrides(f"{bucket}/ds", tmp_path, **DETERMINISM_RUN, **{
        "train.run_name": "preempted", "train.storage_path": f"{bucket}/runs",
        "train.checkpoint_every_minutes": 1e-4, "scaling.accelerator_resource": "accel",
    })  # fmt: skip
    config = tmp_path / "drill.json"
    config.write_text(json.dumps(overrides))
    temp_dir = str(short_dir("m"))  # Ray's socket paths under it stay short
    try:
        drill = subprocess.run([sys.executable, str(DRILL), str(config), temp_dir], cwd=tmp_path,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                               text=True, timeout=600)  # fmt: skip
    finally:
        end_processes_under(Path(temp_dir))  # a safety net: the drill shuts its cluster down
        shutil.rmtree(temp_dir, ignore_errors=True)
    output = drill.stdout + drill.stderr
    assert drill.returncode == 0, output[-5000:]
    (line,) = [line for line in drill.stdout.splitlines() if line.startswith("DRILL ")]
    summary = json.loads(line.removeprefix("DRILL "))
    assert summary["events"][0].startswith("removed a worker node after checkpoint epoch_0001_")
    assert "samples into epoch 1" in output  # restarted inside the epoch, not at its start

    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "pixelrnn.last_worker_error" in run.data.tags  # the controller saw its worker die
    ref_client = MlflowClient(reference.tracking_uri)
    for key in ("epoch", "train/bits_per_dim", "val/bits_per_dim"):
        got = history(client, summary["mlflow_run_id"], key)
        want = history(ref_client, reference.mlflow_run_id, key)
        assert [step for step, _ in got] == [step for step, _ in want], key  # none twice/lost
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), key

    final = load_checkpoint(f"{bucket}/runs/preempted/epoch_0002")
    expected = load_checkpoint(Path(reference.run_dir) / "epoch_0002")
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
