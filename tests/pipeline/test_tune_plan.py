"""Sweep planning without Ray: trial sizing against the cluster, sweep folders, best-trial files."""

from __future__ import annotations

import pytest

from pipeline import sweeps
from pipeline.config import ExperimentConfig, load_config, merge
from pipeline.errors import ConfigError
from pipeline.tune import describe_space, get_space

SMOKE = "experiments/smoke.yaml"


def config(**overrides) -> ExperimentConfig:
    return merge([load_config(SMOKE).to_flat(), overrides])


def test_a_trial_holds_its_driver_its_workers_and_a_cpu_for_ray_data():
    sizing = sweeps.size_trials(config(), {"CPU": 4.0})
    assert (sizing.cpus_per_trial, sizing.gpus_per_trial, sizing.max_concurrent) == (4, 0, 1)
    wide = sweeps.size_trials(config(**{"tune.num_samples": 3}), {"CPU": 16.0})
    assert wide.max_concurrent == 3  # as many as fit, but no more than there are trials
    one_worker = config(**{"scaling.num_workers": 1, "tune.max_concurrent_trials": 2})
    assert sweeps.size_trials(one_worker, {"CPU": 6.0}).max_concurrent == 2


def test_gpu_trials_run_as_many_at_once_as_the_gpus_hold():
    gpus = config(**{"scaling.use_gpu": True, "tune.num_samples": 8})
    assert sweeps.size_trials(gpus, {"CPU": 64.0, "GPU": 8.0}).max_concurrent == 4
    with pytest.raises(ConfigError, match=r"needs 2 GPUs .* has 1"):
        sweeps.size_trials(gpus, {"CPU": 64.0, "GPU": 1.0})


def test_a_sweep_that_cannot_fit_says_what_a_trial_needs():
    with pytest.raises(ConfigError) as info:
        sweeps.size_trials(config(), {"CPU": 2.0})
    assert str(info.value) == (
        "scaling.num_workers: one trial needs 4 CPUs (1 for its driver (tune.trial_driver_cpus)"
        " + 2 workers x 1 (scaling.num_workers, scaling.cpus_per_worker) + 1 for Ray Data "
        "(tune.data_cpus)), but the Ray cluster has 2; use fewer or smaller workers, or a "
        "bigger cluster"
    )
    with pytest.raises(
        ConfigError, match=r"tune\.max_concurrent_trials: 2 trials .* at most 1 fit"
    ):
        sweeps.size_trials(config(**{"tune.max_concurrent_trials": 2}), {"CPU": 6.0})


def test_a_sweep_refuses_a_range_of_worker_counts_in_one_line():
    with pytest.raises(ConfigError) as info:
        sweeps.size_trials(config(**{"scaling.num_workers": "[1,2]"}), {"CPU": 16.0})
    assert str(info.value) == (
        "scaling.num_workers: sweeps take a fixed worker count, not a range ([1, 2]); each "
        "trial is sized and placed once (docs/sweeps.md)"
    )


def test_unknown_spaces_and_bad_tune_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown space 'rowlstm'; expected one of"):
        get_space("rowlstm")
    with pytest.raises(ConfigError, match=r"tune\.mode"):
        config(**{"tune.mode": "lowest"})
    with pytest.raises(ConfigError, match=r"tune\.reduction_factor"):
        config(**{"tune.reduction_factor": 1})


def test_spaces_are_described_readably_for_mlflow():
    described = describe_space(get_space("cross_architecture"))
    assert described["optim.lr"] == "loguniform(0.0001, 0.003)"
    assert described["model.layer"] == "choice(['row_lstm', 'diagonal_bilstm', 'pixelcnn'])"
    assert describe_space(get_space("row_lstm"))["model.layer"] == "'row_lstm'"


def test_best_experiment_holds_only_deltas_and_round_trips(tmp_path):
    base = config(**{"tune.space": "cross_architecture", "tune.num_samples": 2})
    params = {
        "model.layer": "pixelcnn",
        "optim.lr": "0.00042",
        "model.residual": "False",
        "model.hidden_channels": "48",
    }  # fmt: skip  (MLflow params are strings)
    experiment = sweeps.best_experiment(base.to_dict(), params)
    assert "tune" not in experiment and "run_name" not in experiment["train"]
    assert "hidden_channels" not in experiment["model"]  # 48 is the default
    path = tmp_path / "best.yaml"
    path.write_text(sweeps.best_experiment_text(experiment, ["best trial x"]))
    assert path.read_text().startswith("# best trial x\n")
    rebuilt = load_config(path)
    expected = merge([base.to_flat(), params, {"tune.space": "", "tune.num_samples": 8}])
    assert rebuilt == expected


def test_best_experiment_keeps_the_preset_and_writes_only_what_differs_from_it():
    base = merge([{"preset": "cifar10_row_lstm", "train.epochs": 3}])
    experiment = sweeps.best_experiment(base.to_dict(), {"model.num_layers": 4})
    assert experiment == {"preset": "cifar10_row_lstm", "model": {"num_layers": 4},
                          "train": {"epochs": 3}}  # fmt: skip


def test_resume_finds_the_latest_sweep_and_refuses_a_changed_config(tmp_path):
    cfg = config(**{"train.storage_path": str(tmp_path), "tune.space": "row_lstm"})
    with pytest.raises(ConfigError, match="--resume: no sweep of experiment 'smoke'"):
        sweeps.find_sweep_to_resume(cfg)
    name = sweeps.new_sweep_name(cfg)
    assert name.startswith("smoke-sweep-")
    record = sweeps.SweepRecord(name, str(tmp_path), "sqlite:///x.db", "parent", "row_lstm",
                                cfg.to_dict(), cfg.to_dict())  # fmt: skip
    record.save()
    assert sweeps.find_sweep_to_resume(cfg) == record
    with pytest.raises(ConfigError, match="already exists"):
        sweeps.check_new_sweep(cfg, name)
    changed = merge([cfg.to_flat(), {"optim.lr": 0.1}])
    with pytest.raises(ConfigError, match=r"differs from the sweep being resumed in optim\.lr"):
        sweeps.find_sweep_to_resume(changed)


def test_trials_see_absolute_paths_and_are_named_by_trial_id(tmp_path):
    cfg = config()
    base = sweeps.trial_base(cfg, tmp_path / "sweep", "sqlite:////abs/mlflow.db")
    assert base.data.path.startswith("/") and base.train.storage_path == str(
        tmp_path / "sweep" / "train"
    )
    trial = sweeps.trial_config(base.to_dict(), {"optim.lr": 0.01}, "abcde_00003")
    assert (trial.train.run_name, trial.optim.lr) == ("abcde_00003", 0.01)
    assert trial.tracking.tracking_uri == "sqlite:////abs/mlflow.db"


def test_settling_a_sweep_marks_every_asha_stopped_trial_killed_with_its_own_message(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    stopped = {sweeps.STOPPED_EARLY_TAG: "true", "pixelrnn.stopped_message": "stopped by ASHA"}

    def child(status: str, failure: str = "", **tags: str) -> str:
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, **tags})
        if failure:
            client.set_tag(run.info.run_id, "pixelrnn.failure", failure)
        client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    # the killed trial's own process ended it FAILED, or overwrote the message, after the stop
    failed = child("FAILED", "ActorDiedError()", **stopped)
    overwritten = child("KILLED", "ActorDiedError()", **stopped)
    finished = child("FINISHED")
    crashed = child("FAILED", "ValueError('real')")
    record = sweeps.SweepRecord("s", str(tmp_path), uri, parent, "row_lstm", {}, {})
    settled = {run.run_id: run for run in sweeps.settle_stopped_trials(record)}
    for run_id in (failed, overwritten):
        run = client.get_run(run_id)
        assert run.info.status == settled[run_id].status == "KILLED"
        assert run.data.tags["pixelrnn.failure"] == "stopped by ASHA"
    assert client.get_run(finished).info.status == settled[finished].status == "FINISHED"
    crash = client.get_run(crashed)
    assert crash.info.status == settled[crashed].status == "FAILED"
    assert crash.data.tags["pixelrnn.failure"] == "ValueError('real')"


def test_a_stopped_trial_keeps_the_drivers_verdict_over_its_own_teardown_failure(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import RunTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    message = "stopped by ASHA after epoch 1"
    stop = {sweeps.STOPPED_EARLY_TAG: "true", "pixelrnn.stopped_message": message}

    # the driver tagged and ended the run, then the trial's teardown ended it FAILED
    stopped = RunTracker(uri, client.create_run(experiment).info.run_id)
    stopped.set_tags(stop)
    stopped.finish("KILLED", message)
    stopped.finish("FAILED", "ActorDiedError()")
    assert sweeps.keep_stop_verdict(stopped)
    run = client.get_run(stopped.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["pixelrnn.failure"] == message
    assert not sweeps.keep_stop_verdict(stopped)  # already right: nothing written

    crashed = RunTracker(uri, client.create_run(experiment).info.run_id)
    crashed.finish("FAILED", "ValueError('real')")  # no stop: a failure stays a failure
    assert not sweeps.keep_stop_verdict(crashed)
    assert client.get_run(crashed.run_id).info.status == "FAILED"
