"""Ray Tune sweeps (the only importer of `ray.tune`): one Ray Train run per trial, under ASHA.

With Ray Train V2, `Tuner(trainer)` is gone: each trial is a function trainable that fits its own
`TorchTrainer` through `train.run_training` (the code path of `pixelrnn train`), with
`TuneReportCallback` forwarding every Train report to Tune, where ASHA stops weak trials at epoch
rungs. MLflow: the sweep is a parent run; each trial is a child run named by its trial id.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from pipeline import capacity, data, ray_runtime, runs, storage, sweeps, tracking, train
from pipeline.checkpointing import POSITION_KEY
from pipeline.config import ExperimentConfig, coerce
from pipeline.errors import ConfigError, PixelRNNError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSummary:
    """What a finished sweep reports back to the CLI."""

    record: sweeps.SweepRecord
    trials: list[tracking.RunSummary]  # the child runs, in start order
    best_trial: str
    best_value: float
    best_experiment: str  # location (local path or URI) of best_experiment.yaml


def get_space(name: str) -> dict[str, Any]:
    """The search space `tune_spaces.SPACES[name]`, its keys checked against the config.

    Raises:
        ConfigError: no such space, or a key or value the experiment config does not accept.
    """
    from tune_spaces import SPACES

    if name not in SPACES:
        raise ConfigError(f"tune.space: unknown space {name!r}; expected one of {sorted(SPACES)}")
    space = SPACES[name]
    for key, value in space.items():
        for example in _examples(value):
            coerce(key, example)
    return space


def _examples(value: Any) -> list[Any]:
    """Values a search primitive can take that are worth type-checking (ends and choices)."""
    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, Float | Integer):
        return [value.lower, value.upper]
    if isinstance(value, Domain):
        return [value.sample()]
    if isinstance(value, dict) and set(value) == {"grid_search"}:  # tune.grid_search(values)
        return list(value["grid_search"])
    return [value]


def describe_space(space: dict[str, Any]) -> dict[str, str]:
    """{key: "choice([...])" / "loguniform(a, b)" / constant} for MLflow and the logs."""
    described = {}
    for key, value in space.items():
        if isinstance(value, Categorical):
            described[key] = f"choice({list(value.categories)})"
        elif isinstance(value, dict) and set(value) == {"grid_search"}:
            described[key] = f"grid_search({list(value['grid_search'])})"
        elif isinstance(value, Float | Integer):
            kind = type(value.get_sampler()).__name__.lower().lstrip("_")
            described[key] = f"{kind}({value.lower}, {value.upper})"
        else:
            described[key] = repr(value)
    return described


def trial_name(trial) -> str:
    """Trials, their folders and their MLflow runs are named by trial id, never by time."""
    return trial.trial_id


def run_trial(params: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial: the sweep's config with `params`, trained by Ray Train as a child MLflow run.

    A trial restarted by `--resume` continues its Train run from the last checkpoint; one whose
    run had already finished only reports its final metrics again.
    """
    record = sweeps.SweepRecord(**sweep)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = sweeps.trial_config(record.trial_config, params, trial_id)
    os.environ["MLFLOW_TRACKING_URI"] = record.tracking_uri  # Tune moved us to another folder
    run_dir = storage.join(runs.storage_location(cfg), trial_id)
    started = storage.is_file(storage.join(run_dir, runs.RECORD_FILE))
    if started and _report_if_finished(runs.RunRecord.load(run_dir)):
        return
    tags = {"mlflow.parentRunId": record.parent_run_id, "pixelrnn.sweep": record.name,
            "pixelrnn.trial_id": trial_id, "pixelrnn.space": record.space}  # fmt: skip
    try:
        train.run_training(cfg, resume=started, callbacks=[MeasuredReportCallback()], tags=tags,
                           stopped_from_outside=_stopped_by_tune)  # fmt: skip
    finally:  # also when the stop's teardown exits this thread
        _keep_stop_verdict(run_dir)


def _stopped_by_tune() -> bool:
    """True once Tune has stopped this trial (ASHA, or the sweep's end).

    Tune's stop shuts the trial's session down and then ends its process, which kills the Train
    run under `run_training`: an error from `trainer.fit` seen with no session (the context then
    has no trial id) is that teardown, not a failure.
    """
    with warnings.catch_warnings():  # Ray warns that there is no session: that is the answer
        warnings.simplefilter("ignore")
        return ray.tune.get_context().get_trial_id() is None


def _keep_stop_verdict(run_dir: str) -> None:
    """A trial the driver stopped keeps its KILLED run (`sweeps.keep_stop_verdict`): a check
    after `run_training`, which leaves a stopped trial's run to the driver."""
    try:
        if storage.is_file(storage.join(run_dir, runs.RECORD_FILE)):
            run = runs.RunRecord.load(run_dir)
            sweeps.keep_stop_verdict(tracking.RunTracker(run.tracking_uri, run.mlflow_run_id))
    except Exception:  # the trial's own outcome (or error) is what Tune should see
        logger.exception("could not check whether trial run %s was stopped", run_dir)


class MeasuredReportCallback(TuneReportCallback):
    """Forwards Train's reports to Tune, except those of mid-epoch checkpoints: they carry no
    `tune.metric` (Tune refuses such results) and nothing for ASHA to judge."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if POSITION_KEY not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _report_if_finished(run: runs.RunRecord) -> bool:
    tracker = tracking.RunTracker(run.tracking_uri, run.mlflow_run_id)
    if tracker.status() != "FINISHED":
        return False
    logger.info("trial %s had already finished; reporting its final metrics", run.name)
    ray.tune.report(tracker.client.get_run(run.mlflow_run_id).data.metrics)
    return True


class EpochASHA(ASHAScheduler):
    """ASHA on epoch rungs that never stops a trial at its last epoch: it is done training and
    ends its own run (best checkpoint, MLflow status) instead of being killed half-way."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("epoch", 0) >= self._max_t:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SweepCallback(ray.tune.Callback):
    """Driver side: one log line per trial event, and the MLflow run of a stopped trial ended.

    A trial ASHA stops has its process ended, and its `run_training` leaves the child run
    RUNNING (`_stopped_by_tune`): this callback tags it and ends it KILLED.
    `sweeps.settle_stopped_trials` checks every stopped trial's run again after the sweep.
    """

    def __init__(self, train_root: str, metric: str):
        self.train_root, self.metric = train_root, metric

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        logger.info("trial %s started: %s", trial.trial_id, _short_params(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "epoch" in result and self.metric in result:  # epoch reports, not interim ones
            logger.info("trial %s epoch %d: %s %.4f", trial.trial_id, result["epoch"],
                        self.metric, result[self.metric])  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        note = f"stopped by ASHA after epoch {epoch}"
        tags = {sweeps.STOPPED_EARLY_TAG: "true", "pixelrnn.stopped_message": note}
        # A trial Tune reports complete did not fail: a FAILED run here is the stop's kill
        # interrupting `run_training` before this callback ran.
        stopped = self._close(trial, "KILLED", note, tags, also_failed=True)
        logger.info("trial %s %s after epoch %d", trial.trial_id,
                    "stopped early by ASHA" if stopped else "finished", epoch)  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        self._close(trial, "FAILED", f"trial failed after epoch {epoch}", {})
        logger.warning("trial %s failed; its error: %s", trial.trial_id, trial.error_file)

    def _close(
        self, trial, status: str, message: str, tags: dict[str, str], also_failed: bool = False
    ) -> bool:
        """End the trial's MLflow run if it is still RUNNING (or FAILED, with `also_failed`);
        True when it was."""
        folder = storage.join(self.train_root, trial.trial_id)
        if not storage.is_file(storage.join(folder, runs.RECORD_FILE)):
            return False
        run = runs.RunRecord.load(folder)
        tracker = tracking.RunTracker(run.tracking_uri, run.mlflow_run_id)
        try:
            if tracker.status() not in (("RUNNING", "FAILED") if also_failed else ("RUNNING",)):
                return False
            tracker.set_tags(tags)
            tracker.finish(status, message)
        except Exception:  # tracking must never stop the sweep
            logger.exception("could not end the MLflow run of trial %s", trial.trial_id)
        return True


def _short_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{key.split('.', 1)[-1]}={value:.3g}" if isinstance(value, float) else
        f"{key.split('.', 1)[-1]}={value}"
        for key, value in params.items()
    )  # fmt: skip


def _trainable(cfg: ExperimentConfig, record: sweeps.SweepRecord):
    fn = ray.tune.with_parameters(run_trial, sweep=dataclasses.asdict(record))
    return ray.tune.with_resources(fn, {"cpu": cfg.tune.trial_driver_cpus})


def _tuner(cfg, record, sizing, space, resume: bool) -> ray.tune.Tuner:
    trainable = _trainable(cfg, record)
    path = record.directory
    if resume and ray.tune.Tuner.can_restore(path):
        logger.info("restoring sweep %s: finished trials are kept, unfinished ones continue", path)
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True)
    if resume:
        logger.warning("sweep %s saved no Tune state yet; starting its trials afresh", path)
    scheduler = EpochASHA(
        time_attr="epoch",  # epoch reports only: interim (every-N-steps) reports lack it
        max_t=cfg.train.epochs,
        grace_period=cfg.tune.grace_period_epochs,
        reduction_factor=cfg.tune.reduction_factor,
        stop_last_trials=False,
    )
    tune_config = ray.tune.TuneConfig(
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        scheduler=scheduler,
        # The generator limits concurrency itself (Tune ignores max_concurrent_trials for it).
        search_alg=BasicVariantGenerator(
            max_concurrent=sizing.max_concurrent, random_state=cfg.tune.seed
        ),
        num_samples=cfg.tune.num_samples,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    train_root = storage.join(record.directory, sweeps.TRAIN_FOLDER)
    run_config = ray.tune.RunConfig(
        name=record.name,
        storage_path=record.storage_path,
        callbacks=[SweepCallback(train_root, cfg.tune.metric)],
        verbose=0,  # SweepCallback logs one line per trial event instead of Tune's tables
    )
    return ray.tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                          run_config=run_config)  # fmt: skip


def _open_sweep(cfg: ExperimentConfig, resume: bool, dataset, space: dict):
    if resume:
        record = sweeps.find_sweep_to_resume(cfg)
        return record, tracking.reopen_run(record.tracking_uri, record.parent_run_id)
    name = sweeps.new_sweep_name(cfg)
    sweeps.check_new_sweep(cfg, name)
    directory = storage.join(runs.storage_location(cfg), name)
    tags = tracking.run_tags(cfg, dataset.manifest, dataset.root)
    tags.update({"pixelrnn.role": "sweep", "pixelrnn.sweep": name,
                 "pixelrnn.space": cfg.tune.space, "pixelrnn.run_dir": directory})  # fmt: skip
    tracker = tracking.start_run(cfg, name, tags, {"space": cfg.tune.space})
    tracker.log_dict(describe_space(space), "sweep/space.json")
    base = sweeps.trial_base(cfg, directory, tracker.tracking_uri)
    record = sweeps.SweepRecord(name, runs.storage_location(cfg), tracker.tracking_uri,
                                tracker.run_id, cfg.tune.space, cfg.to_dict(),
                                base.to_dict())  # fmt: skip
    record.save()
    return record, tracker


def run_sweep(cfg: ExperimentConfig, resume: bool = False) -> SweepSummary:
    """Run (or, with `resume`, continue) a sweep over `tune.space` end to end.

    Raises:
        ConfigError: an unknown space, a config that does not fit the dataset, a sweep that does
            not fit the cluster, or nothing to resume.
        PixelRNNError: no trial reported `tune.metric`.
        KeyboardInterrupt: the sweep was interrupted; `--resume` continues it.
    """
    if not cfg.tune.space:
        raise ConfigError("tune.space: name a search space (--space)")
    sweeps.check_fixed_workers(cfg)
    space = get_space(cfg.tune.space)
    if cfg.tune.grace_period_epochs > cfg.train.epochs:
        raise ConfigError(
            f"tune.grace_period_epochs: {cfg.tune.grace_period_epochs} exceeds train.epochs "
            f"({cfg.train.epochs})"
        )
    dataset = data.open_prepared(storage.normalize(cfg.data.path), verify_checksums=cfg.data.verify)
    runs.make_plan(cfg, dataset)
    ray_runtime.connect(address=cfg.scaling.ray_address or None)
    # Tune's own result files are off (metrics live in MLflow): no warning that they are missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # What the cluster can grow to, so a sweep starts on an autoscaling cluster with no worker
    # node up; its trials then wait for the nodes the autoscaler adds.
    grows = ray_runtime.cluster_capacity(cfg.scaling.autoscaler_config)
    capacity.check_workers_fit(grows, cfg.scaling.worker_resources(), cfg.scaling.num_workers)
    most = grows.most()
    sizing = sweeps.size_trials(cfg, most)
    logger.info("each trial holds %g CPUs and %g %s; %d at a time; the cluster can grow to %s",
                sizing.cpus_per_trial, sizing.gpus_per_trial, cfg.scaling.accelerator_unit(),
                sizing.max_concurrent, capacity.describe(most))  # fmt: skip
    record, tracker = _open_sweep(cfg, resume, dataset, space)
    try:
        _tuner(cfg, record, sizing, space, resume).fit()
        unfinished = _unfinished_trials(record, cfg.tune.num_samples, space)
        if unfinished:
            tracker.finish("KILLED", f"interrupted with {unfinished} trials unfinished")
            logger.warning("sweep interrupted; continue it with --resume --set "
                           "tune.sweep_name=%s", record.name)  # fmt: skip
            raise KeyboardInterrupt
        return _finish(cfg, record, tracker)
    except KeyboardInterrupt:
        if tracker.status() == "RUNNING":
            tracker.finish("KILLED", "interrupted")
        raise
    except Exception as error:
        tracker.finish("FAILED", repr(error))
        raise


def _unfinished_trials(record: sweeps.SweepRecord, num_samples: int, space: dict) -> int:
    """Trials Tune has not ended (an interrupted `fit` returns instead of raising)."""
    expected = num_samples * math.prod(
        len(value["grid_search"]) for value in space.values() if isinstance(value, dict)
    )
    trials = ray.tune.ExperimentAnalysis(record.directory).trials
    return expected - sum(trial.status in ("TERMINATED", "ERROR") for trial in trials)


def _finish(cfg: ExperimentConfig, record: sweeps.SweepRecord, tracker) -> SweepSummary:
    """Pick the best trial from the child runs, write its experiment file, end the parent."""
    trials = sweeps.settle_stopped_trials(record)
    best = sweeps.best_trial(trials, record.tracking_uri, cfg.tune.metric, cfg.tune.mode)
    if best is None:
        failed = sum(run.status == "FAILED" for run in trials)
        raise PixelRNNError(
            f"no trial of sweep {record.name} reported {cfg.tune.metric} ({failed} of "
            f"{len(trials)} trials failed; see their MLflow runs and {record.directory})"
        )
    run, value = best
    params = {key: run.params[key] for key in get_space(record.space)}
    experiment = sweeps.best_experiment(record.config, params)
    location = storage.join(record.directory, sweeps.BEST_FILE)
    text = sweeps.best_experiment_text(
        experiment,
        [f"best trial {run.name} of sweep {record.name} (space {record.space}): "
         f"{cfg.tune.metric} = {value:.4f}", f"MLflow run {run.run_id}",
         f"pixelrnn train --config {location}"],
    )  # fmt: skip
    storage.write_text(location, text)
    with tempfile.TemporaryDirectory() as scratch:  # MLflow logs local files
        copy = Path(scratch) / sweeps.BEST_FILE
        copy.write_text(text)
        tracker.log_artifact(copy, "best")
    tracker.set_tags({"pixelrnn.best_trial": run.name, "pixelrnn.best_run_id": run.run_id})
    tracker.log_metrics({f"best/{cfg.tune.metric.replace('/', '_')}": value}, step=0)
    tracker.finish("FINISHED")
    return SweepSummary(record, trials, run.name, value, location)
