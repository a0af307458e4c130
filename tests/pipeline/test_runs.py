"""Run planning and run folders, without Ray: config vs dataset checks, naming, --resume."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline import runs
from pipeline.config import merge
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class FakeDataset:
    """The attributes `make_plan` reads from a PreparedDataset."""

    root: str = "/data/x"
    height: int = 32
    width: int = 32
    channels: int = 3
    levels: int = 256
    splits: tuple[str, ...] = ("train", "val")
    counts: dict = field(default_factory=lambda: {"train": 100, "val": 10})

    def count(self, split: str) -> int:
        return self.counts[split]


def test_plan_sizes_epochs_and_image_shape():
    cfg = merge([{"train.batch_size": 14, "data.crop_size": 16}])  # 100 // 14: 7 steps
    plan = runs.make_plan(cfg, FakeDataset())
    assert plan == runs.RunPlan(steps_per_epoch=7, channels=3, height=16, width=16, levels=256)
    capped = merge([{"train.max_steps_per_epoch": 2}])
    assert runs.make_plan(capped, FakeDataset()).steps_per_epoch == 2


@pytest.mark.parametrize(
    ("overrides", "dataset", "fragment"),
    [
        ({}, FakeDataset(levels=2, channels=1), "model.channels: 3, but the dataset"),
        ({"preset": "mnist_diagonal_bilstm"}, FakeDataset(), "model.channels: 1, but"),
        ({"data.val_split": "test"}, FakeDataset(), "data.val_split: /data/x has no split"),
        ({"data.crop_size": 64}, FakeDataset(), "data.crop_size: 64 exceeds the 32x32"),
        (
            {"train.batch_size": 128},
            FakeDataset(),
            "train.batch_size: 128 is more than the 100 images of split 'train' in /data/x",
        ),
    ],
)
def test_plan_rejects_configs_that_do_not_fit_the_dataset(overrides, dataset, fragment):
    with pytest.raises(ConfigError, match=fragment):
        runs.make_plan(merge([overrides]), dataset)


def record(tmp_path, name: str, **config) -> runs.RunRecord:
    cfg = merge([{"train.storage_path": str(tmp_path), "tracking.experiment_name": "e", **config}])
    entry = runs.RunRecord(name, str(tmp_path), "sqlite:///x.db", f"id-{name}", cfg.to_dict())
    entry.save()
    return entry


def test_resume_finds_the_latest_run_of_the_experiment(tmp_path):
    older, newer = record(tmp_path, "e-1"), record(tmp_path, "e-2")
    os.utime(Path(older.directory) / runs.RECORD_FILE, (time.time() + 60,) * 2)
    record(tmp_path, "other-1", **{"tracking.experiment_name": "other"})
    cfg = merge([{"train.storage_path": str(tmp_path), "tracking.experiment_name": "e"}])
    assert runs.find_run_to_resume(cfg).mlflow_run_id == "id-e-1"
    named = merge([cfg.to_flat(), {"train.run_name": "e-2"}])
    assert runs.find_run_to_resume(named) == newer


def test_resume_allows_more_epochs_but_not_a_different_experiment(tmp_path):
    record(tmp_path, "e-1")
    base = {"train.storage_path": str(tmp_path), "tracking.experiment_name": "e"}
    longer = merge([base, {"train.epochs": 50, "scaling.num_workers": 4}])
    assert runs.find_run_to_resume(longer).name == "e-1"
    # a longer budget that ends in an anneal (warmup-stable-decay continued)
    annealed = merge([base, {"train.max_minutes": 30.0, "optim.anneal_minutes": 10.0}])
    assert runs.find_run_to_resume(annealed).name == "e-1"
    with pytest.raises(ConfigError, match=r"config differs .* in model\.num_layers, optim\.lr"):
        runs.find_run_to_resume(merge([base, {"optim.lr": 0.1, "model.num_layers": 3}]))
    with pytest.raises(ConfigError, match="--resume: no run of experiment 'nothing'"):
        runs.find_run_to_resume(merge([base, {"tracking.experiment_name": "nothing"}]))


def test_a_new_run_never_reuses_an_existing_folder(tmp_path):
    record(tmp_path, "taken")
    cfg = merge([{"train.storage_path": str(tmp_path), "train.run_name": "taken"}])
    with pytest.raises(ConfigError, match="run 'taken' already exists"):
        runs.check_new_run(cfg, runs.new_run_name(cfg))
    fresh = merge([{"tracking.experiment_name": "demo"}])
    assert runs.new_run_name(fresh).startswith("demo-")
