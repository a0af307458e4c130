"""MLflow tracking against a real SQLite store, and sample-grid PNGs."""

from __future__ import annotations

import json
import pickle
import time

import pytest
import torch
from PIL import Image

from pipeline import tracking
from pipeline.config import TrackingConfig, merge
from pipeline.images import draw_grid, save_grid
from pixelrnn_model import ModelConfig, PixelRNN


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(TrackingConfig(), cwd=tmp_path) == (
        f"sqlite:///{tmp_path}/mlflow.db"
    )
    relative = TrackingConfig(tracking_uri="sqlite:///runs/x.db")
    assert tracking.resolve_tracking_uri(relative, tmp_path) == f"sqlite:///{tmp_path}/runs/x.db"
    server = TrackingConfig(tracking_uri="http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(server, tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/env.db")
    assert tracking.resolve_tracking_uri(server, tmp_path) == "sqlite:////elsewhere/env.db"


def test_run_logs_params_tags_metrics_artifacts_and_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = merge([{"tracking.experiment_name": "unit", "model.num_layers": 2}])
    manifest = {"source": "builtin", "counts": {"train": 4}}
    tags = tracking.run_tags(cfg, manifest, str(tmp_path / "data"))
    tracker = tracking.start_run(cfg, "unit-run", tags, {"batch_size_per_worker": 16})
    tracker = pickle.loads(pickle.dumps(tracker))  # as shipped to the Ray Train controller
    tracker.log_metrics({"val/bits_per_dim": 5.5, "epoch": 1, "note": "x", "bad": float("nan")}, 7)
    (tmp_path / "grid.png").write_bytes(b"png")
    tracker.log_artifact(tmp_path / "grid.png", "samples")
    tracker.finish("FAILED", "diverged")

    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "unit-run"
    assert run.data.params["model.num_layers"] == "2"
    assert run.data.params["optim.optimizer"] == "rmsprop"
    assert run.data.params["derived.batch_size_per_worker"] == "16"
    assert set(cfg.to_flat()) <= set(run.data.params)
    assert run.data.tags["dataset.name"] == "builtin"
    assert run.data.tags["dataset.manifest_sha256"] == tracking.manifest_sha256(manifest)
    assert run.data.tags["model.layer"] == "row_lstm"
    assert run.data.tags["pixelrnn.failure"] == "diverged"
    assert {"git.commit", "version.ray", "version.torch"} <= set(run.data.tags)
    assert run.data.metrics == {"val/bits_per_dim": 5.5, "epoch": 1.0}
    assert tracker.metric_history("val/bits_per_dim") == [(7, 5.5)]
    artifacts = [a.path for a in tracker.client.list_artifacts(tracker.run_id, "samples")]
    assert artifacts == ["samples/grid.png"]
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns").is_dir()  # artifacts next to the database

    reopened = tracking.reopen_run(tracker.tracking_uri, tracker.run_id)
    assert reopened.status() == "RUNNING"
    assert reopened.tag("pixelrnn.failure") == ""  # the resumed segment has not failed
    assert reopened.tag("pixelrnn.previous_failure") == "diverged"
    reopened.finish("FINISHED")
    again = tracker.client.get_run(tracker.run_id)
    assert again.info.status == "FINISHED" and "pixelrnn.failure" not in again.data.tags


def test_sample_grid_png(tmp_path):
    pixels = torch.randint(0, 256, (5, 3, 4, 6))
    path = save_grid(pixels, 256, tmp_path / "deep" / "grid.png")
    with Image.open(path) as image:
        assert image.size == (3 * 7 + 1, 2 * 5 + 1)  # 3 columns x 2 rows of 6x4 tiles, 1px gaps
    binary = save_grid(torch.randint(0, 2, (4, 1, 3, 3)), 2, tmp_path / "binary.png")
    with Image.open(binary) as image:
        assert set(image.convert("L").getdata()) <= {0, 255}


@pytest.mark.parametrize("channels,levels", [(3, 256), (1, 2)])
def test_draw_grid_samples_the_model(tmp_path, channels, levels):
    model = PixelRNN(ModelConfig(num_layers=1, hidden_channels=3, head_channels=3,
                                 channels=channels, levels=levels))  # fmt: skip
    path = draw_grid(model, 4, 3, 3, tmp_path / "s.png", torch.Generator().manual_seed(0))
    assert path.is_file()


def test_images_datasets_and_system_metrics_on_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    cfg = merge([{"tracking.tracking_uri": f"sqlite:///{tmp_path}/m.db"}])
    manifest = {"shape": [4, 6, 3], "levels": 256, "source": {"name": "builtin"},
                "splits": {"train": {"count": 8}, "val": {"count": 2}}}  # fmt: skip
    quiet = tracking.start_run(cfg, "quiet", {}, {})
    with tracking.SystemMetrics(quiet, enabled=False):
        time.sleep(2.5)
    tracker = tracking.start_run(cfg, "watched", {}, {})
    with tracking.SystemMetrics(tracker, enabled=True):
        time.sleep(2.5)
    tracker.log_image(save_grid(torch.zeros(1, 3, 4, 6, dtype=torch.int64), 256,
                                tmp_path / "g.png"), key="samples", step=7)  # fmt: skip
    tracker.log_dataset(manifest, str(tmp_path / "data"), "val", "validation")

    run = tracker.client.get_run(tracker.run_id)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert not any(k.startswith("system/") for k in quiet.client.get_run(quiet.run_id).data.metrics)
    images = [a.path for a in tracker.client.list_artifacts(tracker.run_id, "images")]
    assert any(p.startswith("images/samples+step+7+") and p.endswith(".png") for p in images)
    (entry,) = run.inputs.dataset_inputs
    assert entry.tags[0].value == "validation" and entry.dataset.name == "builtin/val"
    sha256 = tracking.manifest_sha256(manifest)
    assert entry.dataset.digest == sha256[:32]
    assert json.loads(entry.dataset.profile) == {
        "split": "val", "images": 2, "counts": {"train": 8, "val": 2}, "image_shape": [3, 4, 6],
        "levels": 256, "manifest_sha256": sha256,
    }  # fmt: skip
