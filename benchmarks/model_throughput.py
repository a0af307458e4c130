"""Training-step and evaluation throughput of the paper's presets on this machine.

For each preset (CIFAR presets at 32x32, the MNIST preset at 28x28, batch 16 by default) this
prints images/s for a training step (forward + backward + RMSProp update) and for evaluation
(forward only), the FLOPs of one step counted by torch's FlopCounterMode, the achieved GFLOP/s
as a fraction of a large fp32 matmul measured in the same run (the machine's ceiling), and the
process's peak resident memory (GPU: peak allocated). Each preset and variant runs in its own
subprocess so peak memory is its own. Variants: `eager` (fp32, the model as trained), `bf16`
(autocast), `reference` (the per-step layers of benchmarks/reference_layers.py, the obvious
implementation, so the speed-up is a ratio measured in the same run) and `compiled`.

    python benchmarks/model_throughput.py [--presets NAME ...] [--variants ...] [--repeats N]
        [--device cuda]
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
from reference_layers import use_reference_layers
from torch.utils.flop_counter import FlopCounterMode

from pixelrnn_model import PRESETS, PixelRNN, bits_per_dim

DEFAULT_PRESETS = (
    "cifar10_row_lstm",
    "cifar10_diagonal_bilstm",
    "cifar10_pixelcnn",
    "mnist_diagonal_bilstm",
)


def machine(device: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    if device.startswith("cuda"):
        cpu = f"{torch.cuda.get_device_name(device)} (host: {cpu})"
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {platform.python_version()}"
    )


def matmul_gflops(device: str, size: int = 4096, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of a size x size matmul: the ceiling we compare against."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def make_model(preset: str, variant: str, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The preset's model for a variant ("eager", "bf16", "reference", "compiled") and a batch."""
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    model = PixelRNN(cfg).to(device)
    if variant == "reference":
        use_reference_layers(model)
    if variant == "compiled":
        model = torch.compile(model)
    return model


def measure(preset: str, variant: str, batch: int, steps: int, device: str) -> dict:
    """Throughput of one preset and variant in this process."""
    cfg = PRESETS[preset]
    size = 28 if cfg.channels == 1 else 32
    model = make_model(preset, variant, device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    pixels = torch.randint(0, cfg.levels, (batch, cfg.channels, size, size), device=device)
    precision = torch.bfloat16 if variant == "bf16" else torch.float32
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=variant == "bf16")

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step() -> None:
        with autocast:
            loss = bits_per_dim(model(pixels), pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        train_step()  # also the warm-up (and the compilation)
    train_flops = counter.get_total_flops()
    if variant == "reference":  # count the optimized model's useful work, not the padding
        with FlopCounterMode(display=False) as counter:
            PixelRNN(cfg).to(device)(pixels).sum().backward()
        train_flops = counter.get_total_flops()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_seconds = (time.perf_counter() - start) / steps
    with torch.no_grad(), autocast:
        model(pixels)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            bits_per_dim(model(pixels), pixels)
        sync()
        eval_seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 1024**3
    return {
        "preset": preset,
        "variant": f"{variant} {str(precision).removeprefix('torch.')}",
        "image": f"{size}x{size}x{cfg.channels}",
        "train_images_per_s": batch / train_seconds,
        "eval_images_per_s": batch / eval_seconds,
        "train_gflops": train_flops / train_seconds / 1e9,
        "train_gflop_per_step": train_flops / 1e9,
        "peak_gb": peak,
    }


def run_child(preset: str, variant: str, args: argparse.Namespace) -> dict | None:
    """`measure` in a fresh subprocess (so peak memory is its own); None, reported, if it fails."""
    command = [
        sys.executable,
        __file__,
        "--child",
        preset,
        variant,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        print(f"{preset:24} {variant:16} failed: {run.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), choices=sorted(PRESETS)
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager", "bf16", "reference"],
        choices=["eager", "bf16", "reference", "compiled"],
        help="eager fp32 (the model as trained), bf16 autocast, the per-step reference layers, "
        "torch.compile'd fp32",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every variant this many times, interleaved (round-robin), and report each "
        "variant's best train rate with the range seen: on a shared machine the best is the "
        "measurement least disturbed by other work",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, variant = args.child
        print(json.dumps(measure(preset, variant, args.batch, args.steps, args.device)))
        return
    print(f"machine: {machine(args.device)}")
    ceilings = [matmul_gflops(args.device)]
    print(
        f"batch {args.batch}, {args.steps} timed steps after one warm-up step, "
        f"{args.repeats} interleaved run(s) per variant (best kept)"
    )
    columns = ("train img/s", "eval img/s", "GFLOP/step", "GFLOP/s", "of ceiling", "peak mem")
    print(
        f"{'preset':24} {'variant':16} {'image':>8} "
        + " ".join(f"{c:>11}" for c in columns)
        + "  vs reference"
    )
    for preset in args.presets:
        variants = [
            v
            for v in args.variants
            # PixelCNN has no recurrence: its reference is itself
            if not (v == "reference" and PRESETS[preset].layer == "pixelcnn")
        ]
        results: dict[str, dict] = {}
        rates: dict[str, list[float]] = {v: [] for v in variants}
        for round_ in range(args.repeats):
            if round_:  # the ceiling is re-measured as often as the models, best kept
                ceilings.append(matmul_gflops(args.device))
            for variant in variants:
                result = run_child(preset, variant, args)
                if result is None:
                    continue
                rates[variant].append(result["train_images_per_s"])
                best = results.get(variant)
                if best is None or result["train_images_per_s"] > best["train_images_per_s"]:
                    results[variant] = result
        ceiling = max(ceilings)
        for variant, result in results.items():
            reference = results.get("reference")
            ratio = (
                (result["train_images_per_s"] / reference["train_images_per_s"])
                if reference
                else float("nan")
            )
            print(
                f"{preset:24} {result['variant']:16} {result['image']:>8} "
                f"{result['train_images_per_s']:11.2f} {result['eval_images_per_s']:11.2f} "
                f"{result['train_gflop_per_step']:11.1f} {result['train_gflops']:11.1f} "
                f"{result['train_gflops'] / ceiling:11.0%} {result['peak_gb']:10.2f}G "
                f"{ratio:10.2f}x"
                + (
                    f"  (train img/s over {len(rates[variant])} runs: "
                    f"{min(rates[variant]):.2f}-{max(rates[variant]):.2f})"
                    if args.repeats > 1
                    else ""
                )
            )
    print(
        f"ceiling: 4096x4096 fp32 matmul {max(ceilings):.1f} GFLOP/s on {args.device} "
        f"(best of {len(ceilings)} measurement(s), {min(ceilings):.1f}-{max(ceilings):.1f}); "
        "'of ceiling' above divides by the best measured before that preset's rows"
    )


if __name__ == "__main__":
    main()
