"""A smoke run tracked by a real `mlflow server`, checked through its REST API as the web UI
reads it: sample grids as images with steps, the logged (and registered) model, the dataset
inputs with the manifest's digest, system metrics; then `evaluate` and `sample --model-uri`.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request

import pytest
from mlflow_support import MlflowServer
from PIL import Image
from train_support import VAL_IMAGES, prepare_tiny_dataset, tiny_config

from pipeline.cli.main import main
from pipeline.datasets.manifest import read_manifest
from pipeline.tracking import manifest_sha256
from pipeline.train import run_training

pytestmark = pytest.mark.ray
MODEL_NAME = "pixelrnn-smoke"


def call(base: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """GET (or POST `body` to) one REST endpoint; the parsed JSON answer."""
    url = f"{base}{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:  # a loaded CI machine
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts in a temp folder."""
    work = tmp_path_factory.mktemp("server")
    process = MlflowServer(work, str(work / "artifacts")).start(env=dict(os.environ))
    try:  # whatever happens, the server this test started is stopped
        yield process.uri
    finally:
        process.stop()


@pytest.fixture(scope="module")
def served_run(ray_cluster, server, tmp_path_factory):
    """One 2-epoch smoke run (a grid every epoch) tracked by the server, model registered."""
    work = tmp_path_factory.mktemp("served")
    dataset = prepare_tiny_dataset(work)
    cfg = tiny_config(dataset, work, **{
        "train.epochs": 2, "train.run_name": "served", "tracking.tracking_uri": server,
        "tracking.sample_every_epochs": 1, "tracking.registered_model_name": MODEL_NAME,
    })  # fmt: skip
    interval = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # samples even in a short run
    try:
        summary = run_training(cfg)
    finally:
        if interval is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = interval
    run = call(server, "/api/2.0/mlflow/runs/get", run_id=summary.mlflow_run_id)["run"]
    return server, summary, run, dataset


def test_sample_grids_are_images_with_the_steps_of_their_epochs(served_run):
    base, summary, _run, _dataset = served_run
    history = call(base, "/api/2.0/mlflow/metrics/get-history", run_id=summary.mlflow_run_id,
                   metric_key="epoch")["metrics"]  # fmt: skip
    epoch_steps = {int(metric["step"]) for metric in history}
    assert epoch_steps == {8, 16}  # 64 images / (2 workers x 4) = 8 steps per epoch
    files = call(base, "/api/2.0/mlflow/artifacts/list", run_id=summary.mlflow_run_id,
                 path="images")["files"]  # fmt: skip
    pngs = [f["path"] for f in files if f["path"].endswith(".png")]
    # MLflow names them images/<key>+step+<step>+timestamp+<ms>+<uuid>.png
    assert {int(path.split("+")[2]) for path in pngs} == epoch_steps
    assert all(path.startswith("images/samples+step+") for path in pngs)
    assert len([f for f in files if f["path"].endswith(".webp")]) == 2  # the UI's thumbnails


def test_the_best_checkpoint_is_a_logged_and_registered_model(served_run):
    base, summary, run, _dataset = served_run
    found = call(base, "/api/2.0/mlflow/logged-models/search",
                 {"experiment_ids": [run["info"]["experiment_id"]]})["models"]  # fmt: skip
    (model,) = [m for m in found if m["info"]["source_run_id"] == summary.mlflow_run_id]
    assert model["info"]["name"] == "model" and model["info"]["status"] == "LOGGED_MODEL_READY"
    versions = call(base, "/ajax-api/2.0/mlflow/registered-models/get", name=MODEL_NAME)
    (latest,) = versions["registered_model"]["latest_versions"]
    assert latest["run_id"] == summary.mlflow_run_id and summary.model_uri == (
        f"models:/{MODEL_NAME}/{latest['version']}"
    )
    outputs = [output["model_id"] for output in run["outputs"]["model_outputs"]]
    assert outputs == [model["info"]["model_id"]]  # the run page's "Logged models"
    url = (f"{base}/ajax-api/2.0/mlflow/logged-models/{model['info']['model_id']}/artifacts/files"
           "?artifact_file_path=MLmodel")  # fmt: skip
    with urllib.request.urlopen(url, timeout=120) as answer:
        mlmodel = answer.read().decode()
    # models from code: the pyfunc is a code file and the weights a torch file, nothing pickled
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel
    assert "path: artifacts/weights.pt" in mlmodel and ".pkl" not in mlmodel


def test_the_dataset_inputs_carry_the_manifest_digest(served_run):
    _base, _summary, run, dataset = served_run
    sha256 = manifest_sha256(read_manifest(str(dataset)))
    inputs = {i["tags"][0]["value"]: i["dataset"] for i in run["inputs"]["dataset_inputs"]}
    assert set(inputs) == {"training", "validation"}
    for context, split in (("training", "train"), ("validation", "val")):
        entry = inputs[context]
        assert entry["digest"] == sha256[:32] and entry["name"] == f"builtin/{split}"
        assert json.loads(entry["source"])["uri"] == str(dataset)
        profile = json.loads(entry["profile"])
        assert profile["manifest_sha256"] == sha256 and profile["image_shape"] == [3, 8, 8]
    assert json.loads(inputs["validation"]["profile"])["images"] == VAL_IMAGES


def test_system_metrics_are_logged(served_run):
    _base, _summary, run, _dataset = served_run
    keys = {metric["key"] for metric in run["data"]["metrics"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys


def test_evaluate_and_sample_accept_a_registered_model_alias(served_run, tmp_path, capsys):
    base, _summary, run, dataset = served_run
    call(base, "/api/2.0/mlflow/registered-models/alias",
         {"name": MODEL_NAME, "alias": "champion", "version": "1"})  # fmt: skip
    source = ["--model-uri", f"models:/{MODEL_NAME}@champion", "--tracking-uri", base]
    assert main(["evaluate", *source, "--data", str(dataset)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("val: ") and line.endswith(f"over {VAL_IMAGES} images")  # val default
    best = {m["key"]: m["value"] for m in run["data"]["metrics"]}["best/val_bits_per_dim"]
    assert math.isclose(float(line.split()[1]), best, rel_tol=1e-3)  # the best checkpoint's
    png = tmp_path / "grid.png"
    assert main(["sample", *source, "--n", "2", "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (2 * 9 + 1, 9 + 1)  # two 8x8 tiles, 1px gaps
    assert main(["evaluate", "--model-uri", "models:/nope@champion", "--tracking-uri", base,
                 "--data", str(dataset)]) == 2  # fmt: skip
    assert "--model-uri models:/nope@champion: not found" in capsys.readouterr().err


def test_sample_with_a_run_id_logs_its_grid_to_that_run_as_an_image(served_run, tmp_path, capsys):
    base, summary, _run, _dataset = served_run
    source = ["--run-id", summary.mlflow_run_id, "--tracking-uri", base]
    assert main(["sample", *source, "--n", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert "as image 'cli_samples'" in capsys.readouterr().out
    files = call(base, "/api/2.0/mlflow/artifacts/list", run_id=summary.mlflow_run_id,
                 path="images")["files"]  # fmt: skip
    (png,) = [f["path"] for f in files if f["path"].startswith("images/cli_samples+step+")
              and f["path"].endswith(".png")]  # fmt: skip
    history = call(base, "/api/2.0/mlflow/metrics/get-history", run_id=summary.mlflow_run_id,
                   metric_key="epoch")["metrics"]  # fmt: skip
    assert int(png.split("+")[2]) in {int(metric["step"]) for metric in history}  # its checkpoint's
