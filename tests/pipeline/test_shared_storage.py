"""Shared storage without a cloud: `file://` URIs take the same pyarrow-filesystem path as
`s3://` / `gs://` for run records, prepared datasets and MLflow artifact locations."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline import data, runs, storage, tracking
from pipeline.cli.main import main
from pipeline.config import merge
from pipeline.errors import ConfigError


def test_locations_join_normalize_and_name_ray_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("runs") == str(tmp_path / "runs")
    assert storage.normalize("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.join("s3://bucket/runs/", "a", "b.json") == "s3://bucket/runs/a/b.json"
    assert storage.location_of("s3://bucket/runs", "bucket/runs/x/epoch_0002") == (
        "s3://bucket/runs/x/epoch_0002"
    )
    assert storage.location_of("file:///tmp/runs", "/tmp/runs/x") == "file:///tmp/runs/x"
    assert storage.location_of("/tmp/runs", "/tmp/runs/x") == "/tmp/runs/x"


def test_run_records_resume_and_name_checks_work_on_a_uri(tmp_path):
    root = f"file://{tmp_path}/runs"
    base = {"train.storage_path": root, "tracking.experiment_name": "e"}
    cfg = merge([base])
    assert runs.storage_location(cfg) == root
    for name in ("e-1", "e-2", "other-1"):
        runs.RunRecord(name, root, "sqlite:///x.db", f"id-{name}", cfg.to_dict()).save()
    assert (tmp_path / "runs" / "e-1" / runs.RECORD_FILE).is_file()
    assert not list((tmp_path / "runs" / "e-1").glob(".*partial"))
    os.utime(tmp_path / "runs" / "e-1" / runs.RECORD_FILE, (time.time() + 60,) * 2)

    found = runs.find_run_to_resume(cfg)
    assert (found.mlflow_run_id, found.directory) == ("id-e-1", f"{root}/e-1")
    assert runs.RunRecord.load(found.directory) == found
    named = runs.find_run_to_resume(merge([base, {"train.run_name": "e-2"}]))
    assert named.mlflow_run_id == "id-e-2"
    with pytest.raises(ConfigError, match="--resume: no run of experiment 'nothing'"):
        runs.find_run_to_resume(merge([base, {"tracking.experiment_name": "nothing"}]))
    with pytest.raises(ConfigError, match="run 'e-2' already exists"):
        runs.check_new_run(cfg, "e-2")
    runs.check_new_run(cfg, "e-3")  # free
    with pytest.raises(ConfigError, match=r"train\.storage_path: nope://x: cannot open"):
        runs.storage_location(merge([{"train.storage_path": "nope://x"}]))


def test_prepare_publishes_to_a_uri_that_training_reads(tmp_path):
    uri = f"file://{tmp_path}/shared/builtin-8"
    counts = ["--train-images=8", "--val-images=4", "--test-images=4", "--size", "8"]
    assert main(["prepare", "builtin", "--output", uri, *counts]) == 0
    dataset = data.open_prepared(uri)  # manifest + every shard's sha256, through pyarrow
    assert (dataset.root, dataset.count("train"), dataset.count("val")) == (uri, 8, 4)
    assert dataset.shard_paths("val")[0].startswith(f"{tmp_path}/shared/builtin-8/")
    assert main(["prepare", "builtin", "--output", uri, *counts]) == 2  # needs --force
    assert main(["prepare", "builtin", "--output", uri, *counts, "--seed=1", "--force"]) == 0
    assert data.open_prepared(uri).manifest["source"]["options"]["seed"] == 1
    assert not list(Path(tmp_path / "shared").glob("*/.*"))  # nothing half-written left


def test_mlflow_artifact_location_is_configurable(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    shared = f"file://{tmp_path}/shared-artifacts"
    cfg = merge([{"tracking.tracking_uri": store, "tracking.experiment_name": "a",
                  "tracking.artifact_location": shared}])  # fmt: skip
    tracker = tracking.start_run(cfg, "r", {}, {})
    (tmp_path / "note.txt").write_text("x")
    tracker.log_artifact(tmp_path / "note.txt", "notes")
    assert (tmp_path / "shared-artifacts" / tracker.run_id / "artifacts/notes/note.txt").is_file()
    default = tracking.start_run(merge([{"tracking.tracking_uri": store}]), "d", {}, {})
    experiment = default.client.get_experiment_by_name("pixelrnn")
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
