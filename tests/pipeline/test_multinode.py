"""Several Ray nodes on one machine: an elastic run loses a node mid-epoch and grows back.

`cluster_drill.py` runs in its own process (one `ray.init` per process, and this session has its
own cluster): a head with no CPUs for workers, two worker nodes carrying the stand-in accelerator
resource, data and checkpoints on the S3 test server, `scaling.num_workers=[1,2]`. A node holding a
worker is removed after a mid-epoch checkpoint and none replaces it: the run must go on with one
worker from that checkpoint in S3, then grow back to two when the drill adds a node, train every
image once per epoch and end where the fixed 2-worker run ends. (That a change of worker count
retraces the run exactly is test_object_storage.py's resume from 2 workers on 1.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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

from pipeline.cli.main import main

pytestmark = pytest.mark.ray
DRILL = Path(__file__).with_name("cluster_drill.py")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_elastic_run_shrinks_when_a_node_is_lost_mid_epoch_and_grows_back(
    ray_cluster, s3_server, tmp_path, tmp_path_factory
):
    reference, _ = reference_run(tmp_path_factory)
    bucket = s3_server.bucket()
    counts = [f"--train-images={TRAIN_IMAGES}", f"--val-images={VAL_IMAGES}", "--test-images=8"]
    assert main(["prepare", "builtin", "--output", f"{bucket}/ds", "--size", "8", *counts]) == 0
    overrides = tiny_overrides(f"{bucket}/ds", tmp_path, **DETERMINISM_RUN, **{
        "train.run_name": "elastic", "train.storage_path": f"{bucket}/runs",
        "train.checkpoint_every_minutes": 1e-4, "scaling.accelerator_resource": "accel",
        "scaling.num_workers": [1, 2], "scaling.elastic_resize_monitor_interval_s": 1.0,
        "scaling.elastic_start_timeout_s": 5.0,
    })  # fmt: skip
    config = tmp_path / "drill.json"
    config.write_text(json.dumps(overrides))
    temp_dir = str(short_dir("m"))  # Ray's socket paths under it stay short
    # tests/ on the drill's path: it imports train_support
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(DRILL.parents[1])}
    try:
        drill = subprocess.run([sys.executable, str(DRILL), str(config), temp_dir], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        end_processes_under(Path(temp_dir))  # a safety net: the drill shuts its cluster down
        shutil.rmtree(temp_dir, ignore_errors=True)
    output = drill.stdout + drill.stderr
    assert drill.returncode == 0, output[-5000:]
    (line,) = [line for line in drill.stdout.splitlines() if line.startswith("DRILL ")]
    summary = json.loads(line.removeprefix("DRILL "))
    events = summary["events"]
    assert len(events) == 4, (events, output[-5000:])
    assert events[0].startswith("removed a worker node after checkpoint epoch_0001_sample_")
    assert events[1].startswith("one worker checkpointed ")  # no replacement was waited for
    assert events[3].startswith("two workers again ")
    assert "samples into epoch" in output  # restarted inside an epoch, not at its start

    client = MlflowClient(summary["tracking_uri"])
    run_id = summary["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    groups = run.data.tags["pixelrnn.worker_groups"].split("; ")
    assert [entry.split(" workers")[0] for entry in groups] == ["2", "1", "2"], groups
    assert groups[0] == "2 workers from step 0 (start)"
    assert "(worker lost: " in groups[1] and groups[2].endswith("(grew: more workers fit)")
    # In logging order (over time): by step, a report the 1-worker group made past the
    # checkpoint the grown group restarted from keeps its point (repeats are not logged twice).
    workers = sorted(client.get_metric_history(run_id, "train/workers"), key=lambda m: m.timestamp)
    sizes = [int(m.value) for m in workers]
    changes = [size for i, size in enumerate(sizes) if not i or sizes[i - 1] != size]
    assert changes == [2, 1, 2], [(m.step, m.value) for m in workers]

    # Every image once per epoch: each report counts the run's images step by step (a restart
    # carries the epoch's count from its checkpoint), 8 per step; epoch ends hold whole epochs.
    steps_per_epoch = TRAIN_IMAGES // 8
    images = history(client, run_id, "train/images")
    assert images and all(value == step * 8 for step, value in images), images
    epoch_ends = [step for step, _ in history(client, run_id, "epoch")]
    assert epoch_ends == [steps_per_epoch, 2 * steps_per_epoch]
    assert dict(images)[epoch_ends[-1]] == 2 * TRAIN_IMAGES
    ref_client = MlflowClient(reference.tracking_uri)
    (final,) = history(client, run_id, "val/bits_per_dim")[-1:]
    (want,) = history(ref_client, reference.mlflow_run_id, "val/bits_per_dim")[-1:]
    assert final[0] == want[0] and abs(final[1] - want[1]) <= 5e-4, (final, want)
    print(f"drill trained in {summary['train_s']:.0f} s; val bits/dim {final[1]:.6f} vs "
          f"{want[1]:.6f} at a fixed 2 workers")  # fmt: skip
