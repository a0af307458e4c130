"""Distributed training on Ray Train (the only importer of `ray.train`).

`run_training` is the driver: it checks the config against the dataset, opens the MLflow run
and fits a `TorchTrainer` whose workers run `train_loop_per_worker` (DDP over gloo or NCCL).
Resuming a run is fitting it again under the same `RunConfig(name, storage_path)`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, UserCallback
from ray.train import ScalingConfig as RayScalingConfig

from pipeline import data, ray_runtime, runs, sanity, storage, tracking, tracking_models
from pipeline.checkpointing import (
    CHECKPOINT_FILE,
    SAMPLES_FILE,
    SCORE_METRIC,
    Progress,
    restore,
    save_checkpoint,
    unwrap,
)
from pipeline.config import ExperimentConfig
from pipeline.engine import (
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


def _batches(shard, cfg: ExperimentConfig, epoch: int, rank: int, shuffle: bool):
    options = {"batch_size": cfg.train.batch_size_per_worker}
    if shuffle:
        options["local_shuffle_buffer_size"] = data.LOCAL_SHUFFLE_BUFFER
        options["local_shuffle_seed"] = worker_seed(cfg.train.seed, rank, epoch)
    return pixel_batches(shard.iter_torch_batches(**options), cfg.data.crop_size)


def train_loop_per_worker(config: dict) -> dict:
    """One DDP rank: restore, then train / validate / checkpoint / report each epoch."""
    cfg = ExperimentConfig.from_dict(config["experiment"])
    plan = runs.RunPlan(**config["plan"])
    rank = ray.train.get_context().get_world_rank()  # [ray 0] which rank
    _worker_logging(rank)
    torch.manual_seed(worker_seed(cfg.train.seed, rank, epoch=0))
    model = ray.train.torch.prepare_model(PixelRNN(cfg.model))  # [ray 1] device + DDP
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    progress = _restore(ray.train.get_checkpoint(), model, optimizer, rank)  # [ray 2] resume
    train_shard = ray.train.get_dataset_shard("train")  # [ray 3] data
    val_shard = ray.train.get_dataset_shard("val")
    device = ray.train.torch.get_device()
    bf16 = use_bf16(cfg.train.precision, device)
    budget = TimeBudget(cfg.train.max_minutes, progress.seconds, device)
    first_epoch = progress.epoch
    for epoch in range(first_epoch, cfg.train.epochs):
        # Resumed with the budget already spent: nothing to do. (Later epochs only start when
        # it was not spent at the last one's end; one that does starts late takes a step and
        # ends, so the run's last checkpoint always carries the final grid.)
        if epoch == first_epoch and budget.spent():
            break
        batches = _batches(train_shard, cfg, epoch, rank, shuffle=True)
        validate = _validator(cfg, model, val_shard, epoch, rank, bf16)
        try:
            step, train_metrics = _train(
                cfg, plan, model, optimizer, batches, progress, validate, rank, budget, bf16
            )
        except NonFiniteLossError as error:
            return {"status": "non_finite", "message": str(error), "epoch": epoch}
        metrics = {**train_metrics, **validate(), "epoch": epoch + 1, "step": step}
        # Spent mid-epoch, at its end or during its validation: this epoch is the last.
        spent = budget.spent()
        progress = Progress(epoch=epoch + 1, step=step, seconds=budget.seconds(),
                            budget_spent=spent)  # fmt: skip
        metrics["time/train_minutes"] = progress.seconds / 60.0
        _checkpoint_and_report(cfg, plan, model, optimizer, progress, metrics, rank)  # [ray 4, 5]
        if spent:
            logger.info("time budget of %g min spent after step %d", cfg.train.max_minutes, step)
            break
    return {"status": "completed", "epoch": progress.epoch}


def _validator(cfg: ExperimentConfig, model, val_shard, epoch: int, rank: int, bf16: bool):
    """(interim=False) -> {"val/bits_per_dim", "val/nll_nats"} over all ranks' val shards.

    Interim reports (`train.report_every_steps`) score `train.interim_val_batches` batches per
    rank when that is set; epoch ends score `train.max_val_batches` (0: the whole split).
    """

    def validate(interim: bool = False) -> dict[str, float]:
        batches = _batches(val_shard, cfg, epoch, rank, shuffle=False)
        limit = cfg.train.max_val_batches
        if interim and cfg.train.interim_val_batches:
            limit = cfg.train.interim_val_batches
        val = evaluate(unwrap(model), batches, limit, bf16)
        return {f"val/{key}": value for key, value in val.items()}

    return validate


def _train(cfg, plan: runs.RunPlan, model, optimizer, batches, progress, validate, rank, budget,
           bf16: bool):  # fmt: skip
    total_steps = plan.steps_per_epoch * cfg.train.epochs

    def report_interim(step: int, metrics: dict[str, float]) -> None:
        metrics = {**metrics, **validate(interim=True), "step": step,
                   "time/train_minutes": budget.seconds() / 60.0}  # fmt: skip
        ray.train.report(metrics)  # [ray 5] no checkpoint

    return train_epoch(
        model, optimizer, batches, cfg.optim,
        schedule=lambda step: (
            learning_rate(step, cfg.optim, total_steps, plan.steps_per_epoch)
            * budget.anneal_factor(cfg.optim.anneal_minutes, cfg.optim.min_lr_ratio)
        ),
        start_step=progress.step, max_steps=cfg.train.max_steps_per_epoch,
        report_every=cfg.train.report_every_steps, on_report=report_interim,
        bf16=bf16, log_progress=rank == 0, should_stop=budget.spent,
    )  # fmt: skip


def _restore(checkpoint, model, optimizer, rank: int) -> Progress:
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        progress = restore(directory, model, optimizer, restore_rng=rank == 0)
    logger.info("resumed from epoch %d (step %d)", progress.epoch, progress.step)
    return progress


def _checkpoint_and_report(cfg, plan, model, optimizer, progress, metrics, rank) -> None:
    """Rank 0 writes the checkpoint (and maybe a sample grid); every rank reports."""
    logger.info(
        "epoch %d/%d: train %.4f bits/dim, val %.4f bits/dim (%.2f nats/image), %.1f images/s",
        progress.epoch, cfg.train.epochs, metrics["train/bits_per_dim"],
        metrics["val/bits_per_dim"], metrics["val/nll_nats"], metrics["throughput/images_per_s"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # [ray 4] rank 0 writes
            shape = (plan.channels, plan.height, plan.width)
            save_checkpoint(tmp, model, optimizer, progress, cfg, metrics, shape)
            last_epoch = progress.epoch if progress.budget_spent else cfg.train.epochs
            if wants_samples(cfg.tracking, progress.epoch, last_epoch):
                seed = worker_seed(cfg.train.seed, 0, progress.epoch)
                write_samples(unwrap(model), cfg.tracking, plan.height, plan.width, seed,
                              Path(tmp) / SAMPLES_FILE)  # fmt: skip
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        name = f"epoch_{progress.epoch:04d}"
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)  # [ray 5]


class MlflowReportCallback(UserCallback):
    """Runs on the Train controller: logs each report and its sample grid to MLflow."""

    def __init__(self, tracker: tracking.RunTracker):
        self.tracker = tracker

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]  # rank 0's; metrics are already averaged over ranks
        try:
            self.tracker.log_metrics(report, step=int(report["step"]))
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

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        errors = "\n".join(f"rank {rank}: {error!r}" for rank, error in worker_exceptions.items())
        try:
            self.tracker.set_tags({"pixelrnn.last_worker_error": errors[:5000]})
        except Exception:
            logger.exception("MLflow logging failed")


def build_trainer(
    cfg, plan: runs.RunPlan, record: runs.RunRecord, tracker, datasets: dict, callbacks=()
):
    """A `TorchTrainer` for this run: scaling, failures, retention and MLflow from the config.

    `callbacks` are more Train `UserCallback`s (a Tune trial adds `TuneReportCallback`).
    """
    resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}
    run_config = RunConfig(
        name=record.name,
        storage_path=record.storage_path,
        failure_config=FailureConfig(
            max_failures=cfg.scaling.max_failures, controller_failure_limit=2
        ),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.train.keep_best,  # Ray keeps the latest on top of these
            checkpoint_score_attribute=SCORE_METRIC,
            checkpoint_score_order="min",
        ),
        callbacks=[MlflowReportCallback(tracker), *callbacks],
        logging_config=LoggingConfig(log_level="WARNING"),  # our epoch lines are the progress
    )
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict(), "plan": dataclasses.asdict(plan)},
        scaling_config=RayScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=run_config,
        datasets=datasets,
    )


def _open_run(cfg: ExperimentConfig, resume: bool, dataset, plan: runs.RunPlan):
    if not resume:
        return runs.start_new_run(cfg, dataset, plan)
    record, tracker = runs.reopen_run(cfg)
    _log_missed_epoch(record, tracker)
    return record, tracker


def _log_missed_epoch(record: runs.RunRecord, tracker: tracking.RunTracker) -> None:
    """Log the last checkpoint's report if its driver died before MLflow got it.

    Ray registers a checkpoint before the callback logs it; a driver killed in between would
    otherwise leave that epoch out of MLflow, since the resumed run starts after it.
    """
    try:
        previous = ray.train.Result.from_path(str(record.directory))
    except RuntimeError:  # no checkpoint was registered yet
        return
    metrics = previous.metrics or {}
    if "epoch" not in metrics:
        return
    if int(metrics["epoch"]) not in {int(value) for _, value in tracker.metric_history("epoch")}:
        MlflowReportCallback(tracker).after_report(None, [metrics], previous.checkpoint)
        logger.info("logged epoch %d to MLflow from its checkpoint", metrics["epoch"])


def run_training(
    cfg: ExperimentConfig, resume: bool = False, callbacks=(), tags: dict[str, str] | None = None
) -> runs.TrainingSummary:
    """Train (or, with `resume`, continue) a run end to end; the driver side of the job.

    A Tune trial passes `callbacks` for the trainer and `tags` for its MLflow run (sweep ids).

    Raises:
        ConfigError: the config does not fit the dataset, or `--resume` finds nothing to resume.
        NonFiniteLossError: the loss diverged; the last good checkpoint is named.
        PixelRNNError: training failed after `scaling.max_failures` restarts.
    """
    dataset = data.open_prepared(storage.normalize(cfg.data.path), verify_checksums=cfg.data.verify)
    plan = runs.make_plan(cfg, dataset)
    ray_runtime.connect(address=cfg.scaling.ray_address or None)
    record, tracker = _open_run(cfg, resume, dataset, plan)
    if tags:
        tracker.set_tags(tags)
    try:
        _quiet_data_logs()
        train_split, val_split = cfg.data.train_split, cfg.data.val_split
        datasets = {
            "train": data.read_split(dataset, train_split, shuffle=True, seed=cfg.train.seed),
            "val": data.read_split(dataset, val_split),
        }
        with tracking.SystemMetrics(tracker, cfg.tracking.system_metrics, resumed=resume):
            result = build_trainer(cfg, plan, record, tracker, datasets, callbacks).fit()
    except ray.train.TrainingFailedError as error:
        tracker.finish("FAILED", str(error))
        first_line = (str(error).strip() or repr(error)).splitlines()[0]
        raise PixelRNNError(
            f"training failed: {first_line}; continue from the last checkpoint with "
            f"--resume --set train.run_name={record.name}"
        ) from error
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted")
        raise
    except Exception as error:
        tracker.finish("FAILED", repr(error))
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
