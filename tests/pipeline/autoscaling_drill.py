"""A sweep on Ray's fake autoscaling cluster, started with no worker node up.

Run by test_autoscaling_cluster.py.

`python autoscaling_drill.py CONFIG.json TEMP_DIR` starts a head node the way
`ray.cluster_utils.AutoscalingCluster` does (`ray start --head --autoscaling-config=...` with
`RAY_FAKE_CLUSTER=1`: Ray's fake node provider, whose "nodes" are raylets on this machine), but
on a free port and a private temp folder, and without the `ray stop --force` that
`AutoscalingCluster.start()` and `.shutdown()` run (it would end every Ray process here); the
class itself cannot be used with the Ray 2.60 wheel, which lacks the example config it reads. The
head has one CPU and no `accel`; one worker node type carries `accel`, the stand-in for a GPU.

It then runs the sweep in CONFIG.json against that head with `scaling.autoscaler_config` naming
the autoscaler's config file (what `~/ray_bootstrap_config.yaml` is on a `ray up` head), and
prints one `DRILL {json}` line: the worker nodes up before the sweep, the error that a training
run asking for more workers than the autoscaler can ever add got, the nodes the autoscaler added,
when each trial's run started and ended, and the sweep's outcome. Its caller ends every process
of the session it starts this script in.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKER_TYPE = "accel-node"
MAX_WORKERS = 2


def free_port() -> int:
    """A free port on 127.0.0.1 (tests/s3_support.py has the same; this script runs without
    tests/ on its path, which would also shadow the `tune_spaces` package with a test folder)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def autoscaler_config(port: int) -> dict:
    """The fake provider's cluster config: a 1-CPU head and up to 2 `accel` worker nodes.

    What `AutoscalingCluster` generates from Ray's `fake_multi_node/example.yaml`, written out
    here because the Ray 2.60 wheel does not ship that file (`AutoscalingCluster(...)` raises
    FileNotFoundError), and with the provider's `gcs_address` set, so the nodes it starts join
    this head's port rather than 6379 on the machine's IP.
    """
    worker = {"resources": {"CPU": 2, "accel": 1, "object_store_memory": 100 * 1024**2},
              "node_config": {}, "min_workers": 0, "max_workers": MAX_WORKERS}  # fmt: skip
    return {
        "cluster_name": "fake_multinode", "max_workers": MAX_WORKERS,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: worker,
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }  # fmt: skip


def start_head(temp_dir: str, port: int, config_path: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).with_name("ray")  # the one installed beside this Python
    command = [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
               "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
               f"--autoscaling-config={config_path}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--ray-client-server-port={free_port()}",
               f"--object-store-memory={100 * 1024**2}", "--disable-usage-stats"]  # fmt: skip
    return subprocess.Popen(command, env=env)


def worker_nodes() -> list[dict]:
    """Every node (alive or not) that carries `accel`: the ones the autoscaler added."""
    import ray

    return [node for node in ray.nodes() if "accel" in node["Resources"]]


def main(config_path: str, temp_dir: str) -> None:
    import ray
    from mlflow.tracking import MlflowClient

    from pipeline.config import merge
    from pipeline.errors import ConfigError
    from pipeline.train import run_training
    from pipeline.tune import run_sweep

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    port = free_port()
    cluster_config = Path(temp_dir) / "autoscaling.json"
    cluster_config.write_text(json.dumps(autoscaler_config(port)))
    head = start_head(temp_dir, port, cluster_config)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address, logging_level="WARNING")
                break
            except Exception:  # the head is still starting
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        before = [node["NodeID"] for node in worker_nodes()]
        overrides = json.loads(Path(config_path).read_text())
        cfg = merge([{**overrides, "scaling.ray_address": address,
                      "scaling.autoscaler_config": str(cluster_config)}])  # fmt: skip
        try:  # more accel workers than the autoscaler can ever add: refused before any output
            run_training(
                merge(
                    [
                        {
                            **cfg.to_flat(),
                            "scaling.num_workers": MAX_WORKERS + 1,
                            "train.batch_size": 4 * (MAX_WORKERS + 1),
                        }
                    ]
                )
            )
            refused = ""
        except ConfigError as error:
            refused = str(error)
        started = time.time()
        summary = run_sweep(cfg)
        client = MlflowClient(summary.record.tracking_uri)
        runs = [client.get_run(trial.run_id).info for trial in summary.trials]
        trial_times = sorted((run.start_time / 1000 - started, run.end_time / 1000 - started)
                             for run in runs)  # fmt: skip
        print("DRILL " + json.dumps({
            "worker_nodes_before": before,
            "refused": refused,
            "worker_nodes_added": [node["NodeID"] for node in worker_nodes()],
            "trial_statuses": [t.status for t in summary.trials],
            "trial_times": trial_times,  # (start, end) seconds after the sweep started
            "best_experiment": summary.best_experiment,
        }), flush=True)  # fmt: skip
    finally:
        ray.shutdown()
        head.terminate()  # `ray start --block` stops the head's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()


if __name__ == "__main__":
    main(*sys.argv[1:])
