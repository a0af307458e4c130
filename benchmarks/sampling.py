"""Sampling speed: the naive sampler (one network pass per sub-pixel) against the cached one.

For each preset (CIFAR presets at 32x32, the MNIST preset at 28x28) and batch size, this prints
seconds per image and images per second of both samplers and the speed-up, all measured in one
run. The cached sampler is timed on whole images. The naive sampler takes hours per CIFAR image
on a small CPU, so it is timed on `--naive-steps` sub-pixel steps at each of a few rows (a naive
step at row i runs the network on rows 0..i, so its cost grows with i) and its per-image time is
extrapolated: the sum over all H*W*C steps of the step time interpolated linearly between the
timed rows. Where that estimate is below `--naive-full-seconds` per batch, the naive sampler is
also timed on whole images and that measurement is reported instead (a check of the estimate).

    .venv/bin/python benchmarks/sampling.py [--presets NAME ...] [--batches 1 16] [--threads 1]
                                            [--write]   # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from pixelrnn_model import PRESETS, PixelRNN, sample
from pixelrnn_model.sampling import draw, naive_steps

DEFAULT_PRESETS = (
    "cifar10_row_lstm",
    "cifar10_diagonal_bilstm",
    "cifar10_pixelcnn",
    "mnist_diagonal_bilstm",
)
RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model, cores, torch version and intra-op threads."""
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model")]
            cpu = next((name for name in names if not name.isdigit()), cpu)
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s); Python {platform.python_version()}"
    )


def cached_seconds(model: PixelRNN, n: int, size: int) -> float:
    """Seconds to draw a batch of n whole images with the cached sampler."""
    sample(model, n, 1, size)  # warm-up: allocator, kernels
    start = time.perf_counter()
    sample(model, n, size, size, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def naive_step_seconds(model: PixelRNN, n: int, size: int, row: int, steps: int) -> float:
    """Mean seconds of one naive sub-pixel step (pass + draw) at `row`, batch n."""
    cfg = model.config
    pixels = torch.zeros(n, cfg.channels, size, size, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    stepper = naive_steps(model, pixels, row)
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        i, j, c, logits = next(stepper)
        pixels[:, c, i, j] = draw(logits, 1.0, generator)
        timings.append(time.perf_counter() - start)
    return float(np.mean(timings[1:]))


def naive_seconds(model: PixelRNN, n: int, size: int, steps: int, full_limit: float) -> tuple:
    """(seconds per batch of n images, "measured" or "extrapolated") for the naive sampler."""
    rows = sorted({0, size // 3, 2 * size // 3, size - 1})
    per_step = [naive_step_seconds(model, n, size, row, steps) for row in rows]
    per_row = np.interp(np.arange(size), rows, per_step)  # (H,) seconds per step at row i
    estimate = float(per_row.sum()) * size * model.config.channels
    if estimate > full_limit:
        return estimate, "extrapolated"
    start = time.perf_counter()
    sample(model, n, size, size, generator=torch.Generator().manual_seed(0), method="naive")
    return time.perf_counter() - start, "measured"


def measure(preset: str, batch: int, steps: int, full_limit: float) -> dict:
    """One table row: both samplers on one preset and batch size."""
    cfg = PRESETS[preset]
    size = 28 if cfg.channels == 1 else 32
    torch.manual_seed(0)
    model = PixelRNN(cfg).eval()
    cached = cached_seconds(model, batch, size)
    naive, how = naive_seconds(model, batch, size, steps, full_limit)
    return {
        "preset": preset,
        "image": f"{size}x{size}x{cfg.channels}",
        "batch": batch,
        "naive_s": naive / batch,
        "naive_how": how,
        "cached_s": cached / batch,
        "speedup": naive / cached,
    }


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| preset | image | batch | naive s/image | naive images/s | cached s/image "
        "| cached images/s | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = "" if row["naive_how"] == "measured" else " *"
        lines.append(
            f"| {row['preset']} | {row['image']} | {row['batch']} | {row['naive_s']:,.1f}{mark} "
            f"| {1 / row['naive_s']:.2g}{mark} | {row['cached_s']:.2f} "
            f"| {1 / row['cached_s']:.2f} | {row['speedup']:,.0f}x |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) the `## Sampling` section of RESULTS.md, leaving the rest alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## Sampling\n\n{text.strip()}\n"
    pattern = re.compile(r"^## Sampling\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: section + "\n", old).rstrip() + "\n"
    else:
        new = old.rstrip() + "\n\n" + section
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, choices=sorted(PRESETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's)")
    parser.add_argument("--naive-steps", type=int, default=2, help="timed naive steps per row")
    parser.add_argument("--naive-full-seconds", type=float, default=60.0)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    print(f"Machine: {machine()}", flush=True)
    rows = []
    for preset in args.presets:
        for batch in args.batches:
            rows.append(measure(preset, batch, args.naive_steps, args.naive_full_seconds))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    header = (
        f"Machine: {machine()}; 1-minute load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the run. fp32, eager, `torch.no_grad`; each sampler's "
        f"first call is a warm-up. Cached: whole images timed. Naive: `*` = extrapolated from "
        f"{args.naive_steps} timed sub-pixel steps at each of rows 0, H/3, 2H/3 and H-1 (step "
        "time interpolated linearly over rows, times W*C steps per row); unmarked = whole "
        "images timed. Speed-up = naive / cached time, both from the same run."
    )
    result = f"{textwrap.fill(header, 100)}\n\n{table(rows)}"
    print(f"\n{result}")
    if args.write:
        write_section(f"`benchmarks/sampling.py` (issue 7).\n\n{result}")


if __name__ == "__main__":
    main()
