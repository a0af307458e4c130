"""A sweep submitted to Ray's fake autoscaling cluster with no worker node up.

`autoscaling_drill.py` runs in its own process session (one `ray.init` per process, and this
session has its own cluster): a 1-CPU head whose autoscaler (Ray's fake node provider) can add up
to two worker nodes carrying `accel`, the stand-in for a GPU; data and sweep storage on the S3
test server. The sweep must size itself by what the autoscaler can add, start, and run its two
trials one at a time (`tune.max_concurrent_trials`) on the nodes the autoscaler adds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from temp_root import short_dir
from train_support import TRAIN_IMAGES, VAL_IMAGES, end_session, tiny_overrides

from pipeline import storage
from pipeline.cli.main import main

pytestmark = pytest.mark.ray
DRILL = Path(__file__).with_name("autoscaling_drill.py")


def test_a_sweep_with_no_worker_node_up_runs_its_trials_on_nodes_the_autoscaler_adds(
    s3_server, tmp_path
):
    bucket = s3_server.bucket()
    counts = [f"--train-images={TRAIN_IMAGES}", f"--val-images={VAL_IMAGES}", "--test-images=8"]
    assert main(["prepare", "builtin", "--output", f"{bucket}/ds", "--size", "8", *counts]) == 0
    overrides = tiny_overrides(f"{bucket}/ds", tmp_path, **{
        "train.storage_path": f"{bucket}/sweeps", "train.epochs": 1,
        "train.max_steps_per_epoch": 3, "train.max_val_batches": 2, "tracking.num_samples": 0,
        "scaling.num_workers": 1, "scaling.accelerator_resource": "accel",
        "tune.space": "row_lstm", "tune.num_samples": 2, "tune.max_concurrent_trials": 1,
        "tune.sweep_name": "grown",
    })  # fmt: skip
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(overrides))
    temp_dir = str(short_dir("a"))  # Ray's socket paths under it stay short
    drill = subprocess.Popen([sys.executable, str(DRILL), str(config), temp_dir], cwd=tmp_path,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    try:
        output, _ = drill.communicate(timeout=600)
        (tmp_path / "drill.log").write_text(output)
    finally:  # the drill, its head and the nodes the autoscaler started: all of that session
        end_session(drill.pid)
        drill.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert drill.returncode == 0, output[-6000:]
    (line,) = [line for line in output.splitlines() if line.startswith("DRILL ")]
    summary = json.loads(line.removeprefix("DRILL "))

    assert summary["worker_nodes_before"] == []  # the sweep started with no training node up
    assert summary["refused"] == (
        "scaling.num_workers: 3 workers asking for {CPU: 1, accel: 1} each, but this cluster "
        "(its autoscaler's node types) can hold at most 2; the largest node has {CPU: 2, accel: 1}"
    )
    # Sized by what the autoscaler can add: the head's CPU and two 2-CPU accel nodes.
    assert (
        "each trial holds 3 CPUs and 1 'accel'; 1 at a time; the cluster can grow to "
        "{CPU: 5, accel: 2}" in output
    )
    assert 1 <= len(summary["worker_nodes_added"]) <= 2  # the autoscaler's max_workers
    assert summary["trial_statuses"] == ["FINISHED", "FINISHED"]
    (_, first_end), (second_start, _) = summary["trial_times"]
    assert second_start >= first_end  # tune.max_concurrent_trials = 1: one trial at a time
    assert storage.is_file(summary["best_experiment"])
    assert summary["best_experiment"].startswith(f"{bucket}/sweeps/grown/")
