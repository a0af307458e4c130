"""Pipeline overhead: the full Ray Data + Ray Train path vs a plain in-process PyTorch loop.

Both paths train the same model on the same prepared images with the same batch size, thread
count and code (`engine.train_epoch`), and both time from the first batch to the last step, so
the ratio isolates what the pipeline adds per step: streaming from Parquet through Ray Data,
the Ray Train worker and its report. Start-up (Ray, worker processes, MLflow) is reported
separately as wall-clock time. One Ray worker with one CPU is compared with one torch thread.
The paths alternate `--repeats` times and the best rate of each is kept, which filters out
interference from other jobs on a shared machine.

    pixelrnn prepare builtin --output data/builtin-32
    python benchmarks/pipeline_overhead.py [--models demo cifar10_pixelcnn ...] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline import data
from pipeline.config import ExperimentConfig, load_config, merge
from pipeline.engine import make_optimizer, train_epoch
from pixelrnn_model import PixelRNN

ROOT = Path(__file__).resolve().parents[1]
# Steps per measurement: enough for tens of seconds of training per path at each size.
MODELS = {"demo": 60, "cifar10_pixelcnn": 6, "cifar10_row_lstm": 4}


def experiment(model: str, data_path: str, steps: int, work: Path, run: str) -> ExperimentConfig:
    """One epoch of `steps` steps on 1 worker; no samples, a throwaway MLflow store."""
    base = load_config(ROOT / "experiments" / "demo.yaml") if model == "demo" else None
    layers = [base.to_flat() if base else {"preset": model}]
    layers.append({
        "data.path": data_path, "train.epochs": 1, "train.max_steps_per_epoch": steps,
        "train.max_val_batches": 1, "train.report_every_steps": 0, "scaling.num_workers": 1,
        "train.batch_size": 16,
        "train.storage_path": str(work / "runs"), "train.run_name": run,
        "tracking.tracking_uri": f"sqlite:///{work}/mlflow.db",
        "tracking.experiment_name": "overhead", "tracking.num_samples": 0,
    })  # fmt: skip
    return merge(layers)


def load_images(dataset: data.PreparedDataset, split: str) -> torch.Tensor:
    """Every image of a split, decoded in-process with pyarrow: uint8 (N, C, H, W)."""
    shape = (dataset.height, dataset.width, dataset.channels)
    parts = []
    for path in dataset.shard_paths(split):
        table = pq.read_table(path).to_pydict()
        batch = {key: np.asarray(values, dtype=object) for key, values in table.items()}
        parts.append(data.decode_pixels(batch, shape)["pixels"])
    return torch.from_numpy(np.concatenate(parts))


def plain_throughput(cfg: ExperimentConfig, images: torch.Tensor, steps: int) -> float:
    """images/s of `engine.train_epoch` over in-memory batches, one torch thread."""
    torch.set_num_threads(int(cfg.scaling.cpus_per_worker))
    torch.manual_seed(cfg.train.seed)
    model = PixelRNN(cfg.model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    size = cfg.batch_size_per_worker
    order = torch.randperm(images.shape[0])
    batches = (images[order[i * size : (i + 1) * size]].long() for i in range(steps))
    _, metrics = train_epoch(model, optimizer, batches, cfg.optim, lambda _: cfg.optim.lr, 0)
    return metrics["throughput/images_per_s"]


def ray_throughput(cfg: ExperimentConfig) -> tuple[float, float]:
    """(training images/s as the pipeline reports it, wall-clock seconds of the whole run)."""
    from pipeline.train import run_training

    started = time.perf_counter()
    summary = run_training(cfg)
    return summary.metrics["throughput/images_per_s"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data", default=str(ROOT / "data" / "builtin-32"))
    parser.add_argument("--steps", type=int, default=0, help="override steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path")
    args = parser.parse_args()
    dataset = data.open_prepared(args.data)
    images = load_images(dataset, "train")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            steps, plain, ray_rate, wall = args.steps or MODELS[model], 0.0, 0.0, 0.0
            for repeat in range(args.repeats):
                cfg = experiment(model, args.data, steps, Path(tmp), f"{model}-{repeat}")
                plain = max(plain, plain_throughput(cfg, images, steps))
                rate, seconds = ray_throughput(cfg)
                ray_rate, wall = max(ray_rate, rate), max(wall, seconds)
                print(f"{model}: plain {plain:.2f} img/s, Ray {rate:.2f} img/s", flush=True)
            rows.append((model, steps, plain, ray_rate, wall))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print("| model | steps × batch | plain loop (img/s) | Ray Data + Train (img/s) | "
          "Ray / plain | Ray run wall-clock, max (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for model, steps, plain, ray_rate, wall in rows:
        print(f"| {model} | {steps} × 16 | {plain:.2f} | {ray_rate:.2f} | "
              f"{ray_rate / plain:.3f} | {wall:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
