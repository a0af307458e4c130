"""Shared pieces of the Ray training tests: a tiny prepared dataset and a tiny config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from temp_root import processes_mentioning

from pipeline.cli.main import main
from pipeline.config import ExperimentConfig, merge

TRAIN_IMAGES, VAL_IMAGES = 64, 16


def prepare_tiny_dataset(root: Path) -> Path:
    """8x8 built-in crops: 64 train and 16 val images (even counts: no rows dropped by 2 ranks)."""
    output = root / "builtin-8"
    counts = [f"--train-images={TRAIN_IMAGES}", f"--val-images={VAL_IMAGES}", "--test-images=8"]
    assert main(["prepare", "builtin", "--output", str(output), "--size", "8", *counts]) == 0
    return output


def tiny_overrides(data: Path, work: Path, **extra: Any) -> dict[str, Any]:
    """Dotted overrides for a 2-layer, 12-channel Row LSTM with its store under `work`."""
    return {
        "model.num_layers": 2, "model.hidden_channels": 12, "model.head_channels": 12,
        "data.path": str(data), "train.epochs": 3, "train.batch_size": 8,
        "train.storage_path": str(work / "runs"), "train.keep_best": 1,
        "tracking.tracking_uri": f"sqlite:///{work}/mlflow.db", "tracking.experiment_name": "t",
        "tracking.num_samples": 2, **extra,
    }  # fmt: skip


def tiny_config(data: Path, work: Path, **extra: Any) -> ExperimentConfig:
    return merge([tiny_overrides(data, work, **extra)])


def latest_checkpoint(run_dir: Path | str) -> str:
    """Name of the latest checkpoint Ray Train registered for a run ("" before the first).

    `run_dir` is a local folder or an object-store location. Ray replaces the snapshot while a
    run goes on, and a reader of an object store can catch a replacement mid-read (seen with the
    S3 test server: one version's bytes followed by another's), so an unparsable snapshot reads
    as "no checkpoint yet" and the caller polls again.
    """
    from pipeline import storage
    from pipeline.errors import PixelRNNError

    try:
        snapshot = json.loads(storage.read_text(f"{run_dir}/checkpoint_manager_snapshot.json"))
    except (OSError, ValueError, PixelRNNError):  # not yet, mid-replacement, unreachable
        return ""
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name", "")


def wait_for(condition, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail if `process` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"driver exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def end_processes_under(folder: Path) -> None:
    """SIGKILL the processes whose command line names `folder` (a killed driver's Ray)."""
    for pid in processes_mentioning(str(folder)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# The run the interrupted runs of the determinism tests must retrace: 2 epochs of 8 steps on 2
# workers, interim reports after batches 3 and 6, no sample grids (they only cost time here).
DETERMINISM_RUN = {"train.epochs": 2, "train.report_every_steps": 3, "tracking.num_samples": 0,
                   "train.seed": 11}  # fmt: skip
_references: dict[str, Any] = {}


def reference_run(tmp_path_factory):
    """The uninterrupted `DETERMINISM_RUN` on the session cluster, trained once per session.

    Returns:
        (its `TrainingSummary`, the dataset folder it read).
    """
    if "run" not in _references:
        from pipeline.train import run_training

        work = tmp_path_factory.mktemp("reference")
        data_root = prepare_tiny_dataset(work)
        cfg = tiny_config(data_root, work, **DETERMINISM_RUN, **{"train.run_name": "reference"})
        _references["run"] = (run_training(cfg), data_root)
    return _references["run"]


def end_session(session_id: int) -> None:
    """SIGKILL every live process of the session `session_id` (one this test started with
    `start_new_session=True`, so only its own processes carry that id)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.getsid(int(entry.name)) != session_id:
                continue
            os.kill(int(entry.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
