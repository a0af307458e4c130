"""Sweeps before and after Ray Tune: sizing trials to the cluster, the sweep folder, best config.

A sweep lives in `<train.storage_path>/<sweep name>/` (a local folder or an `s3://`/`gs://` URI):
Tune's experiment folder, with our `pixelrnn_sweep.json` (the configs and the MLflow parent run, so
`--resume` continues the same sweep), each trial's Ray Train run under `train/<trial id>/`, and
`best_experiment.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from pipeline import runs, storage, tracking
from pipeline.config import ExperimentConfig, changed_keys, merge
from pipeline.errors import ConfigError

RECORD_FILE = "pixelrnn_sweep.json"
BEST_FILE = "best_experiment.yaml"
TRAIN_FOLDER = "train"
STOPPED_EARLY_TAG = "pixelrnn.stopped_early"  # on the MLflow run of a trial ASHA stopped
# Keys a best-trial experiment file leaves out: they describe the sweep, not a training run.
NOT_FOR_TRAINING = ("tune.", "train.run_name")


@dataclass(frozen=True)
class TrialSizing:
    """What one trial holds while it runs, and how many trials run at once."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int


def check_fixed_workers(cfg: ExperimentConfig) -> None:
    """Refuse a range of worker counts in a sweep (docs/sweeps.md says why).

    A trial's resources are sized and placed once, and ASHA compares trials at equal epochs: a
    trial that shrank would run slower and hold less than it was sized for, one that grew would
    take resources sized for other trials, and their costs would not compare.
    """
    if cfg.scaling.elastic:
        raise ConfigError(
            f"scaling.num_workers: sweeps take a fixed worker count, not a range "
            f"({cfg.scaling.num_workers}); each trial is sized and placed once (docs/sweeps.md)"
        )


def size_trials(cfg: ExperimentConfig, cluster: dict[str, float]) -> TrialSizing:
    """Fit trials to the cluster: each holds its driver, its Train workers and Ray Data's reads.

    Tune only sees a trial's driver; its workers are placed by Ray Train afterwards. A trial that
    cannot get them waits on a worker-group timeout, so a sweep that does not fit fails here.

    Args:
        cfg: the sweep's base config (`scaling` and `tune` sections).
        cluster: the Ray cluster's total resources, as far as it can grow
            (`capacity.Capacity.most()`; a fixed cluster's `ray.cluster_resources()`).

    Raises:
        ConfigError: one trial, or `tune.max_concurrent_trials` trials, need more than the cluster;
            or its workers are a range (`check_fixed_workers`).
    """
    check_fixed_workers(cfg)
    scaling, tune = cfg.scaling, cfg.tune
    cpus = tune.trial_driver_cpus + scaling.num_workers * scaling.cpus_per_worker + tune.data_cpus
    accelerator = scaling.accelerator_resource  # "GPU", or the custom resource standing for it
    held = accelerator in scaling.worker_resources()
    gpus = float(scaling.num_workers) if held else 0.0
    have_cpus, have_gpus = cluster.get("CPU", 0.0), cluster.get(accelerator, 0.0)
    unit = scaling.accelerator_unit()
    needs = (
        f"{tune.trial_driver_cpus:g} for its driver (tune.trial_driver_cpus) + "
        f"{scaling.num_workers} workers x {scaling.cpus_per_worker:g} (scaling.num_workers, "
        f"scaling.cpus_per_worker) + {tune.data_cpus:g} for Ray Data (tune.data_cpus)"
    )
    if cpus > have_cpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: one trial needs {cpus:g} CPUs ({needs}), but the Ray cluster "
            f"has {have_cpus:g}; use fewer or smaller workers, or a bigger cluster"
        )
    if gpus > have_gpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: one trial needs {gpus:g} {unit} (one per worker), but the Ray "
            f"cluster has {have_gpus:g}"
        )
    fit = math.floor(have_cpus / cpus + 1e-9)
    if gpus:
        fit = min(fit, math.floor(have_gpus / gpus + 1e-9))
    if tune.max_concurrent_trials > fit:
        raise ConfigError(
            f"tune.max_concurrent_trials: {tune.max_concurrent_trials} trials at once need "
            f"{tune.max_concurrent_trials * cpus:g} CPUs and {tune.max_concurrent_trials * gpus:g}"
            f" {unit} ({needs} CPUs each), but the Ray cluster has {have_cpus:g} CPUs and "
            f"{have_gpus:g} {unit}: at most {fit} fit"
        )
    concurrent = min(tune.max_concurrent_trials or fit, tune.num_samples)
    return TrialSizing(cpus, gpus, concurrent)


@dataclass(frozen=True)
class SweepRecord:
    """What a sweep's trials and `--resume` need, saved in the sweep folder."""

    name: str
    storage_path: str  # absolute folder or URI; the sweep folder is storage_path/name
    tracking_uri: str
    parent_run_id: str
    space: str
    config: dict  # the sweep's config as the user wrote it (relative paths stay relative)
    trial_config: dict  # the same with absolute paths: what every trial starts from

    @property
    def directory(self) -> str:
        """The sweep folder, a local path or a URI."""
        return storage.join(self.storage_path, self.name)

    def save(self) -> None:
        """Write the record atomically into the sweep folder."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        storage.write_text(storage.join(self.directory, RECORD_FILE), text)

    @classmethod
    def load(cls, directory: str) -> SweepRecord:
        """The record in a sweep folder (local path or URI)."""
        return cls(**json.loads(storage.read_text(storage.join(directory, RECORD_FILE))))


def new_sweep_name(cfg: ExperimentConfig) -> str:
    """`tune.sweep_name`, else the experiment name, "sweep" and the start time."""
    if cfg.tune.sweep_name:
        return cfg.tune.sweep_name
    return f"{cfg.tracking.experiment_name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"


def check_new_sweep(cfg: ExperimentConfig, name: str) -> None:
    """A new sweep must not land in an existing folder (Tune would mix two experiments)."""
    root = runs.storage_location(cfg)
    if storage.has_contents(storage.join(root, name)):
        raise ConfigError(
            f"tune.sweep_name: sweep {name!r} already exists in {root}; "
            "pass --resume to continue it or choose another name"
        )


def find_sweep_to_resume(cfg: ExperimentConfig) -> SweepRecord:
    """The sweep named by `tune.sweep_name`, else this experiment's latest sweep.

    Raises:
        ConfigError: there is none, or the config differs from the one the sweep started with.
    """
    root = runs.storage_location(cfg)
    prefix = f"{cfg.tracking.experiment_name}-sweep-"
    name = cfg.tune.sweep_name or storage.latest_with(root, prefix, RECORD_FILE)
    if not name or not storage.is_file(storage.join(root, name, RECORD_FILE)):
        raise ConfigError(
            f"--resume: no sweep of experiment {cfg.tracking.experiment_name!r} "
            f"(tune.sweep_name={cfg.tune.sweep_name!r}) found in {root}"
        )
    record = SweepRecord.load(storage.join(root, name))
    before = ExperimentConfig.from_stored(record.config)
    changed = [
        key for key in changed_keys(before, cfg) if key not in ("tune.sweep_name", "data.verify")
    ]
    if changed:
        raise ConfigError(
            f"--resume: config differs from the sweep being resumed in {', '.join(changed)}; "
            "a sweep continues with the config it started with"
        )
    return record


def trial_base(cfg: ExperimentConfig, sweep_dir: str, tracking_uri: str) -> ExperimentConfig:
    """The sweep's config as trials see it: absolute paths (Tune changes their working folder)
    or URIs."""
    return merge([cfg.to_flat(), {
        "data.path": storage.normalize(cfg.data.path),
        "train.storage_path": storage.join(sweep_dir, TRAIN_FOLDER),
        "tracking.tracking_uri": tracking_uri,
    }])  # fmt: skip


def trial_config(base: dict, params: dict[str, Any], trial_id: str) -> ExperimentConfig:
    """One trial's config: the sweep's base with the sampled params, named by the trial id."""
    flat = ExperimentConfig.from_dict(base).to_flat()
    return merge([flat, params, {"train.run_name": trial_id}])


def best_experiment(config: dict, params: dict[str, Any]) -> dict[str, Any]:
    """A ready-to-run experiment file: the sweep's config with a trial's params, deltas only.

    Args:
        config: the sweep's config as the user wrote it (`SweepRecord.config`).
        params: the trial's sampled values by dotted key (strings from MLflow are parsed).

    Returns:
        Nested {section: {key: value}} of what differs from the defaults (or the preset's).
    """
    cfg = ExperimentConfig.from_dict(config)
    best = merge([cfg.to_flat(), params])
    baseline = merge([{"preset": best.preset}]) if best.preset else ExperimentConfig()
    flat = best.to_flat()
    nested: dict[str, Any] = {"preset": best.preset} if best.preset else {}
    for key in changed_keys(baseline, best):
        if key.startswith(NOT_FOR_TRAINING) or key == "preset":
            continue
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = flat[key]
    return nested


def best_experiment_text(experiment: dict[str, Any], header: list[str]) -> str:
    """An experiment YAML with a comment header saying where it came from."""
    comments = "".join(f"# {line}\n" for line in header)
    return comments + yaml.safe_dump(experiment, sort_keys=False)


def settle_stopped_trials(record: SweepRecord) -> list[tracking.RunSummary]:
    """The sweep's child runs, with trials ASHA stopped marked KILLED (not FAILED).

    A stopped trial's `run_training` sees its Train run killed by the stop's teardown (an
    `ActorDiedError`, traced after `SweepCallback` ended the run KILLED) and leaves the run alone
    when Tune's session is gone (`tune._stopped_by_tune`); a run that ended FAILED or with another
    message anyway is put back here, after the sweep, and by the trial (`keep_stop_verdict`).
    """
    trials = tracking.find_runs(record.tracking_uri, parent_run_id=record.parent_run_id)
    for index, run in enumerate(trials):
        message = _stop_to_restore(run.status, run.tags)
        if message is not None:
            tracking.RunTracker(record.tracking_uri, run.run_id).finish("KILLED", message)
            tags = {**run.tags, tracking.FAILURE_TAG: message}
            trials[index] = dataclasses.replace(run, status="KILLED", tags=tags)
    return trials


def keep_stop_verdict(tracker: tracking.RunTracker) -> bool:
    """In a trial's own process, once `run_training` ended its run: if the sweep driver marked
    the trial stopped by ASHA, the run ends KILLED with the stop's message, whatever the stop's
    teardown made `run_training` write. True when the run was changed.

    The driver tags the run before it ends it, and this reads the tags after the trial's own
    end: whichever writes last, the run ends KILLED.
    """
    run = tracker.client.get_run(tracker.run_id)
    message = _stop_to_restore(run.info.status, run.data.tags)
    if message is None:
        return False
    tracker.finish("KILLED", message)
    return True


def _stop_to_restore(status: str, tags: dict[str, str]) -> str | None:
    """The stop message a run ASHA stopped should end with, if it does not already; else None."""
    if tags.get(STOPPED_EARLY_TAG) != "true":
        return None
    message = tags.get("pixelrnn.stopped_message", "stopped by ASHA")
    if status == "KILLED" and tags.get(tracking.FAILURE_TAG) == message:
        return None
    return message


def best_trial(trials: list[tracking.RunSummary], tracking_uri: str, metric: str, mode: str):
    """(run, value) of the trial with the best `metric` over all its reports; None if none has it.

    Failed trials (divergence, errors) are left out; trials stopped early by ASHA count.
    """
    scored = []
    for run in trials:
        if run.status == "FAILED":
            continue
        history = tracking.RunTracker(tracking_uri, run.run_id).metric_history(metric)
        if history:
            values = [value for _, value in history]
            scored.append((min(values) if mode == "min" else max(values), run))
    if not scored:
        return None
    value, run = (min if mode == "min" else max)(scored, key=lambda pair: pair[0])
    return run, value
