"""An elastic preemption drill on a several-node Ray cluster on this machine (test_multinode.py).

`python cluster_drill.py CONFIG.json TEMP_DIR` starts a `ray.cluster_utils.Cluster`: a head with
no CPUs for workers and two worker nodes that each carry one `accel` resource (the stand-in for a
GPU that `scaling.accelerator_resource` asks for), so an elastic run of `scaling.num_workers=[1,2]`
starts with two training workers. Once a checkpoint inside epoch 1 is registered the drill removes
a node that holds a worker (`Cluster.remove_node`), and no node replaces it: Ray Train must go on
with one worker. Once that worker has registered a checkpoint of its own, the drill adds a node,
and the run must grow back to two. It prints the training summary and what it did as one
`DRILL {json}` line, then shuts its cluster down.

Ray Train sizes a new group by its autoscaling coordinator's view of the nodes, which that actor
refreshes every 20 s. After the node is lost that view is stale until the next refresh: the group
Ray sizes by it (two workers) cannot be placed, and after `scaling.elastic_start_timeout_s` Ray
Train tries again, until it starts with the one worker that fits, as a real run does. After the
node is added the drill asks the coordinator to refresh at once (`refresh_cluster_view`), so the
run grows back before it ends instead of up to 20 s later.
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

from train_support import latest_checkpoint  # tests/ is on PYTHONPATH (test_multinode)

NODE = {"num_cpus": 2, "resources": {"accel": 1}, "object_store_memory": 100 * 1024**2}
WAIT_S = 400


def wait_until(condition, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def training_workers(cluster) -> list[str]:
    """Node ids of the live Ray Train workers (the State API, served by the dashboard)."""
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return [actor.node_id for actor in list_actors(address=cluster.address, filters=alive)]


def refresh_cluster_view() -> None:
    """Make Ray's autoscaling coordinator re-read the nodes now instead of at its next tick."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    coordinator = get_or_create_autoscaling_coordinator()
    ray.get(coordinator.get_reserved_resources.remote("drill", recompute=True), timeout=30)


def preempt_then_replace(cluster, run_dir: str, events: list[str]) -> None:
    """Remove a node holding a worker after a mid-epoch checkpoint; add one once the run has
    checkpointed on the remaining worker. Each event ends with its time since the run began."""
    started = time.monotonic()

    def note(text: str) -> None:
        events.append(f"{text} [{time.monotonic() - started:.0f} s]")

    if not wait_until(lambda: latest_checkpoint(run_dir).startswith("epoch_0001_sample_")):
        note("no mid-epoch checkpoint to preempt after")
        return
    removed_after = latest_checkpoint(run_dir)
    try:
        holding = set(training_workers(cluster))
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id in holding))
        note(f"removed a worker node after checkpoint {removed_after}")
    except Exception as error:  # reported by the test, which fails on it
        note(f"could not remove a node: {error!r}")
        return

    def trains_on_one() -> bool:
        latest = latest_checkpoint(run_dir)
        return latest not in ("", removed_after) and len(training_workers(cluster)) == 1

    if not wait_until(trains_on_one):
        note("the run did not go on with one worker")
        return
    note(f"one worker checkpointed {latest_checkpoint(run_dir)}")
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        refresh_cluster_view()
    except Exception as error:
        note(f"could not add a node: {error!r}")
        return
    note(f"added a node after checkpoint {latest_checkpoint(run_dir)}")
    if wait_until(lambda: len(training_workers(cluster)) == 2):
        note(f"two workers again after checkpoint {latest_checkpoint(run_dir)}")


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
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        cfg = merge([{**overrides, "scaling.ray_address": cluster.address}])
        run_dir = f"{cfg.train.storage_path}/{cfg.train.run_name}"
        events: list[str] = []
        outcome: dict = {}

        def train() -> None:  # Cluster.add_node must run in the main thread (signal handlers)
            try:
                outcome["summary"] = run_training(cfg)
            except BaseException as error:
                outcome["error"] = error

        started = time.monotonic()
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        preempt_then_replace(cluster, run_dir, events)
        trainer.join()
        if "error" in outcome:
            raise outcome["error"]
        report = {**dataclasses.asdict(outcome["summary"]), "events": events,
                  "train_s": time.monotonic() - started}  # fmt: skip
        print("DRILL " + json.dumps(report), flush=True)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
