"""`pixelrnn compare` against a real SQLite MLflow store holding a sweep's parent and trials."""

from __future__ import annotations

import pytest
from PIL import Image

from pipeline import tracking
from pipeline.cli.main import main
from pipeline.compare import collect, format_table
from pipeline.config import merge
from pipeline.sweeps import STOPPED_EARLY_TAG

TRIALS = {  # name: (config overrides, val bits/dim per epoch, final status)
    "t_00000": ({"model.layer": "row_lstm", "optim.lr": 0.001}, [6.1, 5.2, 4.9], "FINISHED"),
    "t_00001": ({"model.layer": "pixelcnn", "optim.optimizer": "adam", "optim.lr": 3e-4,
                 "model.num_layers": 4}, [6.5], "KILLED"),
    "t_00002": ({"model.layer": "diagonal_bilstm", "model.hidden_channels": 96}, [5.8, 4.7],
                "FINISHED"),
    "t_00003": ({"model.layer": "row_lstm", "optim.lr": 0.003}, [], "FAILED"),
}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A parent run (the sweep) and four child runs logged the way trials log them."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    base = {"tracking.tracking_uri": uri, "tracking.experiment_name": "cmp"}
    parent = tracking.start_run(merge([base]), "sweep", {"pixelrnn.role": "sweep"}, {})
    for name, (overrides, values, status) in TRIALS.items():
        tags = {"mlflow.parentRunId": parent.run_id, "pixelrnn.trial_id": name}
        run = tracking.start_run(merge([base, overrides]), name, tags, {"steps_per_epoch": 10})
        for epoch, value in enumerate(values, start=1):
            metrics = {"val/bits_per_dim": value, "epoch": epoch}
            run.log_metrics({**metrics, "throughput/images_per_s": 100.0 * epoch}, step=10 * epoch)
        if status == "KILLED":
            run.set_tags({STOPPED_EARLY_TAG: "true"})
        run.finish(status)
    parent.finish("FINISHED")
    return uri, parent


def test_rows_are_sorted_best_first_with_architecture_optimizer_and_outcome(store):
    uri, parent = store
    rows = collect(uri, "val/bits_per_dim", parent_run_id=parent.run_id)
    assert [row.name for row in rows] == ["t_00002", "t_00000", "t_00001", "t_00003"]
    best = rows[0]
    assert (best.layer, best.depth, best.hidden, best.optimizer, best.lr) == (
        "diagonal_bilstm", "7", "96", "rmsprop", "0.001"
    )  # fmt: skip
    assert (best.best, best.epoch, best.images_per_s, best.status) == (4.7, 2, 150.0, "finished")
    assert best.curve == [(1.0, 5.8), (2.0, 4.7)]  # steps / steps_per_epoch
    assert rows[2].status == "stopped (ASHA)" and rows[2].optimizer == "adam"
    assert rows[3].status == "failed"
    table = format_table(rows, "val/bits_per_dim").splitlines()
    assert table[0].split() == ["run", "layer", "depth", "hidden", "optimizer", "lr", "best",
                                "val/bits_per_dim", "epoch", "images/s", "status"]  # fmt: skip
    assert table[2].split() == ["t_00002", "diagonal_bilstm", "7", "96", "rmsprop", "0.001",
                                "4.7000", "2", "150.0", "finished"]  # fmt: skip
    assert table[5].split() == ["t_00003", "row_lstm", "7", "48", "rmsprop", "0.003", "-", "0",
                                "-", "failed"]  # fmt: skip


def test_compare_command_prints_the_table_and_logs_a_readable_png_to_the_parent(
    store, tmp_path, capsys
):
    uri, parent = store
    png = tmp_path / "out" / "curves.png"
    argv = ["compare", "--parent", parent.run_id, "--tracking-uri", uri, "--out", str(png)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best val/bits_per_dim" in printed and "stopped (ASHA)" in printed
    assert f"4 runs; validation curves: {png} (logged to run {parent.run_id})" in printed
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 1200 and image.height >= 450
        assert len(set(image.convert("L").getdata())) > 50  # curves and text, not a blank canvas
    assert [a.path for a in parent.client.list_artifacts(parent.run_id, "compare")] == [
        "compare/curves.png"
    ]


def test_compare_by_experiment_or_run_ids(store, tmp_path, capsys):
    uri, parent = store
    out = ["--tracking-uri", uri, "--out", str(tmp_path / "c.png")]
    assert main(["compare", "--experiment", "cmp", *out]) == 0
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "sweep" not in printed.split("\n\n")[0]  # parents left out
    child = collect(uri, "val/bits_per_dim", parent_run_id=parent.run_id)[1]
    assert main(["compare", "--runs", child.run_id, "--metric", "epoch", *out]) == 0
    printed = capsys.readouterr().out
    assert "best epoch" in printed and "1 runs" in printed and child.name in printed


def test_unknown_experiments_and_runs_are_one_line_errors(store, tmp_path, capsys):
    uri, _parent = store
    out = ["--tracking-uri", uri, "--out", str(tmp_path / "c.png")]
    assert main(["compare", "--experiment", "nope", *out]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err
    assert main(["compare", "--runs", "0123abcd", *out]) == 2
    assert "no MLflow run '0123abcd'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_best_ranks_epoch_end_reports_only_but_the_curve_keeps_interim_points(tmp_path):
    """Interim reports carry no "epoch" and may score a validation subset: a lucky subset
    score must not become the run's best (the checkpointed epoch-end scores are ranked)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = merge([{"tracking.tracking_uri": uri, "tracking.experiment_name": "interim"}])
    run = tracking.start_run(cfg, "budgeted", {}, {"steps_per_epoch": 10})
    run.log_metrics({"val/bits_per_dim": 4.40}, step=5)  # interim, 256-image subset
    run.log_metrics({"val/bits_per_dim": 4.53, "epoch": 1}, step=10)  # whole split
    run.log_metrics({"val/bits_per_dim": 4.45}, step=15)  # interim
    run.log_metrics({"val/bits_per_dim": 4.50, "epoch": 2}, step=20)
    run.finish("FINISHED")
    (row,) = collect(uri, "val/bits_per_dim", experiment="interim")
    assert row.best == 4.50
    assert row.curve == [(0.5, 4.40), (1.0, 4.53), (1.5, 4.45), (2.0, 4.50)]


def test_curves_go_against_epochs_steps_or_training_minutes(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = merge([{"tracking.tracking_uri": uri, "tracking.experiment_name": "axes"}])
    run = tracking.start_run(cfg, "timed", {}, {"steps_per_epoch": 10})
    run.log_metrics({"val/nll_nats": 90.0}, step=4)  # a report from before time was logged
    run.log_metrics({"val/nll_nats": 85.0, "time/train_minutes": 2.5}, step=5)
    run.log_metrics({"val/nll_nats": 83.0, "time/train_minutes": 4.75, "epoch": 1}, step=10)
    run.finish("FINISHED")
    curves = {x: collect(uri, "val/nll_nats", experiment="axes", x=x)[0].curve
              for x in ("epoch", "step", "minutes")}  # fmt: skip
    assert curves == {
        "epoch": [(0.4, 90.0), (0.5, 85.0), (1.0, 83.0)],
        "step": [(4.0, 90.0), (5.0, 85.0), (10.0, 83.0)],
        "minutes": [(2.5, 85.0), (4.75, 83.0)],
    }
    png = tmp_path / "minutes.png"
    argv = ["compare", "--tracking-uri", uri, "--metric", "val/nll_nats", "--x", "minutes",
            "--out", str(png)]  # fmt: skip
    assert main(argv) == 0
    assert "83.0000" in capsys.readouterr().out and png.stat().st_size > 10_000
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main([*argv[:-4], "--x", "hours"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'hours'" in capsys.readouterr().err


def test_compare_without_a_selection_takes_the_experiment_of_the_latest_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = ["--tracking-uri", uri, "--out", str(tmp_path / "c.png")]
    assert main(["compare", *out]) == 2
    assert f"no MLflow runs in {uri}" in capsys.readouterr().err
    for experiment in ("older", "newer"):  # runs of "newer" start last
        cfg = merge([{"tracking.tracking_uri": uri, "tracking.experiment_name": experiment}])
        for name in (f"{experiment}-a", f"{experiment}-b"):
            run = tracking.start_run(cfg, name, {}, {"steps_per_epoch": 1})
            run.log_metrics({"val/bits_per_dim": 5.0, "epoch": 1}, step=1)
            run.finish("FINISHED")
    assert main(["compare", *out]) == 0
    printed = capsys.readouterr().out
    assert "experiment newer: 2 runs" in printed
    assert "newer-a" in printed and "older-a" not in printed
