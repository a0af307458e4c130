"""A preemption drill on a several-node Ray cluster on this machine (run by test_multinode.py).

`python cluster_drill.py CONFIG.json TEMP_DIR` starts a `ray.cluster_utils.Cluster`: a head with
no CPUs for workers, and three worker nodes that each carry one `accel` resource (the stand-in
for a GPU that `scaling.accelerator_resource` asks for), so two of them hold one training worker
each and one waits as a spare. Once a checkpoint inside epoch 1 is registered it removes a node
that holds a worker (`Cluster.remove_node`); Ray Train must restart the worker group on the
remaining two. It prints the training summary as one `DRILL {json}` line, then shuts its
cluster down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

NODE = {"num_cpus": 2, "resources": {"accel": 1}, "object_store_memory": 100 * 1024**2}


def latest_checkpoint(run_dir: str) -> str:
    from pipeline import storage

    try:
        snapshot = json.loads(storage.read_text(f"{run_dir}/checkpoint_manager_snapshot.json"))
    except Exception:  # not written yet
        return ""
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name", "")


def preempt(cluster, run_dir: str, events: list[str]) -> None:
    """Remove a node holding a training worker once a mid-epoch checkpoint exists."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        latest = latest_checkpoint(run_dir)
        if latest.startswith("epoch_0001_sample_"):
            break
        time.sleep(0.2)
    else:
        events.append("no mid-epoch checkpoint to preempt after")
        return
    try:
        cluster.remove_node(node_holding_a_worker(cluster))
        events.append(f"removed a worker node after checkpoint {latest}")
    except Exception as error:  # reported by the test, which fails on it
        events.append(f"could not remove a node: {error!r}")


def node_holding_a_worker(cluster):
    """The cluster node of a live Ray Train worker (the State API, served by the dashboard)."""
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    holding = {actor.node_id for actor in list_actors(address=cluster.address, filters=alive)}
    return next(node for node in cluster.worker_nodes if node.node_id in holding)


def main(config_path: str, temp_dir: str) -> None:
    from ray.cluster_utils import Cluster

    from pipeline.config import merge
    from pipeline.train import run_training

    # Cluster writes its address file under Ray's default temp root ($RAY_TMPDIR/ray) without
    # creating it: keep that root inside this drill's folder, so the drill also runs alone.
    os.environ["RAY_TMPDIR"] = temp_dir
    Path(temp_dir, "ray").mkdir(exist_ok=True)
    overrides = json.loads(Path(config_path).read_text())
    with socket.socket() as probe:  # a free port: other clusters may hold Ray's default one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    head = {"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": port}  # fmt: skip
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(3):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        cfg = merge([{**overrides, "scaling.ray_address": cluster.address}])
        run_dir = f"{cfg.train.storage_path}/{cfg.train.run_name}"
        events: list[str] = []
        watcher = threading.Thread(target=preempt, args=(cluster, run_dir, events), daemon=True)
        watcher.start()
        summary = run_training(cfg)
        watcher.join(timeout=60)
        print("DRILL " + json.dumps({**dataclasses.asdict(summary), "events": events}), flush=True)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
