"""Sizing against what the cluster can grow to: the autoscaler's node types, not only what is up."""

from __future__ import annotations

import logging
import time

import pytest
from train_support import prepare_tiny_dataset, tiny_config

from pipeline import ray_runtime, sweeps
from pipeline.capacity import Capacity, NodeType, check_workers_fit
from pipeline.config import merge
from pipeline.errors import ConfigError

HEAD = {"CPU": 0.0, "memory": 8e9}  # a head that runs no training
GPU_NODES = NodeType("gpu-worker", {"CPU": 8.0, "GPU": 1.0}, max_nodes=4)
ONE_GPU = {"CPU": 1.0, "GPU": 1.0}


def test_zero_worker_nodes_up_still_fits_what_the_autoscaler_can_add():
    empty = Capacity(nodes=(HEAD,), node_types=(GPU_NODES,))
    check_workers_fit(empty, ONE_GPU, workers=4)  # nothing up yet: no error
    assert empty.most() == {"CPU": 32.0, "GPU": 4.0, "memory": 8e9}
    with pytest.raises(ConfigError, match=r"\(no autoscaler node types\) can ever hold one"):
        check_workers_fit(Capacity(nodes=(HEAD,)), ONE_GPU, workers=4)  # no autoscaler
    one_up = Capacity(nodes=(HEAD, GPU_NODES.resources))
    with pytest.raises(ConfigError, match=r"4 workers asking for \{CPU: 1, GPU: 1\} each"):
        check_workers_fit(one_up, ONE_GPU, workers=4)
    with pytest.raises(ConfigError, match="can hold at most 4"):
        check_workers_fit(empty, ONE_GPU, workers=5)
    unfilled = NodeType("gpu-worker", {}, max_nodes=4)  # `resources: {}` not filled in
    check_workers_fit(Capacity((HEAD,), (unfilled,), known=False), ONE_GPU, workers=5)


def test_an_elastic_range_needs_only_its_minimum_to_fit_ever():
    one_up = Capacity(nodes=(HEAD, GPU_NODES.resources))  # no autoscaler: 1 worker, ever
    check_workers_fit(one_up, ONE_GPU, workers=[1, 4])  # starts with the 1 that fits
    with pytest.raises(ConfigError) as info:
        check_workers_fit(one_up, ONE_GPU, workers=[2, 4])
    assert str(info.value) == (
        "scaling.num_workers: at least 2 workers (the minimum of [2, 4]) asking for "
        "{CPU: 1, GPU: 1} each, but this cluster (no autoscaler node types) can hold at most 1; "
        "the largest node has {CPU: 8, GPU: 1}"
    )
    with pytest.raises(ConfigError, match=r"no node of this cluster .* can ever hold one"):
        check_workers_fit(one_up, {"CPU": 1.0, "GPU": 2.0}, workers=[1, 4])
    empty = Capacity(nodes=(HEAD,), node_types=(GPU_NODES,))
    check_workers_fit(empty, ONE_GPU, workers=[4, 16])  # the autoscaler can add 4


def test_a_request_no_node_type_can_satisfy_names_it_and_the_largest_node():
    empty = Capacity(nodes=(HEAD,), node_types=(GPU_NODES,))
    with pytest.raises(ConfigError) as info:
        check_workers_fit(empty, {"CPU": 1.0, "GPU": 2.0}, workers=1)
    assert str(info.value) == (
        "scaling: each training worker asks for {CPU: 1, GPU: 2}, but no node of this cluster "
        "(its autoscaler's node types) can ever hold one; the largest node has {CPU: 8, GPU: 1}"
    )


def test_a_sweep_is_sized_by_the_grown_cluster_and_bounded_by_max_concurrent():
    empty = Capacity(nodes=(HEAD,), node_types=(GPU_NODES,))
    cfg = merge([{"scaling.num_workers": 1, "scaling.use_gpu": True, "tune.num_samples": 8,
                  "tune.max_concurrent_trials": 2}])  # fmt: skip
    sizing = sweeps.size_trials(cfg, empty.most())
    assert (sizing.gpus_per_trial, sizing.max_concurrent) == (1.0, 2)
    unbounded = merge([{**cfg.to_flat(), "tune.max_concurrent_trials": 0}])
    assert sweeps.size_trials(unbounded, empty.most()).max_concurrent == 4  # one per GPU node
    with pytest.raises(ConfigError, match="the Ray cluster has 0;"):  # only what is up
        sweeps.size_trials(cfg, {"CPU": 0.0})
    custom = merge([{**cfg.to_flat(), "scaling.use_gpu": False,
                     "scaling.accelerator_resource": "accel"}])  # fmt: skip
    assert custom.scaling.worker_resources() == {"CPU": 1.0, "accel": 1.0}
    with pytest.raises(ConfigError, match="1 'accel' \\(one per worker\\)"):
        sweeps.size_trials(custom, {"CPU": 8.0})


@pytest.mark.ray
def test_autoscaler_node_types_come_from_the_bootstrap_config(ray_cluster, tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(
        "head_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 0}, max_workers: 0}\n"
        "  accel-worker: {resources: {CPU: 2, accel: 1}, min_workers: 0, max_workers: 3}\n"
    )
    grows = ray_runtime.cluster_capacity(str(bootstrap))
    assert grows.node_types == (NodeType("accel-worker", {"CPU": 2.0, "accel": 1.0}, 3),)
    assert grows.most()["accel"] == 3.0 and grows.most()["CPU"] == 4.0 + 6.0
    check_workers_fit(grows, {"CPU": 1.0, "accel": 1.0}, workers=3)


@pytest.mark.ray
def test_train_asking_for_what_no_node_has_fails_at_once_without_output(ray_cluster, tmp_path):
    from pipeline.train import run_training

    cfg = tiny_config(prepare_tiny_dataset(tmp_path), tmp_path,
                      **{"scaling.accelerator_resource": "accel"})  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        run_training(cfg)
    assert time.monotonic() - started < 60  # not Ray Train's 180 s worker-group timeout
    message = str(info.value)
    assert "each training worker asks for {CPU: 1, accel: 1}" in message
    assert "no autoscaler node types" in message and "the largest node has {CPU: 4}" in message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.ray
def test_a_pending_worker_group_is_logged_with_what_it_waits_for(ray_cluster, monkeypatch, caplog):
    from ray.util.placement_group import placement_group, remove_placement_group

    per_worker = {"CPU": 1.0, "accel": 1.0}
    grows = Capacity(nodes=(), node_types=(NodeType("accel-worker", {"CPU": 2, "accel": 1}, 2),))
    monkeypatch.setattr(ray_runtime, "WAIT_LOG_EVERY_S", 0.2)
    group = placement_group([per_worker, per_worker], strategy="PACK")  # pending: no accel
    try:
        with (
            caplog.at_level(logging.INFO, logger="pipeline.ray_runtime"),
            ray_runtime.WaitForNodesLog(per_worker, 2, grows) as waiting,
        ):
            assert waiting.waiting()
            time.sleep(1.0)
    finally:
        remove_placement_group(group)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting")]
    assert lines, "nothing was logged while the placement group was pending"
    assert lines[0].startswith("waiting for nodes: 2 training workers x {CPU: 1, accel: 1}; free")
    assert "the autoscaler can add accel-worker (up to 2 x {CPU: 2, accel: 1})" in lines[0]
    assert not ray_runtime.WaitForNodesLog({"CPU": 1.0, "accel": 1.0}, 2, grows).waiting()


def test_the_wait_log_of_an_elastic_run_names_its_range():
    grows = Capacity(nodes=(), node_types=())
    waiting = ray_runtime.WaitForNodesLog({"CPU": 1.0}, [1, 4], grows)
    assert (waiting.fewest, waiting.most) == (1, 4)


def test_a_broken_autoscaler_config_is_a_one_line_error_naming_the_file(tmp_path):
    broken = tmp_path / "cluster.yaml"
    broken.write_text("available_node_types:\n  gpu: {resources: {GPU: 1}\n")  # unclosed brace
    with pytest.raises(ConfigError, match=rf"^scaling.autoscaler_config: {broken}: not YAML at "):
        ray_runtime._config_node_types(str(broken))
    broken.write_text("- a list, not a cluster config\n")
    with pytest.raises(ConfigError, match="not a cluster config"):
        ray_runtime._config_node_types(str(broken))
    assert ray_runtime._config_node_types(str(tmp_path / "absent.yaml")) == ()
    assert ray_runtime._config_node_types("") == ()
