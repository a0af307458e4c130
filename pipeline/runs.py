"""Runs before Ray starts: the plan from config + dataset, the run folder, the MLflow run.

A run lives in `<train.storage_path>/<run name>/`, Ray Train's folder for its checkpoints: a local
folder or an `s3://` / `gs://` URI. We add `pixelrnn_run.json` there: the config and the MLflow
run, so a resumed run keeps its MLflow run and refuses a changed config.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import storage, tracking
from pipeline.config import ExperimentConfig, changed_keys
from pipeline.errors import ConfigError, PixelRNNError

if TYPE_CHECKING:
    from pipeline.data import PreparedDataset

RECORD_FILE = "pixelrnn_run.json"
# Keys a resumed run may change: more epochs or time (and where in it the learning rate anneals),
# other hardware, another place to look at it.
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_minutes", "optim.anneal_minutes", "scaling.",
    "tracking.sample_every_epochs", "data.verify", "train.checkpoint_every_minutes",
)  # fmt: skip


@dataclass(frozen=True)
class RunPlan:
    """Facts the workers need that come from the dataset, not the config."""

    steps_per_epoch: int
    channels: int
    height: int
    width: int
    levels: int


@dataclass(frozen=True)
class TrainingSummary:
    """What a finished `run_training` call reports back to the CLI."""

    run_name: str
    run_dir: str
    tracking_uri: str
    mlflow_run_id: str
    epochs: int
    metrics: dict[str, Any]
    best_checkpoint: str
    warning: str = ""  # a sanity check's verdict on the final metrics (see pipeline.sanity)
    model_uri: str = ""  # the logged MLflow model: models:/<name>/<version> or models:/<id>


@dataclass(frozen=True)
class RunRecord:
    """What `--resume` needs to continue a run."""

    name: str
    storage_path: str  # absolute folder or URI
    tracking_uri: str
    mlflow_run_id: str
    config: dict

    @property
    def directory(self) -> str:
        """The run folder: Ray Train's `storage_path/name`, a local path or a URI."""
        return storage.join(self.storage_path, self.name)

    def save(self) -> None:
        """Write the record atomically into the run folder."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        storage.write_text(storage.join(self.directory, RECORD_FILE), text)

    @classmethod
    def load(cls, directory: str | Path) -> RunRecord:
        """The record in a run folder (local path or URI)."""
        return cls(**json.loads(storage.read_text(storage.join(str(directory), RECORD_FILE))))


def storage_location(cfg: ExperimentConfig) -> str:
    """`train.storage_path` as an absolute folder (Ray changes workers' working directory) or a
    URI. Multi-node runs need storage every node reaches: `s3://`, `gs://` or a shared mount."""
    try:
        storage.require_bucket(cfg.train.storage_path)
    except PixelRNNError as error:
        raise ConfigError(f"train.storage_path: {error}") from None
    return storage.normalize(cfg.train.storage_path)


def new_run_name(cfg: ExperimentConfig) -> str:
    """`train.run_name`, else the experiment name and the start time."""
    if cfg.train.run_name:
        return cfg.train.run_name
    return f"{cfg.tracking.experiment_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_new_run(cfg: ExperimentConfig, name: str) -> None:
    """A fresh run must not land in an existing run's folder (Ray would silently resume it)."""
    root = storage_location(cfg)
    if storage.has_contents(storage.join(root, name)):
        raise ConfigError(
            f"train.run_name: run {name!r} already exists in {root}; "
            "pass --resume to continue it or choose another name"
        )


def find_run_to_resume(cfg: ExperimentConfig) -> RunRecord:
    """The run named by `train.run_name`, else the latest run of this experiment."""
    root = storage_location(cfg)
    prefix = f"{cfg.tracking.experiment_name}-"
    name = cfg.train.run_name or storage.latest_with(root, prefix, RECORD_FILE)
    if not name or not storage.is_file(storage.join(root, name, RECORD_FILE)):
        raise ConfigError(
            f"--resume: no run of experiment {cfg.tracking.experiment_name!r} "
            f"(train.run_name={cfg.train.run_name!r}) found in {root}"
        )
    record = RunRecord.load(storage.join(root, name))
    _check_same_experiment(ExperimentConfig.from_stored(record.config), cfg)
    return record


def _check_same_experiment(before: ExperimentConfig, after: ExperimentConfig) -> None:
    changed = [
        key
        for key in changed_keys(before, after)
        if key != "train.run_name" and not key.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        raise ConfigError(
            f"--resume: config differs from the run being resumed in {', '.join(changed)}; "
            "only train.epochs, train.max_minutes, optim.anneal_minutes, scaling.*, "
            "tracking.sample_every_epochs, data.verify and train.checkpoint_every_minutes may "
            "change"
        )


def make_plan(cfg: ExperimentConfig, dataset: PreparedDataset) -> RunPlan:
    """Check the config against the dataset's manifest and size the epochs."""
    for key, split in (("data.train_split", cfg.data.train_split),
                       ("data.val_split", cfg.data.val_split)):  # fmt: skip
        if split not in dataset.splits:
            raise ConfigError(f"{key}: {dataset.root} has no split {split!r} ({dataset.splits})")
    for key in ("channels", "levels"):
        have, want = getattr(dataset, key), getattr(cfg.model, key)
        if have != want:
            raise ConfigError(f"model.{key}: {want}, but the dataset at {dataset.root} has {have}")
    crop = cfg.data.crop_size
    if crop > min(dataset.height, dataset.width):
        raise ConfigError(
            f"data.crop_size: {crop} exceeds the {dataset.height}x{dataset.width} images"
        )
    images = dataset.count(cfg.data.train_split)
    steps = images // cfg.train.batch_size  # the last images % batch_size sit each epoch out
    if steps == 0:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is more than the {images} images of "
            f"split {cfg.data.train_split!r} in {dataset.root}"
        )
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    height, width = (crop, crop) if crop else (dataset.height, dataset.width)
    return RunPlan(steps, dataset.channels, height, width, dataset.levels)


def start_new_run(cfg: ExperimentConfig, dataset: PreparedDataset, plan: RunPlan):
    """Create the run folder's record and its MLflow run (params, tags, dataset manifest).

    Returns:
        (RunRecord, tracking.RunTracker).
    """
    name = new_run_name(cfg)
    check_new_run(cfg, name)
    root = storage_location(cfg)
    tags = tracking.run_tags(cfg, dataset.manifest, dataset.root)
    tags["pixelrnn.run_dir"] = storage.join(root, name)
    derived = {"batch_size_per_worker": cfg.describe_batch_per_worker(),
               "steps_per_epoch": plan.steps_per_epoch,
               "image_shape": f"{plan.channels}x{plan.height}x{plan.width}",
               "train_images": dataset.count(cfg.data.train_split)}  # fmt: skip
    tracker = tracking.start_run(cfg, name, tags, derived)
    tracker.log_dict(dataset.manifest, "dataset/manifest.json")
    tracker.log_dataset(dataset.manifest, dataset.root, cfg.data.train_split, "training")
    tracker.log_dataset(dataset.manifest, dataset.root, cfg.data.val_split, "validation")
    record = RunRecord(name, root, tracker.tracking_uri, tracker.run_id, cfg.to_dict())
    record.save()
    return record, tracker


def reopen_run(cfg: ExperimentConfig):
    """The run `--resume` continues, with its MLflow run marked RUNNING again."""
    record = find_run_to_resume(cfg)
    tracker = tracking.reopen_run(record.tracking_uri, record.mlflow_run_id)
    flat = cfg.to_flat()  # MLflow params cannot change, so allowed changes become a tag
    changes = changed_keys(ExperimentConfig.from_stored(record.config), cfg)
    if changes:
        tracker.set_tags({"pixelrnn.resume_changes": ", ".join(f"{k}={flat[k]}" for k in changes)})
    record = dataclasses.replace(record, config=cfg.to_dict())
    record.save()
    return record, tracker
