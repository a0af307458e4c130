"""MLflow tracking (with tracking_models.py, the only importers of mlflow). One path: the driver
opens the run and logs config, tags, provenance, the dataset inputs and system metrics; a Ray
Train callback on the controller (on the driver's node) logs reports and sample grids (as MLflow
images with steps); workers never touch MLflow, so a local store serves multi-node runs.
Store: MLFLOW_TRACKING_URI, else `tracking.tracking_uri`, else `sqlite:///<cwd>/mlflow.db` with
artifacts in `<cwd>/mlruns` (view: `mlflow ui --backend-store-uri sqlite:///mlflow.db`), or in
`tracking.artifact_location` for experiments created with one set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline import sanity
from pipeline.config import ExperimentConfig, TrackingConfig
from pipeline.errors import PixelRNNError

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
FAILURE_TAG = "pixelrnn.failure"  # why a run ended FAILED or KILLED
PREVIOUS_FAILURE_TAG = "pixelrnn.previous_failure"  # the same, of a segment a --resume continued


def resolve_tracking_uri(cfg: TrackingConfig, cwd: str | Path | None = None) -> str:
    """The MLflow store for this run, with relative SQLite paths made absolute.

    Workers and the Ray Train controller run in other folders, so the URI must not depend on
    the working directory.
    """
    cwd = Path(cwd or os.getcwd())
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if not uri:
        return f"sqlite:///{(cwd / DEFAULT_DB).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _artifact_location(tracking_uri: str, configured: str = "") -> str | None:
    """`tracking.artifact_location` (a folder made an absolute file URI), else: artifacts of a
    SQLite store go next to the database file, and servers choose their own."""
    if configured:
        return configured if urlparse(configured).scheme else Path(configured).resolve().as_uri()
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / DEFAULT_ARTIFACTS).as_uri()
    return None


def git_commit(path: str | Path | None = None) -> tuple[str, bool]:
    """(commit hash or "unknown", whether the work tree has uncommitted changes)."""
    folder = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return (commit or "unknown"), bool(git("status", "--porcelain"))


def manifest_sha256(manifest: dict) -> str:
    """A stable hash of a dataset manifest (canonical JSON)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def run_tags(cfg: ExperimentConfig, manifest: dict, data_root: str) -> dict[str, str]:
    """Provenance tags: code version, dataset identity, layer type and library versions."""
    commit, dirty = git_commit()
    return {
        "mlflow.source.git.commit": commit,
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "dataset.name": _dataset_name(manifest, data_root),
        "dataset.path": str(data_root),
        "dataset.manifest_sha256": manifest_sha256(manifest),
        "model.layer": cfg.model.layer,
        "model.preset": cfg.preset or "none",
        "version.ray": version("ray"),
        "version.torch": version("torch"),
        "version.mlflow": version("mlflow"),
    }


def _dataset_name(manifest: dict, data_root: str) -> str:
    return sanity.dataset_name(manifest) or Path(data_root).name


DIGEST_CHARS = 32  # of the manifest's sha256 (MLflow's digest limit is 36)


def dataset_entity(manifest: dict, data_root: str, split: str):
    """One split as an `mlflow.entities.Dataset`: name `<dataset>/<split>`, source `data_root`,
    digest from the manifest's sha256, and a profile of split, image shape and counts."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    sha256 = manifest_sha256(manifest)
    height, width, channels = manifest["shape"]
    splits = manifest.get("splits", {})
    profile = {
        "split": split,
        "images": splits.get(split, {}).get("count"),
        "counts": {name: entry.get("count") for name, entry in splits.items()},
        "image_shape": [channels, height, width],  # (C, H, W) of the stored images
        "levels": manifest.get("levels"),
        "manifest_sha256": sha256,
    }
    name = f"{_dataset_name(manifest, data_root)}/{split}"
    with warnings.catch_warnings():  # MLflow 3.17 registers its local source type twice
        warnings.filterwarnings("ignore", message="The specified dataset source can be interp")
        source = resolve_dataset_source(str(data_root))
    meta = MetaDataset(source, name=name, digest=sha256[:DIGEST_CHARS]).to_dict()
    return Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"],
                   source=meta["source"], profile=json.dumps(profile))  # fmt: skip


class SystemMetrics:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with `nvidia-ml-py`) of this
    node, sampled every 10 s by a thread into `system/...` metrics of one run."""

    def __init__(self, tracker: RunTracker, enabled: bool, resumed: bool = False):
        self.monitor = None
        if not enabled:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self.monitor = SystemMetricsMonitor(
                tracker.run_id, resume_logging=resumed, tracking_uri=tracker.tracking_uri
            )
        except ImportError as error:  # psutil is a dependency; say so if it went missing
            logger.warning("no system metrics: %s", error)

    def __enter__(self) -> SystemMetrics:
        if self.monitor is not None:
            self.monitor.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.monitor is not None:
            self.monitor.finish()


@dataclass
class RunTracker:
    """Logs to one MLflow run; picklable (only the URI and run id travel to Ray actors)."""

    tracking_uri: str
    run_id: str
    _client: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log every finite numeric value of a report at optimizer step `step`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)
        ]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params."""
        from mlflow.entities import Param

        self._log_batches("params", [Param(key, str(value)) for key, value in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags (overwriting earlier values)."""
        from mlflow.entities import RunTag

        self._log_batches("tags", [RunTag(key, str(value)) for key, value in tags.items()])

    def _log_batches(self, kind: str, items: list) -> None:
        """`log_batch` of params or tags (`kind`), 100 a request: MLflow's limit."""
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, **{kind: items[start : start + 100]})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, png: str | Path, key: str, step: int) -> None:
        """Log a PNG as an MLflow image under `key` at `step`: the run page shows each key as a
        panel with a step slider, and the compare view puts runs' images side by side."""
        from PIL import Image

        with Image.open(png) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key=key, step=step,
                                  synchronous=True)  # fmt: skip

    def log_dataset(self, manifest: dict, data_root: str, split: str, context: str) -> None:
        """Log one split of a prepared dataset as a run input (the run page's Datasets column).

        Args:
            manifest: the dataset's manifest.json; its sha256 identifies the dataset (MLflow
                caps digests at 36 characters, so the digest is its first DIGEST_CHARS hex digits;
                the profile and the `dataset.manifest_sha256` tag carry the whole hash).
            data_root: where the dataset lives (a folder or a URI): the dataset's source.
            split: the split read (its image count goes into the profile).
            context: MLflow's input context: "training" or "validation".
        """
        from mlflow.entities import DatasetInput, InputTag

        dataset = dataset_entity(manifest, data_root, split)
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=[tag])])

    def log_dict(self, data: dict, artifact_file: str) -> None:
        """Store a dict as a JSON artifact."""
        self.client.log_dict(self.run_id, data, artifact_file)

    def finish(self, status: str, message: str = "") -> None:
        """End the run as FINISHED, FAILED or KILLED; a failure message becomes a tag."""
        if message:
            self.client.set_tag(self.run_id, FAILURE_TAG, message[:5000])
        self.client.set_terminated(self.run_id, status=status)

    def status(self) -> str:
        """The run's current MLflow status."""
        return self.client.get_run(self.run_id).info.status

    def tag(self, key: str) -> str:
        """The value of one of the run's tags ("" when it has none)."""
        return self.client.get_run(self.run_id).data.tags.get(key, "")

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in logging order."""
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]


def start_run(
    cfg: ExperimentConfig, run_name: str, tags: dict[str, str], derived: dict[str, Any]
) -> RunTracker:
    """Create an MLflow run in `tracking.experiment_name` with the config as params.

    Args:
        cfg: the experiment config; its flattened keys become params.
        run_name: the Ray Train run's name (the MLflow run name too).
        tags: provenance tags (see `run_tags`).
        derived: values computed from config and data (global batch size, image shape...).
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(cfg.tracking)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    wanted = _artifact_location(uri, cfg.tracking.artifact_location)
    if experiment is None:
        experiment_id = client.create_experiment(
            cfg.tracking.experiment_name, artifact_location=wanted
        )
    else:
        experiment_id = experiment.experiment_id
        if cfg.tracking.artifact_location and experiment.artifact_location != wanted:
            logger.warning(
                "tracking.artifact_location: experiment %r already keeps its artifacts in %s",
                cfg.tracking.experiment_name, experiment.artifact_location,
            )  # fmt: skip
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    tracker = RunTracker(uri, run.info.run_id, client)
    tracker.log_params({**cfg.to_flat(), **{f"derived.{k}": v for k, v in derived.items()}})
    logger.info("MLflow run %s (%s) in %s", run_name, run.info.run_id, uri)
    return tracker


def reopen_run(tracking_uri: str, run_id: str) -> RunTracker:
    """Continue an existing run (after `--resume`): it is marked RUNNING again.

    The failure message of the segment that stopped (FAILURE_TAG, e.g. "interrupted") moves
    to PREVIOUS_FAILURE_TAG, so that a resumed run that then finishes does not show as failed;
    a new failure sets FAILURE_TAG again.
    """
    tracker = RunTracker(tracking_uri, run_id)
    failure = tracker.tag(FAILURE_TAG)
    tracker.client.update_run(run_id, status="RUNNING")
    tags = {"pixelrnn.resumed": "true"}
    if failure:
        tags[PREVIOUS_FAILURE_TAG] = failure
        tracker.client.delete_tag(run_id, FAILURE_TAG)
    tracker.set_tags(tags)
    logger.info("continuing MLflow run %s in %s", run_id, tracking_uri)
    return tracker


def download_artifact(tracking_uri: str, run_id: str, path: str, destination: str) -> str:
    """Fetch one artifact of a run into `destination`; returns the local path."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, path, destination)


@dataclass(frozen=True)
class RunSummary:
    """One MLflow run as plain values: what `pixelrnn compare` and sweeps read back."""

    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    start_time_ms: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric


def find_runs(
    tracking_uri: str,
    experiment_name: str | None = None,
    run_ids: tuple[str, ...] = (),
    parent_run_id: str | None = None,
) -> list[RunSummary]:
    """Runs by id, the child runs of a parent (a sweep's trials), or an experiment's runs.

    Raises:
        PixelRNNError: the experiment or a run id is not in the store.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if run_ids:
        found = [_get_run(client, run_id, tracking_uri) for run_id in run_ids]
    else:
        if parent_run_id:
            parent = _get_run(client, parent_run_id, tracking_uri)
            experiment_ids = [parent.info.experiment_id]
            query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
        else:
            experiment = client.get_experiment_by_name(experiment_name or "")
            if experiment is None:
                raise PixelRNNError(
                    f"--experiment: no MLflow experiment {experiment_name!r} in {tracking_uri}"
                )
            experiment_ids, query = [experiment.experiment_id], ""
        found = client.search_runs(experiment_ids, query, order_by=["attributes.start_time ASC"])
    return [_summary(run) for run in found]


def latest_experiment(tracking_uri: str) -> str:
    """The name of the experiment whose run started last (what `compare` shows by default).

    Raises:
        PixelRNNError: the store has no runs.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    latest = client.search_runs(
        list(experiments), order_by=["attributes.start_time DESC"], max_results=1
    )
    if not latest:
        raise PixelRNNError(f"no MLflow runs in {tracking_uri} to compare")
    return experiments[latest[0].info.experiment_id]


def _get_run(client, run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise PixelRNNError(f"no MLflow run {run_id!r} in {tracking_uri}") from None


def _summary(run) -> RunSummary:
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        start_time_ms=int(run.info.start_time or 0),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )
