"""The team MLflow server's SQLite store outlives the head's disk: backed up to the S3 server and
restored from it by `python -m pipeline.mlflow_store` (what cluster.yaml's head runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mlflow.tracking import MlflowClient
from s3_support import free_port, wait_until_up

from pipeline import mlflow_store, storage


def test_backup_and_restore_carry_the_runs_through_the_bucket(s3_server, tmp_path):
    head = tmp_path / "head" / "mlflow.db"
    head.parent.mkdir()
    client = MlflowClient(f"sqlite:///{head}")
    run = client.create_run(client.create_experiment("kept"))
    client.log_metric(run.info.run_id, "val/bits_per_dim", 3.75, step=7)
    backup = f"{s3_server.bucket('store')}/pixelrnn/mlflow.db"

    mlflow_store.backup(head, backup)
    new_head = tmp_path / "new-head" / "mlflow.db"  # after `ray down` and `ray up`
    assert mlflow_store.restore(backup, new_head)
    (metric,) = MlflowClient(f"sqlite:///{new_head}").get_metric_history(
        run.info.run_id, "val/bits_per_dim"
    )
    assert (metric.value, metric.step) == (3.75, 7)
    assert not mlflow_store.restore(backup, new_head)  # an existing store is never overwritten
    assert not mlflow_store.restore(f"{backup}.missing", tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()


def test_serve_restores_serves_and_backs_up_on_stop(s3_server, tmp_path):
    bucket = s3_server.bucket("serve")
    backup, port = f"{bucket}/mlflow.db", free_port()
    command = [
        sys.executable,
        "-m",
        "pipeline.mlflow_store",
        "serve",
        "--backup",
        backup,
        "--database",
        str(tmp_path / "mlflow.db"),
        "--port",
        str(port),
        "--artifacts-destination",
        f"{bucket}/artifacts",
        "--every-minutes",
        "10",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log,
                                  start_new_session=True)  # fmt: skip
    try:
        up = wait_until_up(f"http://127.0.0.1:{port}/health", server, 240)
        assert up, (tmp_path / "serve.log").read_text()[-3000:]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("served"))
        assert not storage.is_file(backup)  # the first periodic copy is 10 minutes away
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # as the head's shutdown does
        server.wait(timeout=60)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    restored = tmp_path / "restored.db"
    assert mlflow_store.restore(backup, restored)
    assert MlflowClient(f"sqlite:///{restored}").get_run(run.info.run_id).info.run_id
