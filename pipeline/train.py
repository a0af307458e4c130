"""Distributed training on Ray Train (the only importer of `ray.train`).

`run_training` is the driver: it checks the config against the dataset, opens the MLflow run
and fits a `TorchTrainer` whose workers run `train_loop_per_worker` (DDP over gloo or NCCL).
Resuming a run is fitting it again under the same `RunConfig(name, storage_path)`; a worker
group restarted after a lost node, or a resumed run, continues from the latest checkpoint, which
may lie inside an epoch (`train.checkpoint_every_minutes`). Over 400 lines because, as the only
importer of `ray.train`, it holds every Train touchpoint: worker loop, checkpoint reports, the
MLflow callback, the trainer and the driver.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, UserCallback
from ray.train import ScalingConfig as RayScalingConfig

from pipeline import (
    capacity,
    data,
    elastic,
    ray_runtime,
    runs,
    sanity,
    storage,
    tracking,
    tracking_models,
)
from pipeline.checkpointing import (
    CHECKPOINT_FILE,
    CHECKPOINT_SCORE,
    MID_EPOCH_SCORE,
    POSITION_KEY,
    SAMPLES_FILE,
    SCORE_METRIC,
    Progress,
    restore,
    save_checkpoint,
    unwrap,
)
from pipeline.config import ExperimentConfig
from pipeline.engine import (
    EPOCH_IMAGES,
    CheckpointTimer,
    NonFiniteLossError,
    TimeBudget,
    evaluate,
    learning_rate,
    make_optimizer,
    pixel_batches,
    train_epoch,
    use_bf16,
    worker_seed,
)
from pipeline.errors import PixelRNNError
from pipeline.images import wants_samples, write_samples
from pixelrnn_model import PixelRNN

logger = logging.getLogger(__name__)


def _worker_logging(rank: int) -> None:
    """Rank 0 logs progress through the console handler Ray Train gives the root logger."""
    logging.getLogger("pipeline").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # Ray 2.60 names this logger by file path, so LoggingConfig misses its per-report INFO line.
    context_module = Path(ray.train.__file__).parent / "v2/_internal/execution/context.py"
    logging.getLogger(str(context_module)).setLevel(logging.WARNING)
    # Ray Data hands Arrow-backed read-only arrays to torch; batches are never written to.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _quiet_data_logs() -> None:
    """No per-epoch execution plans from Ray Data (datasets copy this context when created)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _epoch_batches(dataset, cfg: ExperimentConfig, epoch: int, skip: int):
    """This rank's part of the global batches of `epoch` after the first `skip` of them (see
    `pipeline.data_order`)."""
    context = ray.train.get_context()
    order = dataset.rank_order(cfg.data.train_split, context.get_world_rank(),
                               context.get_world_size(), cfg.train.batch_size, cfg.train.seed,
                               epoch, shuffle=True)  # fmt: skip
    return pixel_batches(data.read_in_order(dataset, order.after(skip)), cfg.data.crop_size)


def train_loop_per_worker(config: dict) -> dict:
    """One DDP rank: restore, then train / validate / checkpoint / report each epoch.

    Data: every rank reads its part of the epoch's global batches (`pipeline.data_order`)
    itself, not through `get_dataset_shard`'s streaming split: the rows of each optimizer step
    depend on (seed, epoch) only, never on the worker count, and a run resumed mid-epoch, on
    any number of workers, continues at the first global sample it had not trained on.
    """
    cfg = ExperimentConfig.from_dict(config["experiment"])
    plan = runs.RunPlan(**config["plan"])
    dataset = data.PreparedDataset.from_manifest(**config["dataset"])
    context = ray.train.get_context()  # [ray 0] which rank, of how many
    rank, world = context.get_world_rank(), context.get_world_size()
    _worker_logging(rank)
    _quiet_data_logs()
    torch.manual_seed(worker_seed(cfg.train.seed, rank, epoch=0))
    model = ray.train.torch.prepare_model(PixelRNN(cfg.model))  # [ray 1] device + DDP
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    progress = _restore(ray.train.get_checkpoint(), model, optimizer, rank, cfg)  # [ray 2]
    device = ray.train.torch.get_device()
    bf16 = use_bf16(cfg.train.precision, device)
    budget = TimeBudget(cfg.train.max_minutes, progress.seconds, device)
    timer = CheckpointTimer(cfg.train.checkpoint_every_minutes, device)
    val_order = dataset.rank_order(cfg.data.val_split, rank, world, cfg.train.batch_size, 0, 0,
                                   shuffle=False)  # fmt: skip
    if cfg.scaling.elastic:  # [ray 5] this group's size, for the record of resizes
        ray.train.report({elastic.GROUP_KEY: world, "step": progress.step})
    first_epoch = progress.epoch
    for epoch in range(first_epoch, cfg.train.epochs):
        # Resumed with the budget already spent: nothing to do. (Later epochs only start when
        # it was not spent at the last one's end; one that does starts late takes a step and
        # ends, so the run's last checkpoint always carries the final grid.)
        if epoch == first_epoch and budget.spent():
            break
        skip = progress.samples_in_epoch // cfg.train.batch_size if epoch == first_epoch else 0
        batches = _epoch_batches(dataset, cfg, epoch, skip)  # [ray 3] data
        validate = _validator(cfg, model, dataset, val_order, bf16)
        worker = _Worker(cfg, plan, model, optimizer, rank, budget, timer)
        try:
            step, train_metrics = worker.train(batches, epoch, progress, skip, validate, bf16)
        except NonFiniteLossError as error:
            return {"status": "non_finite", "message": str(error), "epoch": epoch}
        metrics = {**_counted(train_metrics, epoch, cfg, plan), **validate(),
                   "epoch": epoch + 1, "step": step}  # fmt: skip
        # Spent mid-epoch, at its end or during its validation: this epoch is the last.
        spent = budget.spent()
        progress = Progress(epoch=epoch + 1, step=step, seconds=budget.seconds(),
                            budget_spent=spent)  # fmt: skip
        metrics["time/train_minutes"] = progress.seconds / 60.0
        metrics[CHECKPOINT_SCORE] = metrics[SCORE_METRIC]
        _log_epoch(cfg, progress, metrics)
        worker.checkpoint(progress, metrics, samples=True)  # [ray 4, 5]
        timer.restart()
        if spent:
            logger.info("time budget of %g min spent after step %d", cfg.train.max_minutes, step)
            break
    return {"status": "completed", "epoch": progress.epoch}


def _counted(metrics: dict, epoch: int, cfg: ExperimentConfig, plan: runs.RunPlan) -> dict:
    """A report's metrics with the worker count and the images trained on since the run began
    (the whole epochs before this one, and this one's counted images) in place of the epoch's."""
    metrics = dict(metrics)
    images = epoch * plan.steps_per_epoch * cfg.train.batch_size + metrics.pop(EPOCH_IMAGES)
    world = ray.train.get_context().get_world_size()
    return {**metrics, elastic.IMAGES_METRIC: images, elastic.WORKERS_METRIC: world}


def _validator(cfg: ExperimentConfig, model, dataset, order, bf16: bool):
    """(interim=False) -> {"val/bits_per_dim", "val/nll_nats"} over all ranks' val rows.

    Interim reports (`train.report_every_steps`) score `train.interim_val_batches` global
    batches when that is set; epoch ends score `train.max_val_batches` (0: the whole split).
    """

    def validate(interim: bool = False) -> dict[str, float]:
        rows = data.read_in_order(dataset, order)
        limit = cfg.train.max_val_batches
        if interim and cfg.train.interim_val_batches:
            limit = cfg.train.interim_val_batches
        val = evaluate(unwrap(model), pixel_batches(rows, cfg.data.crop_size), limit, bf16)
        return {f"val/{key}": value for key, value in val.items()}

    return validate


@dataclasses.dataclass
class _Worker:
    """One rank's training state for an epoch: trains it, writes and reports checkpoints."""

    cfg: ExperimentConfig
    plan: runs.RunPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rank: int
    budget: TimeBudget
    timer: CheckpointTimer

    def train(self, batches, epoch: int, progress: Progress, skip: int, validate, bf16: bool):
        """Train `epoch` from `progress` on; (steps in total, the epoch's metrics).

        `skip`: the global batches of this epoch a mid-epoch `progress` had done (0: the
        epoch's start); training starts after them, with that progress's metric sums (on rank 0
        only: they are over all ranks already).
        """
        meters = progress.meters if skip and self.rank == 0 else ()
        cfg, budget = self.cfg, self.budget
        total_steps = self.plan.steps_per_epoch * cfg.train.epochs

        def report_interim(step: int, metrics: dict[str, float]) -> None:
            metrics = {**_counted(metrics, epoch, cfg, self.plan), **validate(interim=True),
                       "step": step,
                       "time/train_minutes": budget.seconds() / 60.0}  # fmt: skip
            ray.train.report(metrics)  # [ray 5] no checkpoint

        def checkpoint_mid_epoch(step: int, batches_done: int, meters: tuple) -> None:
            samples = batches_done * cfg.train.batch_size  # global samples, for any worker count
            progress = Progress(epoch=epoch, step=step, seconds=budget.seconds(),
                                samples_in_epoch=samples, meters=meters)  # fmt: skip
            metrics = {"step": step, POSITION_KEY: samples, CHECKPOINT_SCORE: MID_EPOCH_SCORE,
                       "time/train_minutes": progress.seconds / 60.0}  # fmt: skip
            self.checkpoint(progress, metrics, samples=False)  # [ray 4, 5]

        return train_epoch(
            self.model, self.optimizer, batches, cfg.optim,
            schedule=lambda step: (
                learning_rate(step, cfg.optim, total_steps, self.plan.steps_per_epoch)
                * budget.anneal_factor(cfg.optim.anneal_minutes, cfg.optim.min_lr_ratio)
            ),
            start_step=progress.step, max_steps=self.plan.steps_per_epoch,
            report_every=cfg.train.report_every_steps, on_report=report_interim,
            bf16=bf16, log_progress=self.rank == 0, should_stop=budget.spent,
            start_batch=skip, meters=meters, on_checkpoint=checkpoint_mid_epoch,
            checkpoint_due=self.timer.due, global_batch=cfg.train.batch_size,
        )  # fmt: skip

    def checkpoint(self, progress: Progress, metrics: dict, samples: bool) -> None:
        """Rank 0 writes the checkpoint (and maybe a sample grid); every rank reports."""
        cfg, plan = self.cfg, self.plan
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:  # [ray 4] rank 0 writes
                shape = (plan.channels, plan.height, plan.width)
                save_checkpoint(tmp, self.model, self.optimizer, progress, cfg, metrics, shape)
                last_epoch = progress.epoch if progress.budget_spent else cfg.train.epochs
                if samples and wants_samples(cfg.tracking, progress.epoch, last_epoch):
                    seed = worker_seed(cfg.train.seed, 0, progress.epoch)
                    write_samples(unwrap(self.model), cfg.tracking, plan.height, plan.width, seed,
                                  Path(tmp) / SAMPLES_FILE)  # fmt: skip
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            name = f"epoch_{progress.epoch:04d}"
            if progress.samples_in_epoch:  # inside epoch progress.epoch + 1
                name = f"epoch_{progress.epoch + 1:04d}_sample_{progress.samples_in_epoch:08d}"
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)  # [ray 5]


def _restore(checkpoint, model, optimizer, rank: int, cfg: ExperimentConfig) -> Progress:
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        progress = restore(directory, model, optimizer, restore_rng=rank == 0)
    where = f"epoch {progress.epoch} (step {progress.step})"
    if progress.samples_in_epoch % cfg.train.batch_size:
        raise PixelRNNError(f"the checkpoint's position, {progress.samples_in_epoch} samples into "
                            f"epoch {progress.epoch + 1}, is not a whole number of global batches "
                            f"of train.batch_size={cfg.train.batch_size}")  # fmt: skip
    if progress.samples_in_epoch:
        where += f", {progress.samples_in_epoch} samples into epoch {progress.epoch + 1}"
    logger.info("resumed from %s on %d workers", where, ray.train.get_context().get_world_size())
    return progress


def _log_epoch(cfg: ExperimentConfig, progress: Progress, metrics: dict) -> None:
    logger.info(
        "epoch %d/%d: train %.4f bits/dim, val %.4f bits/dim (%.2f nats/image), %.1f images/s",
        progress.epoch, cfg.train.epochs, metrics["train/bits_per_dim"],
        metrics["val/bits_per_dim"], metrics["val/nll_nats"], metrics["throughput/images_per_s"],
    )  # fmt: skip


class MlflowReportCallback(UserCallback):
    """Runs on the Train controller: logs each report and its sample grid to MLflow, once.

    A worker group restarted from a checkpoint (or a run continued with `--resume`) repeats the
    reports made after that checkpoint, with the same values (data order, RNG and schedule are
    restored). Reports are ordered by (step, epoch end after interim report at the same step);
    one at or before the last report logged, here or by an earlier driver, is such a repeat and
    is skipped, so the metric history has each point once. The reports of mid-epoch checkpoints
    carry no measurements and are not logged.
    """

    def __init__(self, tracker: tracking.RunTracker, groups: elastic.WorkerGroups | None = None):
        self.tracker = tracker
        self.last_logged = _last_logged_report(tracker)
        self.groups = groups

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]  # rank 0's; metrics are already averaged over ranks
        if elastic.GROUP_KEY in report:
            self._group_started(int(report[elastic.GROUP_KEY]), int(report["step"]))
            return
        position = (int(report["step"]), "epoch" in report)
        if POSITION_KEY in report or position <= self.last_logged:
            return
        try:
            logged = {k: v for k, v in report.items() if not k.startswith("checkpoint/")}
            self.tracker.log_metrics(logged, step=position[0])
            self.last_logged = position
            if checkpoint is not None:
                with checkpoint.as_directory() as directory:
                    png = Path(directory) / SAMPLES_FILE
                    self._log_samples(png, int(report["epoch"]), int(report["step"]))
        except Exception:  # tracking must never stop training
            logger.exception("MLflow logging failed; training continues")

    def _log_samples(self, png: Path, epoch: int, step: int) -> None:
        """The grid as an MLflow image at this step (a panel with a step slider) and as
        `samples/epoch_NNNN.png`."""
        if png.is_file():
            self.tracker.log_image(png, key="samples", step=step)
            with tempfile.TemporaryDirectory() as tmp:
                named = Path(tmp) / f"epoch_{epoch:04d}.png"
                named.write_bytes(png.read_bytes())
                self.tracker.log_artifact(named, "samples")

    def _group_started(self, workers: int, step: int) -> None:
        """An elastic run's new worker group: `train/workers` at its first step, and the tag."""
        if self.groups is None:
            return
        text = self.groups.started(workers, step)
        logger.info("training on %d workers from step %d", workers, step)
        try:
            self.tracker.log_metrics({elastic.WORKERS_METRIC: workers}, step=step)
            self.tracker.set_tags({elastic.GROUPS_TAG: text})
        except Exception:  # tracking must never stop training
            logger.exception("MLflow logging failed; training continues")

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        errors = "\n".join(f"rank {rank}: {error!r}" for rank, error in worker_exceptions.items())
        if self.groups is not None:
            self.groups.worker_lost(errors)
        try:
            self.tracker.set_tags({"pixelrnn.last_worker_error": errors[:5000]})
        except Exception:
            logger.exception("MLflow logging failed")


def _last_logged_report(tracker: tracking.RunTracker) -> tuple[int, bool]:
    """(step, is an epoch end) of the last report in the MLflow run; (-1, False) if none.

    Every interim and epoch-end report has `train/bits_per_dim`; only epoch ends have `epoch`.
    """
    steps = [step for step, _ in tracker.metric_history("train/bits_per_dim")]
    if not steps:
        return (-1, False)
    epoch_steps = {step for step, _ in tracker.metric_history("epoch")}
    return (max(steps), max(steps) in epoch_steps)


def build_trainer(
    cfg, plan: runs.RunPlan, record: runs.RunRecord, tracker, dataset, callbacks=()
):  # fmt: skip
    """A `TorchTrainer` for this run: scaling, failures, retention and MLflow from the config.

    `dataset` is the `PreparedDataset` the workers read; `callbacks` are more Train
    `UserCallback`s (a Tune trial adds its report callback).

    An elastic run (`scaling.num_workers` a range) gets Ray's `(min, max)` workers. A worker
    group that cannot start in `scaling.elastic_start_timeout_s` (Ray sized it by a stale view of
    the cluster) is a controller failure, retried with what fits then: those are not limited. A
    fixed run fails after 2 of them. A lost worker counts against `scaling.max_failures` either
    way (a preemption Ray is told of ahead counts against its own, unlimited, budget); growing
    is never a failure.
    """
    scaling = cfg.scaling
    groups = None
    if scaling.elastic:
        groups = elastic.WorkerGroups(text=tracker.tag(elastic.GROUPS_TAG))
    run_config = RunConfig(
        name=record.name,
        storage_path=record.storage_path,
        failure_config=FailureConfig(
            max_failures=scaling.max_failures,
            controller_failure_limit=-1 if scaling.elastic else 2,
        ),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.train.keep_best,  # Ray keeps the latest on top of these
            checkpoint_score_attribute=CHECKPOINT_SCORE,
            checkpoint_score_order="min",
        ),
        callbacks=[MlflowReportCallback(tracker, groups), *callbacks],
        logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines are the progress
    )
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict(), "plan": dataclasses.asdict(plan),
                           "dataset": {"root": dataset.root, "manifest": dataset.manifest}},
        scaling_config=_ray_scaling(scaling),
        run_config=run_config,
    )  # fmt: skip


def _ray_scaling(scaling) -> RayScalingConfig:
    """Ray's ScalingConfig: a fixed count, or `(min, max)` and the resize check interval."""
    if not scaling.elastic:
        return RayScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                resources_per_worker=scaling.worker_resources())  # fmt: skip
    return RayScalingConfig(
        num_workers=(scaling.min_workers, scaling.max_workers), use_gpu=scaling.use_gpu,
        resources_per_worker=scaling.worker_resources(),
        elastic_resize_monitor_interval_s=scaling.elastic_resize_monitor_interval_s,
    )  # fmt: skip


def _open_run(cfg: ExperimentConfig, resume: bool, dataset, plan: runs.RunPlan):
    if not resume:
        return runs.start_new_run(cfg, dataset, plan)
    record, tracker = runs.reopen_run(cfg)
    _log_missed_epoch(record, tracker)
    return record, tracker


def _log_missed_epoch(record: runs.RunRecord, tracker: tracking.RunTracker) -> None:
    """Log the reports of the run's checkpoints that its driver died before MLflow got.

    Ray registers a checkpoint before the callback logs it; a driver killed in between would
    otherwise leave that epoch out of MLflow, since the resumed run starts after it. Reports
    already logged are skipped by the callback.
    """
    try:
        previous = ray.train.Result.from_path(str(record.directory))
    except RuntimeError:  # no checkpoint was registered yet
        return
    callback = MlflowReportCallback(tracker)
    reports = sorted(
        previous.best_checkpoints, key=lambda kept: (kept[1]["step"], "epoch" in kept[1])
    )
    for checkpoint, metrics in reports:
        before = callback.last_logged
        callback.after_report(None, [metrics], checkpoint)
        if callback.last_logged != before:
            logger.info("logged epoch %d to MLflow from its checkpoint", metrics["epoch"])


def run_training(
    cfg: ExperimentConfig,
    resume: bool = False,
    callbacks=(),
    tags: dict[str, str] | None = None,
    stopped_from_outside: Callable[[], bool] = lambda: False,
) -> runs.TrainingSummary:
    """Train (or, with `resume`, continue) a run end to end; the driver side of the job.

    A Tune trial passes `callbacks` for the trainer, `tags` for its MLflow run (sweep ids) and
    `stopped_from_outside`: true once Tune has stopped the trial, whose teardown then kills the
    trainer (an error here). Such an error does not end the run FAILED: the sweep driver, which
    stopped the trial, ends it.

    Raises:
        ConfigError: the config does not fit the dataset, its workers do not fit the cluster
            however far it grows, or `--resume` finds nothing to resume.
        NonFiniteLossError: the loss diverged; the last good checkpoint is named.
        PixelRNNError: training failed after `scaling.max_failures` restarts.
        KeyboardInterrupt: Ctrl-C; the run ends KILLED and `--resume` continues it.
    """
    dataset = data.open_prepared(storage.normalize(cfg.data.path), verify_checksums=cfg.data.verify)
    data.warn_if_unshuffled(dataset)
    plan = runs.make_plan(cfg, dataset)
    ray_runtime.connect(address=cfg.scaling.ray_address or None)
    per_worker = cfg.scaling.worker_resources()
    grows = ray_runtime.cluster_capacity(cfg.scaling.autoscaler_config)
    capacity.check_workers_fit(grows, per_worker, cfg.scaling.num_workers)  # before any output
    if cfg.scaling.elastic:
        logger.info("elastic run: %s, starting with as many as fit", cfg.scaling.describe_workers())
    record, tracker = _open_run(cfg, resume, dataset, plan)
    if tags:
        tracker.set_tags(tags)
    try:
        trainer = build_trainer(cfg, plan, record, tracker, dataset, callbacks)
        with (
            tracking.SystemMetrics(tracker, cfg.tracking.system_metrics, resumed=resume),
            ray_runtime.WaitForNodesLog(per_worker, cfg.scaling.num_workers, grows),
            ray_runtime.worker_group_start_timeout(
                cfg.scaling.elastic_start_timeout_s if cfg.scaling.elastic else None
            ),
        ):
            result = trainer.fit()
    except Exception as error:
        if stopped_from_outside():  # the sweep driver ends this run
            raise
        if not isinstance(error, ray.train.TrainingFailedError):
            tracker.finish("FAILED", repr(error))
            raise
        tracker.finish("FAILED", str(error))
        first_line = (str(error).strip() or repr(error)).splitlines()[0]
        raise PixelRNNError(
            f"training failed: {first_line}; continue from the last checkpoint with "
            f"--resume --set train.run_name={record.name}"
        ) from error
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C: Ray's handler (main thread only) aborts the controller, then calls sys.exit.
        if stopped_from_outside():
            raise
        tracker.finish("KILLED", "interrupted")
        if isinstance(stop, SystemExit):
            raise KeyboardInterrupt from stop  # the command line says "interrupted", exits 130
        raise
    return _finish(cfg, result, record, tracker, dataset.manifest)


def _finish(
    cfg: ExperimentConfig, result, record: runs.RunRecord, tracker, manifest: dict
) -> runs.TrainingSummary:
    outcome = result.return_value or {}
    where = record.storage_path  # Ray reports paths inside its filesystem: make them locations
    last_good = (storage.location_of(where, result.checkpoint.path) if result.checkpoint
                 else "none (no epoch completed)")  # fmt: skip
    if outcome.get("status") == "non_finite":
        message = (f"{outcome['message']} in epoch {outcome['epoch'] + 1}; "
                   f"last good checkpoint: {last_good}")  # fmt: skip
        tracker.finish("FAILED", message)
        raise NonFiniteLossError(message)
    best = result.get_best_checkpoint(SCORE_METRIC, "min")
    metrics = dict(result.metrics or {})
    with best.as_directory() as directory:
        tracker.log_artifact(Path(directory) / CHECKPOINT_FILE, "checkpoint")
        model_uri = _log_model(cfg, tracker, Path(directory) / CHECKPOINT_FILE, metrics, manifest)
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    tracker.log_metrics({"best/val_bits_per_dim": best_metrics[SCORE_METRIC]}, int(metrics["step"]))
    best_location = storage.location_of(where, best.path)
    tracker.set_tags({"pixelrnn.best_checkpoint": best_location})
    val = {key.removeprefix("val/"): value for key, value in metrics.items()
           if key.startswith("val/")}  # fmt: skip
    warning = sanity.leak_warning(sanity.dataset_name(manifest), val) or ""
    if warning:
        logger.warning(warning)
        tracker.set_tags({"pixelrnn.sanity": warning})
    tracker.finish("FINISHED")
    return runs.TrainingSummary(record.name, record.directory, tracker.tracking_uri,
                                tracker.run_id, int(metrics["epoch"]), metrics,
                                best_location, warning, model_uri)  # fmt: skip


def _log_model(cfg: ExperimentConfig, tracker, checkpoint: Path, metrics: dict, manifest: dict
               ) -> str:  # fmt: skip
    """Log the best checkpoint as the run's MLflow model; its URI ("" if that failed: the
    checkpoint artifact is there, and a finished training run is not failed for it)."""
    try:
        logged = tracking_models.log_model(tracker.tracking_uri, tracker.run_id, checkpoint,
                                           tracking.manifest_sha256(manifest),
                                           cfg.tracking.registered_model_name,
                                           int(metrics.get("step", 0)))  # fmt: skip
    except Exception as error:
        logger.exception("logging the MLflow model failed")
        tracker.set_tags({"pixelrnn.model_error": repr(error)[:5000]})
        return ""
    return logged.registered or logged.model_uri
