"""A real 2-worker gloo fit on a local Ray cluster, with one worker SIGKILLed mid-run.

One run is shared by the tests (Ray start-up dominates their cost): it must report val
bits/dim, survive the killed worker from its last checkpoint, leave a complete MLflow run, and
its best checkpoint must reproduce the reported predictions; a resumed run that diverges must
stop without overwriting the last good checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_support import prepare_tiny_dataset, tiny_config

from pipeline import data
from pipeline.checkpointing import CHECKPOINT_FILE, model_from_checkpoint
from pipeline.cli.main import main
from pipeline.engine import NonFiniteLossError, evaluate, pixel_batches
from pipeline.tracking import RunTracker
from pipeline.train import run_training

pytestmark = pytest.mark.ray
RUN = {"train.run_name": "fit", "train.report_every_steps": 3}


def kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int]) -> None:
    """Once Ray has registered the epoch-1 checkpoint, SIGKILL one training worker."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # other Ray clusters may share the machine
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and "epoch_0001" not in _read(snapshot):
        time.sleep(0.1)
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=address, filters=alive)
    if workers:
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def fitted(ray_cluster, tmp_path_factory):
    """One 3-epoch run (max_failures=1) during which a worker is killed in epoch 2."""
    work = tmp_path_factory.mktemp("fit")
    dataset_root = prepare_tiny_dataset(work)
    cfg = tiny_config(dataset_root, work, **RUN)
    killed: list[int] = []
    watcher = threading.Thread(
        target=kill_a_worker_after_first_checkpoint, args=(work / "runs" / "fit", killed)
    )
    watcher.start()
    summary = run_training(cfg)
    watcher.join()
    return cfg, summary, RunTracker(summary.tracking_uri, summary.mlflow_run_id), work, killed


def test_fit_reports_val_bits_per_dim_and_keeps_best_plus_latest(fitted):
    _cfg, summary, _, work, _killed = fitted
    assert summary.epochs == 3
    assert 0 < summary.metrics["val/bits_per_dim"] < 9
    assert math.isclose(
        summary.metrics["val/nll_nats"],
        summary.metrics["val/bits_per_dim"] * 3 * 8 * 8 * math.log(2), rel_tol=1e-6,
    )  # fmt: skip
    kept = sorted(p.name for p in (work / "runs" / "fit").glob("epoch_*"))
    assert "epoch_0003" in kept and len(kept) <= 2  # keep_best=1 plus the latest


def test_killed_worker_is_survived_from_the_last_checkpoint(fitted):
    _cfg, summary, tracker, _, killed = fitted
    assert killed, "no training worker was found to kill"
    assert summary.epochs == 3
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert str(killed[0]) in tags["pixelrnn.last_worker_error"]  # the controller saw it die
    # Restarting from scratch would have trained (and logged) epoch 1 twice.
    assert [value for _, value in tracker.metric_history("epoch")] == [1.0, 2.0, 3.0]


def test_mlflow_run_has_params_metrics_samples_and_checkpoint(fitted):
    cfg, _summary, tracker, _, _killed = fitted
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert set(cfg.to_flat()) <= set(run.data.params)
    assert run.data.params["derived.batch_size_per_worker"] == "4"
    assert {"git.commit", "dataset.manifest_sha256", "model.layer", "version.ray"} <= set(
        run.data.tags
    )
    assert [value for _, value in tracker.metric_history("epoch")] == [1.0, 2.0, 3.0]
    # 8 steps per epoch: interim reports after steps 3 and 6, then the epoch's own report
    epoch_steps = [step for step, _ in tracker.metric_history("epoch")]
    assert epoch_steps == [8, 16, 24]
    val_steps = [step for step, _ in tracker.metric_history("val/bits_per_dim")]
    assert set(val_steps) == {3, 6, 8, 11, 14, 16, 19, 22, 24}
    assert [step for step, _ in tracker.metric_history("train/bits_per_dim")] == val_steps
    for key in ("throughput/images_per_s", "train/lr", "train/grad_norm", "val/nll_nats"):
        assert key in run.data.metrics
    files = {a.path for a in tracker.client.list_artifacts(tracker.run_id, "samples")}
    assert files == {"samples/epoch_0003.png"}
    local = tracker.client.download_artifacts(tracker.run_id, "samples/epoch_0003.png")
    with Image.open(local) as grid:
        assert grid.size == (2 * 9 + 1, 9 + 1)  # two 8x8 samples, 1-pixel borders
    assert {a.path for a in tracker.client.list_artifacts(tracker.run_id, "checkpoint")} == {
        f"checkpoint/{CHECKPOINT_FILE}"
    }


def test_best_checkpoint_restores_the_reported_predictions(fitted):
    cfg, summary, _, _, _killed = fitted
    trained = model_from_checkpoint(summary.best_checkpoint)
    assert trained.config == cfg and trained.image_shape == (3, 8, 8)
    dataset = data.open_prepared(cfg.data.path)
    rows = data.read_split(dataset, "val").iter_torch_batches(batch_size=8)
    metrics = evaluate(trained.model, pixel_batches(rows))
    saved = trained.metrics["val/bits_per_dim"]
    assert metrics["bits_per_dim"] == pytest.approx(saved, rel=1e-5)


def test_sample_and_evaluate_commands_use_the_trained_run(fitted, tmp_path, capsys):
    cfg, summary, tracker, _, _killed = fitted
    grid = tmp_path / "grid.png"
    source = ["--run-id", tracker.run_id, "--tracking-uri", summary.tracking_uri]
    assert main(["sample", *source, "--n", "4", "--out", str(grid)]) == 0
    with Image.open(grid) as image:
        assert image.size == (2 * 9 + 1, 2 * 9 + 1)  # 2x2 grid of 8x8 training-size samples
    assert main(["evaluate", *source, "--data", cfg.data.path, "--split", "val"]) == 0
    printed = capsys.readouterr().out
    best = tracker.client.get_run(tracker.run_id).data.metrics["best/val_bits_per_dim"]
    assert f"val: {best:.4f} bits/dim over 16 images" in printed
    assert tracker.client.get_run(tracker.run_id).data.metrics["val/bits_per_dim"] > 0


def test_divergence_stops_without_touching_the_last_good_checkpoint(fitted):
    cfg, _summary, tracker, work, _killed = fitted
    latest = work / "runs" / "fit" / "epoch_0003" / CHECKPOINT_FILE
    payload = torch.load(latest, weights_only=True)
    payload["model"]["head_output.bias"].fill_(float("nan"))  # stands in for a blown-up step
    torch.save(payload, latest)
    poisoned = latest.read_bytes()
    longer = tiny_config(Path(cfg.data.path), work, **RUN, **{"train.epochs": 4})
    with pytest.raises(NonFiniteLossError) as info:
        run_training(longer, resume=True)
    message = str(info.value)
    assert "non-finite training loss" in message and "in epoch 4" in message
    assert f"last good checkpoint: {Path(latest).parent}" in message
    assert not (work / "runs" / "fit" / "epoch_0004").exists()
    assert latest.read_bytes() == poisoned
    assert tracker.status() == "FAILED"
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert tags["pixelrnn.failure"] == message
    assert tags["pixelrnn.resume_changes"] == "train.epochs=4"
