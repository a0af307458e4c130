"""A real sweep on the local Ray cluster: 3 trials of a grid, two stopped by ASHA, as MLflow runs.

The grid makes ASHA's decisions deterministic: every trial starts from the same seed, and a
learning rate of 1e-7 leaves a model at its initial bits/dim, so at the epoch-1 rung both such
trials are behind the first (3e-3), whatever noise its training has. The third trial runs after
the second was stopped, which shows that a stopped trial's Train workers gave their CPUs back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune
from ray.exceptions import ActorDiedError
from train_support import prepare_tiny_dataset, tiny_config

import tune_spaces
from pipeline import train
from pipeline.cli.main import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.runs import RunRecord
from pipeline.sweeps import STOPPED_EARLY_TAG
from pipeline.tune import run_sweep

pytestmark = pytest.mark.ray
GRID = {"model.layer": "row_lstm", "optim.schedule": "constant",
        "optim.lr": tune.grid_search([3e-3, 1e-7, 1e-7])}  # fmt: skip
SWEEP = {"scaling.num_workers": 1, "train.epochs": 3, "train.max_steps_per_epoch": 8,
         "train.max_val_batches": 2, "tracking.num_samples": 0, "tune.space": "test_grid",
         "tune.num_samples": 1, "tune.sweep_name": "grid"}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    cfg = tiny_config(prepare_tiny_dataset(work), work, **SWEEP)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tune_spaces.SPACES, "test_grid", GRID)
        summary = run_sweep(cfg)
    return cfg, summary, MlflowClient(summary.record.tracking_uri), work


def test_trials_are_child_runs_named_by_trial_id_with_val_bits_per_dim(sweep):
    _cfg, summary, client, _work = sweep
    record = summary.record
    parent = client.get_run(record.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "grid"
    assert parent.data.tags["pixelrnn.role"] == "sweep"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{record.parent_run_id}'"
    )
    assert len(children) == 3
    for child in children:
        tags = child.data.tags
        assert child.info.run_name == tags["pixelrnn.trial_id"]
        assert tags["pixelrnn.sweep"] == "grid" and tags["pixelrnn.space"] == "test_grid"
        assert "val/bits_per_dim" in child.data.metrics
        assert child.data.params["scaling.num_workers"] == "1"  # the same params as a plain run
        assert any((Path(record.directory) / "train" / child.info.run_name).glob("epoch_*"))


def test_asha_stops_the_trials_that_learn_nothing_and_the_next_trial_still_runs(sweep):
    _cfg, summary, client, _work = sweep
    first, *stopped = (client.get_run(trial.run_id) for trial in summary.trials)
    assert [run.data.params["optim.lr"] for run in (first, *stopped)] == ["0.003", "1e-07", "1e-07"]
    assert first.info.status == "FINISHED" and first.data.metrics["epoch"] == 3.0
    assert STOPPED_EARLY_TAG not in first.data.tags
    assert "checkpoint/checkpoint.pt" in {
        a.path for a in client.list_artifacts(first.info.run_id, "checkpoint")
    }
    for run in stopped:  # the second trial's workers were gone before the third one started
        assert run.info.status == "KILLED" and run.data.tags[STOPPED_EARLY_TAG] == "true"
        assert run.data.tags["pixelrnn.failure"] == "stopped by ASHA after epoch 1"
        assert 1 <= run.data.metrics["epoch"] < 3  # workers may run a little ahead of the stop


def test_best_trial_config_is_a_ready_to_run_experiment_logged_to_the_parent(sweep):
    cfg, summary, client, _work = sweep
    histories = {
        trial.name: [m.value for m in client.get_metric_history(trial.run_id, "val/bits_per_dim")]
        for trial in summary.trials
    }
    assert summary.best_trial == min(histories, key=lambda name: min(histories[name]))
    assert summary.best_value == min(histories[summary.best_trial])
    best = next(trial for trial in summary.trials if trial.name == summary.best_trial)
    rebuilt = load_config(summary.best_experiment)  # deltas only, loadable as it is
    assert rebuilt.optim.lr == float(best.params["optim.lr"])
    assert rebuilt.optim.schedule == "constant"
    assert (rebuilt.model, rebuilt.data, rebuilt.scaling) == (cfg.model, cfg.data, cfg.scaling)
    assert rebuilt.train == cfg.train  # its own storage and name, not the trial's
    parent = summary.record.parent_run_id
    logged = {a.path for a in client.list_artifacts(parent, "best")}
    assert logged == {"best/best_experiment.yaml"}
    assert client.get_run(parent).data.tags["pixelrnn.best_trial"] == summary.best_trial


def test_compare_lists_every_trial_with_its_metrics(sweep, tmp_path, capsys):
    _cfg, summary, client, _work = sweep
    record = summary.record
    png = tmp_path / "curves.png"
    argv = ["compare", "--tracking-uri", record.tracking_uri, "--parent", record.parent_run_id,
            "--out", str(png)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for trial in summary.trials:
        assert trial.name in printed
    assert printed.count("stopped (ASHA)") == 2 and printed.count("finished") == 1
    assert summary.best_trial in printed.splitlines()[2]  # best first
    assert f"{summary.best_value:.4f}" in printed.splitlines()[2]
    assert png.stat().st_size > 10_000
    assert {a.path for a in client.list_artifacts(record.parent_run_id, "compare")} == {
        "compare/curves.png"
    }


def test_a_sweep_that_cannot_fit_the_cluster_fails_before_starting(sweep):
    cfg, _summary, _client, work = sweep
    too_big = tiny_config(Path(cfg.data.path), work, **{**SWEEP, "scaling.num_workers": 3,
                          "train.batch_size": 12, "tune.space": "row_lstm",
                          "tune.sweep_name": "too-big"})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        run_sweep(too_big)
    message = str(info.value)
    assert "one trial needs 5 CPUs" in message and "the Ray cluster has 4" in message
    assert not (work / "runs" / "too-big").exists()


@pytest.mark.parametrize("stopped", [True, False], ids=["stopped-by-tune", "failed-itself"])
def test_a_trainer_killed_by_the_trials_stop_leaves_the_run_to_the_driver(
    sweep, tmp_path, monkeypatch, stopped
):
    # A stopped trial's process ends under `run_training`, whose trainer then raises the
    # ActorDiedError traced in real sweeps. With Tune's session gone (`stopped_from_outside`) the
    # run is left RUNNING for the driver, which ends it KILLED; an error of its own ends it FAILED.
    cfg = sweep[0]
    dying = tiny_config(Path(cfg.data.path), tmp_path, **{**SWEEP, "train.run_name": "dying"})

    class DyingTrainer:
        def fit(self):
            raise ActorDiedError()

    monkeypatch.setattr(train, "build_trainer", lambda *args, **kwargs: DyingTrainer())
    with pytest.raises(ActorDiedError):
        train.run_training(dying, stopped_from_outside=lambda: stopped)
    record = RunRecord.load(str(tmp_path / "runs" / "dying"))
    run = MlflowClient(record.tracking_uri).get_run(record.mlflow_run_id)
    assert run.info.status == ("RUNNING" if stopped else "FAILED")
    assert ("pixelrnn.failure" in run.data.tags) is not stopped
