"""Connecting to Ray: an existing cluster when there is one, else a contained local one.

Under `ray job submit` / `ray submit` (RAY_ADDRESS set, or `address="auto"` asked for) we attach
to the running cluster and pass no resource arguments. Otherwise a local cluster is started with
the dashboard bound to 127.0.0.1 (Ray Train's placement-group cleanup needs its State API) and
more logical CPUs than cores, so Ray Data's read tasks never starve training workers.
`cluster_capacity` tells what the cluster can grow to (its autoscaler's node types), and
`WaitForNodesLog` says what a run waits for while its workers cannot start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.util
import yaml

from pipeline import capacity
from pipeline.errors import ClusterError, ConfigError

logger = logging.getLogger(__name__)

# Variables that keep runs quiet and contained; they are exported to every Ray worker too.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Ray Data logs every dataset execution (each epoch and validation) at INFO.
    "RAY_DATA_LOG_LEVEL": "WARNING",
}
# Where a cluster address comes from, for errors; how long a TCP connect to it may take.
ADDRESS_SOURCE = "(scaling.ray_address or RAY_ADDRESS)"
REACH_TIMEOUT_S = 10.0


def export_quiet_env() -> dict[str, str]:
    """Set `QUIET_ENV` in this process where unset; return the values now in force."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in QUIET_ENV}


def pin_cluster_address() -> None:
    """Worker setup hook of local clusters: name this cluster in RAY_ADDRESS in every worker.

    Ray Train's placement-group cleaner asks the State API with no address; with two local
    clusters on one machine that lookup fails, the cleaner stops, and the workers of a trial
    ASHA stopped keep their CPUs, so the next trial waits for them forever.
    """
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _job_env_var_names() -> set[str]:
    """Variables the enclosing Ray Job (`ray job submit --runtime-env-json`) already sets.

    Ray refuses a `ray.init` runtime_env that names any of them again; their values are in this
    process's environment already, and the job passes them on to every worker itself.
    """
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return set((job_config.get("runtime_env") or {}).get("env_vars") or {})


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    temp_dir: str | None = None,
) -> None:
    """Initialise Ray once per process.

    Args:
        address: a cluster address ("auto", "ray://...", "host:port"); None means RAY_ADDRESS
            when set, else a new local cluster.
        num_cpus: logical CPUs of a new local cluster (None: cores + 2).
        object_store_memory: bytes for a new local cluster's object store.
        temp_dir: Ray's session folder for a new local cluster (keep it short: socket paths).

    Raises:
        ClusterError: nothing answers at `address` (Ray itself would keep retrying), Ray
            finds no cluster for "auto", or a new local cluster did not come up in time.
    """
    if ray.is_initialized():
        return
    env_vars = export_quiet_env()
    runtime_env = {"env_vars": env_vars}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        check_reachable(address)
        taken = _job_env_var_names()
        runtime_env["env_vars"] = {k: v for k, v in env_vars.items() if k not in taken}
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except ConnectionError as error:  # "auto" with no cluster; a ray:// server that is gone
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ClusterError(f"Ray cluster at {address} {ADDRESS_SOURCE}: {reason}") from None
        return
    num_cpus = num_cpus or (os.cpu_count() or 1) + 2
    runtime_env["worker_process_setup_hook"] = "pipeline.ray_runtime.pin_cluster_address"
    logger.info("starting a local Ray cluster with %d logical CPUs", num_cpus)
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
            _temp_dir=temp_dir,
        )
    except Exception as error:  # Ray raises a bare Exception when its raylet is slow to register
        if "timed out during startup" not in str(error):
            raise
        raise ClusterError(
            "a new local Ray cluster did not start: its raylet did not register within Ray's"
            " 30 s (a machine too busy?); try again, or start one with `ray start --head` and"
            " set RAY_ADDRESS=auto"
        ) from None
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail fast when nothing listens at a "host:port" cluster address.

    Ray's own connect keeps retrying an address that does not answer (still after 8 minutes when
    tried here), logging a warning every few seconds. Ray reads a loopback host as this node's
    IP address, so either may answer for it. "auto" and "ray://" client addresses are left to
    `ray.init`, which fails by itself.

    Raises:
        ClusterError: naming the address, when it is malformed or a TCP connection to it fails
            within `timeout_s`.
    """
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal, "[::1]:6379"
    if not host or not port.isdigit():
        raise ClusterError(f"Ray cluster address {address!r} {ADDRESS_SOURCE}: not host:port")
    hosts = [host]
    if host in ("localhost", "127.0.0.1", "::1"):
        hosts.append(ray.util.get_node_ip_address())
    for candidate in hosts:
        try:
            socket.create_connection((candidate, int(port)), timeout=timeout_s).close()
            return
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
    raise ClusterError(f"Ray cluster at {address} {ADDRESS_SOURCE}: {reason}")


WAIT_LOG_EVERY_S = 30.0
START_TIMEOUT_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@contextlib.contextmanager
def worker_group_start_timeout(seconds: float | None) -> Iterator[None]:
    """Within the block, Ray Train gives up placing a worker group after `seconds` (None: leave
    the setting alone). `fit()` hands the variable to its controller when it starts it.

    An elastic run sizes each new group by the autoscaling coordinator's view of the cluster,
    refreshed every 20 s; a group sized by a stale view (a node just lost) waits for placement
    until this timeout, then the controller tries again with what fits.
    """
    if seconds is None:
        yield
        return
    before = os.environ.get(START_TIMEOUT_VAR)
    os.environ[START_TIMEOUT_VAR] = f"{seconds:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_VAR, None)
        else:
            os.environ[START_TIMEOUT_VAR] = before


def cluster_capacity(autoscaler_config: str = "") -> capacity.Capacity:
    """The connected cluster's live nodes, and the node types its autoscaler can add.

    Node types come from what the cluster reports to the GCS (KubeRay, autoscaler v2), else from
    the autoscaler's cluster config file `autoscaler_config` (`scaling.autoscaler_config`: where
    `ray up` leaves it on the head, ~/ray_bootstrap_config.yaml, which Ray Tune reads too); none
    when neither is there, and then only the nodes up count.
    """
    nodes = tuple(
        {name: float(amount) for name, amount in node["Resources"].items()}
        for node in ray.nodes()
        if node["Alive"]
    )
    node_types = _reported_node_types() or _config_node_types(autoscaler_config)
    unknown = [kind.name for kind in node_types if not kind.resources]
    if unknown:
        logger.warning("autoscaler node types %s declare no resources: sizing by the nodes up, "
                       "and no request is refused", unknown)  # fmt: skip
    return capacity.Capacity(nodes, node_types, known=not unknown)


def _reported_node_types() -> tuple[capacity.NodeType, ...]:
    try:
        config = ray._private.state.state.get_cluster_config()  # Ray pinned: a private API
    except Exception:  # an older GCS, or none reported
        return ()
    if config is None:
        return ()
    return tuple(
        capacity.NodeType(group.name, dict(group.resources), group.max_count)
        for group in config.node_group_configs
        if group.max_count > 0
    )


def _config_node_types(autoscaler_config: str) -> tuple[capacity.NodeType, ...]:
    """The worker node types of an autoscaler cluster config (YAML or JSON); () if no file."""
    path = Path(autoscaler_config).expanduser()
    if not autoscaler_config or not path.is_file():
        return ()
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"scaling.autoscaler_config: {path}: not YAML{where}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"scaling.autoscaler_config: {path}: not a cluster config (a mapping)")
    head = config.get("head_node_type")
    return tuple(
        capacity.NodeType(name, {k: float(v) for k, v in (kind.get("resources") or {}).items()},
                          int(kind.get("max_workers", 0)))
        for name, kind in (config.get("available_node_types") or {}).items()
        if name != head and kind.get("max_workers", 0) > 0
    )  # fmt: skip


class WaitForNodesLog:
    """While a worker group waits for nodes, log what it waits for every `WAIT_LOG_EVERY_S`.

    A driver-side thread: it looks for pending placement groups whose bundles are this run's
    workers (Ray Train reserves its workers as one placement group), so it speaks only while the
    group cannot start, including after a node is lost.
    """

    def __init__(
        self, per_worker: dict[str, float], workers: int | list[int], grows: capacity.Capacity
    ):
        """`workers`: `scaling.num_workers`, a count or a range [min, max]."""
        self.per_worker, self.grows = per_worker, grows
        self.fewest, self.most = workers if isinstance(workers, list) else [workers, workers]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wait-for-nodes", daemon=True)

    def __enter__(self) -> WaitForNodesLog:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()

    def _run(self) -> None:
        while not self.stop.wait(WAIT_LOG_EVERY_S):
            try:
                if self.waiting():
                    logger.info(self.message())
            except Exception:  # the log line is a courtesy: never let it break the run
                logger.debug("could not read the placement groups", exc_info=True)

    def waiting(self) -> bool:
        """Whether a placement group for this run's workers is pending."""
        wanted = {k: v for k, v in self.per_worker.items() if v}
        for group in ray.util.placement_group_table().values():
            bundles = list(group.get("bundles", {}).values())
            if (
                group.get("state") == "PENDING"
                and self.fewest <= len(bundles) <= self.most
                and all({k: v for k, v in bundle.items() if v} == wanted for bundle in bundles)
            ):
                return True
        return False

    def message(self) -> str:
        """What the run waits for, what is free now and what the autoscaler can add."""
        workers = f"{self.fewest}" if self.fewest == self.most else f"{self.fewest}-{self.most}"
        return (f"waiting for nodes: {workers} training workers x "
                f"{capacity.describe(self.per_worker)}; free now "
                f"{capacity.describe(ray.available_resources())}; the autoscaler can add "
                f"{self.grows.describe_types()}")  # fmt: skip
