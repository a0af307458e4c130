"""Object storage end to end, with a real S3-compatible server as the only storage.

The S3 server (moto, on 127.0.0.1) and a real `mlflow server` (runs in SQLite, artifacts proxied to
the same S3 server) are reached only through the standard variables and the tracking URI, as on a
cluster. The tests run in order, each on what the one before left in the bucket:
prepare -> train on 2 workers, driver SIGKILLed mid-epoch, --resume on 1 worker -> tune
(2 trials), driver SIGKILLed, tune --resume ->
evaluate / sample / complete from s3:// checkpoints and data -> sample --run-id through the server
with no S3 credentials -> compare. The drivers run in an empty working folder that stays empty.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from temp_root import processes_mentioning, short_dir
from train_support import (
    DETERMINISM_RUN,
    TRAIN_IMAGES,
    VAL_IMAGES,
    end_processes_under,
    latest_checkpoint,
    reference_run,
    tiny_overrides,
)

from pipeline import storage
from pipeline.cli.main import main

pytestmark = pytest.mark.ray
EPOCHS = DETERMINISM_RUN["train.epochs"]
TINY = {
    "model.num_layers": 2, "model.hidden_channels": 12, "model.head_channels": 12,
    "train.batch_size": 8, "train.keep_best": 1, "tracking.num_samples": 2,
    "tracking.experiment_name": "s3",
}  # fmt: skip
SWEEP = {"scaling.num_workers": 1, "train.epochs": 2, "train.max_steps_per_epoch": 4,
         "train.max_val_batches": 2, "tracking.num_samples": 0, "tune.sweep_name": "s"}  # fmt: skip
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")  # fmt: skip


class Lab:
    """The bucket, the MLflow server and an empty working folder shared by this module's tests."""

    def __init__(self, s3_server, mlflow_server, work: Path, ray_temp: Path) -> None:
        self.s3, self.mlflow = s3_server, mlflow_server
        self.bucket = s3_server.bucket("lab")
        self.data = f"{self.bucket}/data/builtin-8"
        self.work, self.ray_temp = work, ray_temp
        self.client = MlflowClient(mlflow_server.uri)
        self.env = {**os.environ, "RAY_TMPDIR": str(ray_temp), "TMPDIR": str(ray_temp),
                    "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": mlflow_server.uri}  # fmt: skip
        self.env.pop("RAY_ADDRESS", None)

    def config(self, name: str, overrides: dict) -> str:
        """Upload an experiment file to the bucket; return its URI (the drivers read it there)."""
        uri = f"{self.bucket}/configs/{name}.yaml"
        storage.write_text(uri, yaml.safe_dump(overrides))
        return uri

    def driver(self, *args: str, log: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "pipeline", *args]
        with open(self.ray_temp / log, "w") as out:
            return subprocess.Popen(command, cwd=self.work, env=self.env, stdout=out, stderr=out)

    def run(self, *args: str, env: dict | None = None, timeout: float = 400) -> str:
        command = [sys.executable, "-m", "pipeline", *args]
        done = subprocess.run(command, cwd=self.work, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        return output

    def kill(self, process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        end_processes_under(self.ray_temp)  # Ray fate-shares with its driver; a safety net

    def text(self, key: str) -> str:
        try:
            return storage.read_text(f"{self.bucket}/{key}")
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="module")
def lab(s3_server, mlflow_server, tmp_path_factory):
    ray_temp = short_dir("o")  # the drivers' RAY_TMPDIR: Ray's socket paths are short
    yield Lab(s3_server, mlflow_server, tmp_path_factory.mktemp("work"), ray_temp)
    end_processes_under(ray_temp)
    shutil.rmtree(ray_temp, ignore_errors=True)


def wait_until(condition, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out; {log.read_text()[-2000:]}"
        time.sleep(0.2)


def shards(keys: list[str]) -> list[str]:
    """The Parquet shards among object keys (the first keys of an upload can be folder markers:
    an interrupted upload is only shown to be mid-way once a shard is there)."""
    return [key for key in keys if key.endswith(".parquet")]


def test_prepare_publishes_the_dataset_with_its_manifest_last(lab):
    counts = [f"--train-images={TRAIN_IMAGES}", f"--val-images={VAL_IMAGES}", "--test-images=8",
              "--size", "8"]  # the reference run's dataset, here on S3  # fmt: skip
    assert main(["prepare", "builtin", "--output", lab.data, *counts]) == 0
    keys = lab.s3.keys(f"{lab.data}/")
    assert "data/builtin-8/manifest.json" in keys
    assert any(key.startswith("data/builtin-8/train/part-") for key in keys)
    assert main(["verify", lab.data]) == 0


def test_train_killed_mid_epoch_on_2_workers_resumed_on_1_ends_as_the_uninterrupted_run(
    lab, tmp_path_factory
):
    reference, _ = reference_run(tmp_path_factory)  # 2 workers, local data and store
    overrides = tiny_overrides(lab.data, lab.work, **{
        **DETERMINISM_RUN, "train.storage_path": f"{lab.bucket}/runs", "train.run_name": "resume",
        "train.checkpoint_every_minutes": 1e-4,  # a checkpoint after every step
        "tracking.tracking_uri": "",  # MLFLOW_TRACKING_URI: the lab's server
        "tracking.experiment_name": "s3", "tracking.num_samples": 2})  # fmt: skip
    config = lab.config("train", overrides)
    first = lab.driver("train", "--config", config, log="train-first.log")

    def inside_epoch_1() -> bool:  # 8 steps of 8 images per epoch; killed after step 2 or later
        name = latest_checkpoint(f"{lab.bucket}/runs/resume")
        return name.startswith("epoch_0001_sample_") and int(name[-8:]) >= 16

    try:
        wait_until(inside_epoch_1, first, lab.ray_temp / "train-first.log", 300)
    finally:
        lab.kill(first)

    output = lab.run("train", "--config", config, "--resume", "--set", "scaling.num_workers=1",
                     "--set", "train.checkpoint_every_minutes=0")  # fmt: skip
    assert "samples into epoch 1 on 1 workers" in output, output[-3000:]
    assert not processes_mentioning(str(lab.ray_temp)), "the resumed driver left Ray processes"
    best = output.split("best checkpoint: ")[1].split()[0]
    assert best.startswith(f"{lab.bucket}/runs/resume/epoch_")
    (run,) = lab.client.search_runs([lab.client.get_experiment_by_name("s3").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["pixelrnn.resumed"] == "true"
    assert "scaling.num_workers=1" in run.data.tags["pixelrnn.resume_changes"]
    epochs = [m.value for m in lab.client.get_metric_history(run.info.run_id, "epoch")]
    assert epochs == [float(e) for e in range(1, EPOCHS + 1)]  # none repeated, none lost
    final = run.data.metrics["val/bits_per_dim"]
    assert final == pytest.approx(reference.metrics["val/bits_per_dim"], abs=5e-4)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    artifacts = lab.s3.keys(lab.mlflow.artifacts)  # the server's artifact store, on S3
    assert any(f"{run.info.run_id}/artifacts/checkpoint/checkpoint.pt" in key for key in artifacts)
    assert not list(lab.work.iterdir()), "a run on URIs wrote into the working folder"


def test_sweep_killed_and_resumed_on_s3(lab):
    overrides = {**TINY, **SWEEP, "data.path": lab.data, "tracking.experiment_name": "sweep",
                 "train.storage_path": f"{lab.bucket}/sweeps"}  # fmt: skip
    config = lab.config("sweep", overrides)
    command = ["tune", "--config", config, "--space", "cross_architecture", "--num-samples", "2",
               "--max-concurrent", "1"]  # fmt: skip

    def finished_trials() -> list:
        experiment = lab.client.get_experiment_by_name("sweep")
        if experiment is None:
            return []
        runs = lab.client.search_runs([experiment.experiment_id], "tags.pixelrnn.trial_id != ''")
        return [run for run in runs if run.info.status == "FINISHED"]

    first = lab.driver(*command, log="tune-first.log")
    try:
        wait_until(finished_trials, first, lab.ray_temp / "tune-first.log", 400)
    finally:
        lab.kill(first)
    (done,) = finished_trials()
    done_folder = f"{lab.bucket}/sweeps/s/train/{done.info.run_name}/"
    untouched = lab.s3.objects(done_folder)

    output = lab.run(*command, "--resume")
    assert "restoring sweep" in output and "best trial" in output
    keys = lab.s3.keys(f"{lab.bucket}/sweeps/s/")
    assert any(key.startswith("sweeps/s/experiment_state") for key in keys)  # Tune's state
    trials = {key.split("/")[3] for key in keys if key.startswith("sweeps/s/train/")} - {""}
    assert len(trials) == 2
    for trial in trials:
        assert any(f"/{trial}/epoch_" in key and key.endswith("checkpoint.pt") for key in keys)
    best = output.split("best config: ")[1].split()[0]
    assert best == f"{lab.bucket}/sweeps/s/best_experiment.yaml"
    assert yaml.safe_load(storage.read_text(best))["model"]  # a ready-to-run experiment file
    epochs = [m.value for m in lab.client.get_metric_history(done.info.run_id, "epoch")]
    assert epochs == [1.0, 2.0]  # the finished trial was not trained again
    assert lab.s3.objects(done_folder) == untouched  # nor its checkpoints rewritten
    again = lab.client.get_run(done.info.run_id)
    assert again.info.status == "FINISHED" and "pixelrnn.resumed" not in again.data.tags
    parent = lab.client.get_run(done.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["pixelrnn.resumed"] == "true"
    assert not list(lab.work.iterdir()), "a sweep on URIs wrote into the working folder"


def test_evaluate_sample_and_complete_from_s3_checkpoints_and_data(lab, ray_cluster, tmp_path):
    checkpoints = [key for key in lab.s3.keys(f"{lab.bucket}/runs/resume/")
                   if key.endswith("/checkpoint.pt")]  # fmt: skip
    folder = f"{lab.bucket}/{checkpoints[-1].rsplit('/', 1)[0]}"
    assert main(["evaluate", "--checkpoint", folder, "--data", lab.data, "--split", "val"]) == 0
    grid = tmp_path / "s.png"
    file = f"{folder}/checkpoint.pt"
    assert main(["sample", "--checkpoint", file, "--n", "2", "--out", str(grid)]) == 0
    assert grid.is_file()
    completed = tmp_path / "c.png"
    assert main(["sample", "--checkpoint", folder, "--complete-from", lab.data, "--rows", "4",
                 "--n", "2", "--out", str(completed)]) == 0  # fmt: skip
    assert (tmp_path / "c_completions.png").is_file()


def test_sample_by_run_id_through_the_server_needs_no_storage_credentials(lab, tmp_path):
    (run,) = lab.client.search_runs([lab.client.get_experiment_by_name("s3").experiment_id])
    env = {key: value for key, value in lab.env.items() if key not in AWS_VARIABLES}
    out = tmp_path / "by-run.png"
    output = lab.run("sample", "--run-id", run.info.run_id, "--tracking-uri", lab.mlflow.uri,
                     "--n", "2", "--out", str(out), env=env, timeout=120)  # fmt: skip
    assert out.is_file(), output
    read_back = (
        "import sys; from mlflow.tracking import MlflowClient\n"
        "client = MlflowClient(sys.argv[1])\n"
        "names = [a.path for a in client.list_artifacts(sys.argv[2], 'samples')]\n"
        "print(client.download_artifacts(sys.argv[2], names[-1], sys.argv[3]))\n"
    )
    done = subprocess.run([sys.executable, "-c", read_back, lab.mlflow.uri, run.info.run_id,
                           str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    grid = Path(done.stdout.strip().splitlines()[-1])
    assert grid.name == f"epoch_{EPOCHS:04d}.png" and grid.read_bytes()[:4] == b"\x89PNG"


def test_compare_reads_the_runs_through_the_server(lab, tmp_path, capsys):
    out = tmp_path / "curves.png"
    code = main(["compare", "--experiment", "sweep", "--tracking-uri", lab.mlflow.uri,
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    trials = {key.split("/")[3] for key in lab.s3.keys(f"{lab.bucket}/sweeps/s/train/")} - {""}
    assert all(trial in table for trial in trials), table
    assert out.is_file()


@pytest.mark.parametrize(
    ("case", "where"),
    [("unreachable endpoint", "s3://{bucket}/runs"), ("no credentials", "s3://{bucket}/runs"),
     ("missing bucket", "s3://no-such-bucket/runs"), ("unknown scheme", "nope://x/runs")],
)  # fmt: skip
def test_storage_failures_are_one_line_errors_naming_the_location(lab, case, where):
    env = {**lab.env, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/none"}
    if case == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    if case == "no credentials":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(key)
    location = where.format(bucket=lab.bucket.removeprefix("s3://"))
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--config",
        "experiments/smoke.yaml",
        "--set",
        f"train.storage_path={location}",
        "--set",
        f"data.path={location}/data",
    ]
    done = subprocess.run(command, cwd=Path(__file__).parents[2], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("pixelrnn: error: ") and location in line, line


def test_an_interrupted_upload_leaves_no_manifest(lab, tmp_path):
    target = f"{lab.bucket}/data/interrupted"
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "prepare",
        "builtin",
        "--output",
        target,
        "--size",
        "32",
        "--train-images=6000",
        "--val-images=8",
        "--test-images=4",
    ]
    log = tmp_path / "prepare.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=lab.env, stdout=out, stderr=out)
    try:
        wait_until(lambda: shards(lab.s3.keys(f"{target}/")), process, log, 120)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    keys = lab.s3.keys(f"{target}/")
    assert shards(keys)  # killed mid-upload
    assert f"{target.removeprefix(lab.bucket + '/')}/manifest.json" not in keys
    assert main(["verify", target]) == 2  # not a dataset: no manifest
    assert json.loads(lab.text("data/builtin-8/manifest.json"))["levels"] == 256
