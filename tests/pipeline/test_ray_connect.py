"""A cluster address where no Ray answers is a one-line error naming it, not an endless retry.

Ray's own `ray.init(address=...)` keeps retrying such an address, logging a warning every few
seconds; `pixelrnn train` checks it first and exits 2 before it writes any run state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from train_support import prepare_tiny_dataset, tiny_overrides

from pipeline import ray_runtime
from pipeline.errors import ClusterError


def closed_port() -> int:
    """A loopback TCP port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_address_fails_fast_naming_it():
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"Ray cluster at {address} .*RAY_ADDRESS"):
        ray_runtime.check_reachable(address, timeout_s=2.0)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("address", ["10.0.0.5", "head-node:", "head-node:port"])
def test_an_address_without_a_port_is_refused(address):
    with pytest.raises(ClusterError, match="not host:port"):
        ray_runtime.check_reachable(address)


def test_a_listening_address_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ray_runtime.check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
        ray_runtime.check_reachable(f"localhost:{server.getsockname()[1]}")


@pytest.mark.ray
def test_the_session_clusters_gcs_address_passes(ray_cluster):
    ray_runtime.check_reachable(ray_cluster.get_runtime_context().gcs_address)


def test_train_with_a_dead_ray_address_exits_2_and_writes_nothing(tmp_path):
    data_root = prepare_tiny_dataset(tmp_path)
    work = tmp_path / "work"
    address = f"127.0.0.1:{closed_port()}"
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(data_root, work)))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--config", str(config),
         "--set", f"scaling.ray_address={address}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pixelrnn: error: Ray cluster at {address} (scaling.ray_address"), last
    assert "Traceback" not in done.stderr
    assert not work.exists()  # neither a run folder nor an MLflow store was started
