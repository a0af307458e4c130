"""Connecting to Ray: an existing cluster when there is one, else a contained local one.

Under `ray job submit` / `ray submit` (RAY_ADDRESS set, or `address="auto"` asked for) we attach
to the running cluster and pass no resource arguments. Otherwise a local cluster is started with
the dashboard bound to 127.0.0.1 (Ray Train's placement-group cleanup needs its State API) and
more logical CPUs than cores, so Ray Data's read tasks never starve training workers.
"""

from __future__ import annotations

import json
import logging
import os

import ray

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
    """
    if ray.is_initialized():
        return
    env_vars = export_quiet_env()
    runtime_env = {"env_vars": env_vars}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        taken = _job_env_var_names()
        runtime_env["env_vars"] = {k: v for k, v in env_vars.items() if k not in taken}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    num_cpus = num_cpus or (os.cpu_count() or 1) + 2
    runtime_env["worker_process_setup_hook"] = "pipeline.ray_runtime.pin_cluster_address"
    logger.info("starting a local Ray cluster with %d logical CPUs", num_cpus)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        _temp_dir=temp_dir,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
