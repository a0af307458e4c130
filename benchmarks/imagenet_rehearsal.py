"""Downsampled ImageNet at full size on a local S3 server: prepare, sample order, reader rate.

1. Writes a synthetic, class-sorted ImageNet 32x32 in the published npz layout
   (`train_data_batch_1..10.npz`: `--images` images, labels 1..1000 in ascending order as the
   class folders are; `val_data.npz`: 50,000), random pixels: incompressible, so the shards are
   as large as they get.
2. `pixelrnn prepare imagenet32 --output s3://...` against moto's S3 server (started here, as
   the tests do): wall time and the process's peak resident memory (VmHWM, polled).
3. The order: mean distinct classes in the first 200 global batches of 256 (epoch 1), and in
   one worker's 16 of them with 16 workers, beside a uniform shuffle's exact expectation.
4. Launch to first optimizer step of `pixelrnn train` on that S3 dataset
   (`launch_to_first_step.first_step_s`: the CIFAR-10 Row LSTM preset, 1 worker, batch 16).
5. The training reader's delivered images/s per worker with the model a no-op: W concurrent
   processes, each iterating its worker's batches of 16 from the epoch's start with
   `read_in_order` + `pixel_batches` (as `train.py` does) for `--seconds`; and its peak memory.
6. The same at 64x64 on a synthetic ImageNet 64x64 of `--images64` images (the per-worker rate
   depends on shard and block sizes, not on the split's length).
7. FLOPs per training image of the ImageNet presets (torch's FlopCounterMode, forward and
   backward) and the images/s an H200 would consume at its dense bf16 peak (989 TFLOP/s) and at
   40% of it: an estimate from FLOPs, not a GPU measurement.

    python benchmarks/imagenet_rehearsal.py [--images 1281167] [--images64 200000]
        [--workers 1 2] [--seconds 60] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from launch_to_first_step import first_step_s
from model_throughput import machine
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from s3_support import S3Server  # noqa: E402  (the tests' moto server, reused)

from pipeline.data import index_values, open_prepared, read_in_order  # noqa: E402
from pipeline.datasets import synthetic  # noqa: E402
from pipeline.engine import pixel_batches  # noqa: E402
from pixelrnn_model import PRESETS, PixelRNN, bits_per_dim  # noqa: E402

CLASSES, BATCHES, VAL_IMAGES = 1000, 10, 50_000
H200_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100/H200 SXM


def class_of(images: int) -> np.ndarray:
    """Labels 1..1000 of `images` rows sorted by class, as ImageNet's class folders are."""
    per_class = np.full(CLASSES, images // CLASSES)
    per_class[: images % CLASSES] += 1
    return np.repeat(np.arange(1, CLASSES + 1), per_class)


def write_source(folder: Path, images: int, size: int) -> np.ndarray:
    """The npz batches of a class-sorted synthetic ImageNet; returns the train labels (N,)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = class_of(images)
    bounds = np.linspace(0, images, BATCHES + 1).astype(int)
    parts = [(f"train_data_batch_{n + 1}", labels[bounds[n] : bounds[n + 1]]) for n in range(10)]
    parts.append(("val_data", rng.integers(1, CLASSES + 1, VAL_IMAGES)))
    for name, part in parts:
        data = rng.integers(0, 256, (len(part), 3 * size * size), dtype=np.uint8)  # planar rows
        synthetic.write_npz(folder / f"{name}.npz", data=data, labels=part)
    return labels


def prepare(source: Path, uri: str, size: int, env: dict) -> tuple[float, float]:
    """(seconds, peak resident GB) of `pixelrnn prepare imagenetS` into `uri`."""
    command = [sys.executable, "-m", "pipeline", "prepare", f"imagenet{size}", "--input",
               str(source), "--output", uri]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, high_water_gb(process.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        if process.returncode:
            log.seek(0)
            sys.exit(f"prepare failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return seconds, peak


def high_water_gb(pid: int | str = "self", field: str = "VmHWM") -> float:
    """The peak (VmHWM) or current (VmRSS) resident memory of a live process in GB; 0 once it
    has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024**2  # kB -> GB


def resident_gb() -> float:
    return high_water_gb("self", "VmRSS")


def uniform_distinct(counts: np.ndarray, batch: int) -> float:
    """Mean classes in `batch` rows drawn uniformly without replacement (exact)."""
    total = int(counts.sum())
    steps = np.arange(batch)
    absent = [np.prod((total - count - steps) / (total - steps)) for count in counts.tolist()]
    return float(len(counts) - sum(absent))


def order_check(uri: str, labels: np.ndarray) -> dict:
    """Distinct classes per global batch of 256 and per worker's 16 of it (16 workers)."""
    dataset = open_prepared(uri)
    started = time.perf_counter()
    whole = dataset.rank_order("train", 0, 1, 256, seed=0, epoch=0, shuffle=True)
    batches = min(200, whole.steps)
    values = index_values(dataset, whole)[: batches * 256].reshape(batches, 256)
    seconds = time.perf_counter() - started
    order = dataset.rank_order("train", 3, 16, 256, seed=0, epoch=0, shuffle=True)
    mine = index_values(dataset, order)[: batches * 16].reshape(batches, 16)
    counts = np.bincount(labels)[1:]
    return {
        "global": np.mean([len(np.unique(labels[row])) for row in values]),
        "global_uniform": uniform_distinct(counts, 256),
        "worker": np.mean([len(np.unique(labels[row])) for row in mine]),
        "worker_uniform": uniform_distinct(counts, 16),
        "order_seconds": seconds,
    }


def read_rate(uri: str, rank: int, world: int, seconds: float, results) -> None:
    """One worker's reader with a no-op model: (images/s, s to the first batch, resident GB
    before reading (imports), peak resident GB)."""
    torch.set_num_threads(1)
    dataset = open_prepared(uri)
    before = resident_gb()
    started = time.perf_counter()
    order = dataset.rank_order("train", rank, world, 16 * world, seed=0, epoch=0, shuffle=True)
    batches = pixel_batches(read_in_order(dataset, order))
    next(batches)
    first = time.perf_counter() - started
    images, begun = 0, time.perf_counter()
    for pixels in batches:  # the model would train on `pixels` here
        images += pixels.shape[0]
        if time.perf_counter() - begun > seconds:
            break
    rate = images / (time.perf_counter() - begun)
    results.put((rate, first, before, high_water_gb()))


def reader(uri: str, world: int, seconds: float) -> list[tuple[float, ...]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=read_rate, args=(uri, rank, world, seconds, results))
               for rank in range(world)]  # fmt: skip
    for worker in workers:
        worker.start()
    measured = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return measured


def flops_per_image(preset: str, size: int) -> float:
    """Forward + backward FLOPs of one training image (counted on the CPU, batch 1)."""
    cfg = PRESETS[preset]
    model = PixelRNN(cfg)
    pixels = torch.randint(0, cfg.levels, (1, cfg.channels, size, size))
    with FlopCounterMode(display=False) as counter:
        bits_per_dim(model(pixels), pixels).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_281_167, help="32x32 training images")
    parser.add_argument("--images64", type=int, default=200_000, help="64x64 training images")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=60.0, help="per reader measurement")
    parser.add_argument("--work", type=Path, help="where the scratch folder goes (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rehearsal-", dir=args.work))
    server = S3Server(work / "moto.log").start()
    ray_temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Unix socket paths
    os.environ.update(server.env, RAY_TMPDIR=ray_temp, MLFLOW_DISABLE_TELEMETRY="true",
                      RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")  # fmt: skip
    report = {"machine": machine("cpu"), "images": args.images, "images64": args.images64}
    try:
        bucket = server.bucket("rehearsal")
        for size, images in ((32, args.images), (64, args.images64)):
            started = time.perf_counter()
            labels = write_source(work / f"npz{size}", images, size)
            report[f"source{size}_s"] = time.perf_counter() - started
            uri = f"{bucket}/imagenet{size}"
            report[f"prepare{size}_s"], report[f"prepare{size}_gb"] = prepare(
                work / f"npz{size}", uri, size, {**os.environ, "TMPDIR": str(work)}
            )
            print(json.dumps(report), flush=True)
            if size == 32:
                report |= order_check(uri, labels)
                report["first_step_s"] = first_step_s(uri, work, "first", verify=False)
            for world in args.workers:
                report[f"reader{size}_w{world}"] = reader(uri, world, args.seconds)
            print(json.dumps(report), flush=True)
        for preset, size in (("imagenet32_row_lstm", 32), ("imagenet64_row_lstm", 64)):
            flops = flops_per_image(preset, size)
            report[f"{preset}_gflop"] = flops / 1e9
            report[f"{preset}_h200_peak"] = H200_BF16_FLOPS / flops
            report[f"{preset}_h200_40pct"] = 0.4 * H200_BF16_FLOPS / flops
    finally:
        server.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
