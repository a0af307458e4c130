"""Launch to first optimizer step of `pixelrnn train` on a prepared CIFAR-10 (25 shards).

Before (`--verify`, what every start did until the sixth session): the driver reads and hashes
every shard before Ray starts. After (the default): it lists each shard's size only. Both runs
are the same one-step `pixelrnn train` subprocess (the CIFAR-10 Row LSTM preset, 1 worker, batch
16); the time is from launching the process to the MLflow timestamp of its first
`train/bits_per_dim` point (logged by rank 0 right after step 1, with
`train.report_every_steps=1`). Runs alternate
`--repeats` times; the best of each is kept. The sha256 pass alone is also timed, in-process.

    python benchmarks/launch_to_first_step.py [--repeats 2] [--data DIR]

Needs ../shared/data/cifar-10-batches-bin (or PIXELRNN_DATA_DIR); prepares it into a temporary
folder unless `--data` names a prepared CIFAR-10, e.g. one on object storage
(`pixelrnn prepare cifar10 ... --output s3://BUCKET/cifar10`, then `--data s3://BUCKET/cifar10`
with the usual AWS_* variables set), where the sha256 pass reads every byte over the network.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from model_throughput import machine

from pipeline.data import verify_with_progress
from pipeline.datasets.manifest import read_manifest, total_bytes

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIXELRNN_DATA_DIR", ROOT.parent / "shared" / "data"))


def prepare_cifar10(work: Path) -> Path:
    source = SHARED / "cifar-10-batches-bin"
    if not source.is_dir():
        sys.exit(f"{source}: CIFAR-10 (binary version) not found; set PIXELRNN_DATA_DIR")
    output = work / "cifar10"
    command = [sys.executable, "-m", "pipeline", "prepare", "cifar10", "--input", str(source),
               "--output", str(output), "--split", "val=data_batch_5.bin"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return output


def first_step_s(data: str, work: Path, name: str, verify: bool) -> float:
    """Seconds from launching `pixelrnn train` to its first logged training bits/dim."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{work / 'mlflow.db'}"
    config = {
        "preset": "cifar10_row_lstm", "data": {"path": str(data)},
        "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 1,
                  "report_every_steps": 1, "interim_val_batches": 1, "max_val_batches": 1,
                  "storage_path": str(work / "runs"), "run_name": name},
        "scaling": {"num_workers": 1}, "tracking": {"tracking_uri": store,
                                                     "experiment_name": "launch",
                                                     "num_samples": 0},
    }  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(path)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    launched = time.time()
    done = subprocess.run([*command, *(["--verify"] if verify else [])], cwd=work, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{name}: training failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("launch").experiment_id], f"run_name = '{name}'"
    )
    history = client.get_metric_history(run.info.run_id, "train/bits_per_dim")
    first = min(metric.timestamp for metric in history)
    return first / 1000 - launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", help="a prepared CIFAR-10, a folder or a URI such as s3://... "
                        "(default: prepare one in a temporary folder)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="launch-") as scratch:
        work = Path(scratch)
        data = args.data or str(prepare_cifar10(work))
        manifest = read_manifest(str(data))
        shards = sum(len(split["shards"]) for split in manifest["splits"].values())
        started = time.perf_counter()
        verify_with_progress(str(data), manifest)
        hashing = time.perf_counter() - started
        times: dict[str, list[float]] = {"before (--verify)": [], "after (default)": []}
        for repeat in range(args.repeats):
            for label in times:
                verify = label.startswith("before")
                name = f"{'verify' if verify else 'default'}-{repeat}"
                times[label].append(first_step_s(data, work, name, verify))
        print(f"machine: {machine('cpu')}")
        print(f"dataset: {data} ({shards} shards, {total_bytes(manifest) / 1e6:.1f} MB)")
        print(
            f"sha256 pass alone: {hashing:.2f} s ({total_bytes(manifest) / hashing / 1e6:.0f} MB/s)"
        )
        for label, values in times.items():
            runs = ", ".join(f"{value:.1f}" for value in values)
            print(f"{label}: launch to first step {min(values):.1f} s (best of {runs})")


if __name__ == "__main__":
    main()
