"""Input-pipeline throughput: `pixelrnn prepare` (images/s) and Ray Data streaming (images/s).

Builds source files in the official formats (CIFAR-10 binary at 32×32, downsampled-ImageNet npz
and PNG folders at 64×64; the real CIFAR-10 batches when ../shared/data is present), prepares
them, then streams each train split with block-order shuffling and the trainer's local shuffle
buffer into a consumer that turns every batch into int64 (B, C, H, W), as training does.
Prints a Markdown table for benchmarks/RESULTS.md. Synthetic pixels are uniform noise, the worst
case for Parquet's zstd compression.

    .venv/bin/python benchmarks/data_throughput.py [--images 20000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import ray_runtime
from pipeline.data import LOCAL_SHUFFLE_BUFFER, open_prepared, read_split
from pipeline.datasets import cifar, imagenet, synthetic
from pipeline.datasets.prepare import prepare
from pipeline.datasets.shards import DEFAULT_SHARD_ROWS

REAL_CIFAR = Path(os.environ.get("PIXELRNN_DATA_DIR", "../shared/data")) / "cifar-10-batches-bin"
BATCH_SIZE = 64


def build_sources(work: Path, count: int) -> dict[str, tuple[str, Path]]:
    """name -> (source, input path) of the source files to prepare."""
    rng = np.random.default_rng(0)
    sources = {}
    if REAL_CIFAR.is_dir():
        sources["cifar10 real, binary 32x32"] = ("cifar10", REAL_CIFAR)
    folder = work / "cifar-bin"
    folder.mkdir()
    for batch in range(0, count, 10_000):
        images = rng.integers(0, 256, (min(10_000, count - batch), 32, 32, 3), dtype=np.uint8)
        name = f"data_batch_{batch // 10_000 + 1}.bin"
        synthetic.write_cifar_binary(folder / name, images, rng.integers(0, 10, len(images)))
    sources["cifar10 synthetic, binary 32x32"] = ("cifar10", folder)
    folder = work / "imagenet64-npz"
    folder.mkdir()
    for batch in range(0, count, 10_000):
        images = rng.integers(0, 256, (min(10_000, count - batch), 64, 64, 3), dtype=np.uint8)
        path = folder / f"train_data_batch_{batch // 10_000 + 1}.npz"
        synthetic.write_imagenet_npz(path, images, rng.integers(1, 1001, len(images)))
    sources["imagenet64 synthetic, npz 64x64"] = ("imagenet64", folder)
    pngs = min(count, 5_000)
    images = rng.integers(0, 256, (pngs, 64, 64, 3), dtype=np.uint8)
    synthetic.write_pngs(work / "imagenet64-png" / "train_64x64", images)
    sources["imagenet64 synthetic, PNG folder 64x64"] = ("imagenet64", work / "imagenet64-png")
    return sources


def time_prepare(source: str, path: Path, output: Path) -> tuple[int, float]:
    """(train images, seconds) for preparing one source."""
    plan = cifar.plan(path) if source == "cifar10" else imagenet.plan(path, 64)
    start = time.perf_counter()
    manifest = prepare(plan, output, shard_rows=DEFAULT_SHARD_ROWS)
    return manifest["splits"]["train"]["count"], time.perf_counter() - start


def time_stream(root: Path, epochs: int) -> list[float]:
    """Images/s of each epoch streaming the train split into an int64-converting consumer."""
    stream = read_split(open_prepared(str(root)), "train", shuffle=True, seed=0)
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for batch in stream.iter_torch_batches(
            batch_size=BATCH_SIZE, local_shuffle_buffer_size=LOCAL_SHUFFLE_BUFFER
        ):
            seen += len(batch["pixels"].long())
        rates.append(seen / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="synthetic images per source")
    parser.add_argument("--epochs", type=int, default=3, help="streaming epochs (first = cold)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pixelrnn-bench-"))
    try:
        sources = build_sources(work, args.images)
        ray_runtime.connect(num_cpus=4, object_store_memory=512 * 1024**2, temp_dir=str(work / "r"))
        rows = []
        for number, (name, (source, path)) in enumerate(sources.items()):
            output = work / f"prepared-{number}"
            count, seconds = time_prepare(source, path, output)
            rates = time_stream(output, args.epochs)
            warm = rates[1:] or rates
            rows.append(
                f"| {name} | {count:,} | {count / seconds:,.0f} | {rates[0]:,.0f} | "
                f"{np.median(warm):,.0f} |"
            )
        print(
            f"cores: {os.cpu_count()}, Ray logical CPUs: 4, batch {BATCH_SIZE}, "
            f"local shuffle buffer {LOCAL_SHUFFLE_BUFFER}, shard {DEFAULT_SHARD_ROWS} rows\n"
        )
        header = ["source", "images", "prepare", "stream, 1st epoch", "stream, later epochs"]
        print("| " + " | ".join(header) + " |  (rates in images/s)")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(rows))
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
