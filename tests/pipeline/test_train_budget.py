"""`train.max_minutes`: a wall-clock budget ends a real Ray Train run like a last epoch would.

The run stops mid-schedule once the budget is spent, still validates, checkpoints and draws its
sample grid, records the time it used, and a resume with a larger budget carries on from there
(the time already spent counts against the new budget).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from train_support import prepare_tiny_dataset, tiny_config

from pipeline.checkpointing import load_checkpoint
from pipeline.tracking import RunTracker
from pipeline.train import run_training

pytestmark = pytest.mark.ray
EPOCHS = 1000  # far more than the budget allows


def last_checkpoint(run_dir: Path) -> Path:
    return sorted(run_dir.glob("epoch_*"))[-1]


def test_spent_budget_ends_the_run_and_a_larger_one_resumes_it(ray_cluster, tmp_path):
    dataset_root = prepare_tiny_dataset(tmp_path)
    budget = {"train.run_name": "budget", "train.epochs": EPOCHS, "train.max_val_batches": 1}
    cfg = tiny_config(dataset_root, tmp_path, **budget, **{"train.max_minutes": 0.1})
    summary = run_training(cfg)

    assert 1 <= summary.epochs < EPOCHS
    last = last_checkpoint(tmp_path / "runs" / "budget")
    payload = load_checkpoint(last)
    assert payload["budget_spent"] is True
    assert payload["seconds"] >= 6.0  # 0.1 min
    assert (last / "samples.png").is_file()  # drawn as after a last epoch
    tracker = RunTracker(summary.tracking_uri, summary.mlflow_run_id)
    minutes = [value for _, value in tracker.metric_history("time/train_minutes")]
    assert minutes == sorted(minutes) and minutes[-1] >= 0.1
    assert tracker.status() == "FINISHED"

    more = (payload["seconds"] + 6.0) / 60.0  # 6 s more than the first attempt used
    longer = tiny_config(dataset_root, tmp_path, **budget, **{"train.max_minutes": more})
    resumed = run_training(longer, resume=True)
    assert resumed.mlflow_run_id == summary.mlflow_run_id
    assert summary.epochs < resumed.epochs < EPOCHS
    resumed_payload = load_checkpoint(last_checkpoint(tmp_path / "runs" / "budget"))
    assert resumed_payload["budget_spent"] is True
    assert resumed_payload["seconds"] >= payload["seconds"] + 6.0


def test_anneal_lowers_the_logged_learning_rate_over_the_budgets_last_minutes(
    ray_cluster, tmp_path
):
    # optim.anneal_minutes on a real run: constant schedule, a 9 s budget whose last 6 s anneal
    # the learning rate by wall-clock time, so the per-epoch train/lr falls to ~0 at the end.
    dataset_root = prepare_tiny_dataset(tmp_path)
    overrides = {
        "train.run_name": "anneal", "train.epochs": EPOCHS, "train.max_val_batches": 1,
        "train.max_minutes": 0.15, "optim.anneal_minutes": 0.1, "optim.schedule": "constant",
        "optim.lr": 1e-3, "optim.min_lr_ratio": 0.0,
    }  # fmt: skip
    summary = run_training(tiny_config(dataset_root, tmp_path, **overrides))

    tracker = RunTracker(summary.tracking_uri, summary.mlflow_run_id)
    rates = [value for _, value in tracker.metric_history("train/lr")]
    assert len(rates) >= 2, rates
    assert max(rates) <= 1e-3 * (1 + 1e-6)
    assert all(later <= earlier for earlier, later in pairwise(rates)), rates
    assert rates[-1] < rates[0] and rates[-1] < 0.5e-3, rates
