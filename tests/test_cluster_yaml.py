"""cluster.yaml passes the Ray cluster launcher's own validation, offline (as `ray up` does)."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_the_launchers_schema_and_validation(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_config))
    validate_config(prepared)  # raises on any schema or consistency error
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_validation_rejects_a_broken_config(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["gpu_worker"]["unknown_field"] = 1
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        validate_config(prepare_config(broken))


def test_nothing_is_exposed_and_no_hyperparameters_live_here(cluster_config):
    text = (REPO_ROOT / "cluster.yaml").read_text()
    head_commands = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_commands
    assert "--bind 127.0.0.1:5000" in head_commands  # MLflow: loopback for tunnels, private IP
    assert "0.0.0.0" not in text
    for hyperparameter in ("lr", "learning_rate", "hidden_channels", "num_layers", "batch_size"):
        assert f"{hyperparameter}:" not in text
