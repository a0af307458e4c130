"""Training-step and evaluation throughput of the paper's presets on this machine.

For each preset (CIFAR presets at 32x32, the MNIST preset at 28x28, batch 16 by default) this
prints images/s for a training step (forward + backward + RMSProp update) and for evaluation
(forward only), the FLOPs of one step counted by torch's FlopCounterMode, the achieved GFLOP/s
as a fraction of a large fp32 matmul measured in the same run (the machine's ceiling), and the
process's peak resident memory. Each preset runs in its own subprocess so peak memory is its own.

    python benchmarks/model_throughput.py [--presets NAME ...] [--batch 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pixelrnn_model import PRESETS, PixelRNN, bits_per_dim

DEFAULT_PRESETS = (
    "cifar10_row_lstm",
    "cifar10_diagonal_bilstm",
    "cifar10_pixelcnn",
    "mnist_diagonal_bilstm",
)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {platform.python_version()}"
    )


def matmul_gflops(size: int = 4096, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of a size x size matmul: the ceiling we compare against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure(preset: str, batch: int, steps: int) -> dict:
    """Throughput of one preset in this process."""
    cfg = PRESETS[preset]
    size = 28 if cfg.channels == 1 else 32
    torch.manual_seed(0)
    model = PixelRNN(cfg)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    pixels = torch.randint(0, cfg.levels, (batch, cfg.channels, size, size))

    def train_step() -> None:
        loss = bits_per_dim(model(pixels), pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        train_step()  # also the warm-up
    train_flops = counter.get_total_flops()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_seconds = (time.perf_counter() - start) / steps
    with torch.no_grad():
        model(pixels)
        start = time.perf_counter()
        for _ in range(steps):
            bits_per_dim(model(pixels), pixels)
        eval_seconds = (time.perf_counter() - start) / steps
    return {
        "preset": preset,
        "image": f"{size}x{size}x{cfg.channels}",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_images_per_s": batch / train_seconds,
        "eval_images_per_s": batch / eval_seconds,
        "train_gflops": train_flops / train_seconds / 1e9,
        "train_gflop_per_step": train_flops / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), choices=sorted(PRESETS)
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.steps)))
        return
    print(f"machine: {machine()}")
    ceiling = matmul_gflops()
    print(f"ceiling: 4096x4096 fp32 matmul {ceiling:.1f} GFLOP/s")
    print(f"batch {args.batch}, {args.steps} timed steps after one warm-up step, fp32, eager")
    columns = ("train img/s", "eval img/s", "GFLOP/step", "GFLOP/s", "of ceiling", "peak RSS")
    header = f"{'preset':26} {'image':>9} {'params':>7} " + " ".join(f"{c:>11}" for c in columns)
    print(header)
    for preset in args.presets:
        command = [
            sys.executable,
            __file__,
            "--child",
            preset,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
        ]
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
        print(
            f"{preset:26} {result['image']:>9} {result['parameters_m']:6.2f}M "
            f"{result['train_images_per_s']:11.2f} {result['eval_images_per_s']:11.2f} "
            f"{result['train_gflop_per_step']:11.1f} {result['train_gflops']:11.1f} "
            f"{result['train_gflops'] / ceiling:11.0%} {result['peak_rss_gb']:10.2f}G"
        )


if __name__ == "__main__":
    main()
