"""Training steps of the presets on one CUDA GPU: eager, and the whole step as one CUDA graph.

For each preset at `--batch` images (16: the smallest batch of the paper), a training step is
forward + backward of bits/dim + gradient clipping + RMSProp, with no host sync inside:

- eager: ms per step (mean over `--steps` after warm-up steps, synchronized at the end), and
  host ms: the wall time Python takes to enqueue those steps before the synchronize (equal to
  the step time when the host is the bottleneck, much less when the GPU is).
- graph: the same step captured once with `torch.cuda.graph` (static batch, capturable
  RMSProp, autocast without its weight cache) and replayed; ms per step. Checked first: the
  captured step's loss equals an eager forward's loss on the same weights and batch.
- FLOPs of one step (`torch.utils.flop_counter.FlopCounterMode`) and the TFLOP/s each mode
  reaches.

The model code is whichever `pixelrnn_model` is first on the path, so the same script measures
an older version with `PYTHONPATH=folder-holding-its-pixelrnn_model`. One JSON object per line,
to stdout and to `--out`. Runs on a CPU too (`--device cpu`: eager only, for trying the script).

    python benchmarks/gpu_step.py [--batch 16] [--precision bf16|fp32] [--modes eager graph]
        [--presets NAME ...] [--steps N] [--out FILE] [--device cuda|cpu] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import traceback

import torch

import pixelrnn_model
from pixelrnn_model import PRESETS, PixelRNN, bits_per_dim

DEFAULT_PRESETS = (
    "cifar10_row_lstm",
    "cifar10_diagonal_bilstm",
    "cifar10_pixelcnn",
    "mnist_diagonal_bilstm",
    "imagenet32_row_lstm",
)


@dataclasses.dataclass
class Step:
    """A training step on a fixed batch: `run()` enqueues one and returns its loss (a tensor)."""

    model: torch.nn.Module
    pixels: torch.Tensor  # (B, C, H, W) int64, on the device
    optimizer: torch.optim.Optimizer
    bf16: bool

    def loss(self) -> torch.Tensor:
        """bits/dim of the batch: the forward under autocast (no weight cache: graph-safe)."""
        device = self.pixels.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.model(self.pixels)
        return bits_per_dim(logits, self.pixels)

    def run(self) -> torch.Tensor:
        loss = self.loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.optimizer.step()
        return loss


def build(preset: str, batch: int, device: torch.device, bf16: bool, tiny: bool) -> Step:
    cfg = PRESETS[preset]
    if tiny:  # the script's own trial on a CPU: h = 3, head 6
        cfg = dataclasses.replace(
            cfg, hidden_channels=3 * cfg.channels, head_channels=6 * cfg.channels
        )
    torch.manual_seed(0)
    model = PixelRNN(cfg).to(device)
    size = 28 if preset.startswith("mnist") else 32
    if tiny:
        size = 8
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, cfg.levels, (batch, cfg.channels, size, size), generator=generator)
    capturable = device.type == "cuda"
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5, capturable=capturable)
    return Step(model, pixels.to(device), optimizer, bf16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step: Step) -> float:
    """FLOPs of one training step's forward and backward (the optimizer's are negligible)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step.loss().backward()
    step.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_eager(step: Step, steps: int, warmup: int) -> dict:
    device = step.pixels.device
    for _ in range(warmup):
        step.optimizer.zero_grad(set_to_none=True)
        step.run()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step.optimizer.zero_grad(set_to_none=True)
        loss = step.run()
    enqueued = time.perf_counter() - start
    sync(device)
    total = time.perf_counter() - start
    return {
        "ms": 1e3 * total / steps,
        "host_ms": 1e3 * enqueued / steps,
        "loss": loss.item(),
    }


def time_graph(step: Step, steps: int, warmup: int) -> dict:
    """Capture one whole step (the warm-up steps run on a side stream, as CUDA graphs need),
    check its loss against an eager forward, then time replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 3)):
            step.optimizer.zero_grad(set_to_none=True)
            step.run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    step.optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.cuda.graph(graph):
        captured_loss = step.run()
    capture_s = time.perf_counter() - start
    with torch.no_grad():
        expected = step.loss().item()  # the weights the next replay starts from
    graph.replay()
    got = captured_loss.item()
    sync(step.pixels.device)
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    enqueued = time.perf_counter() - start
    sync(step.pixels.device)
    total = time.perf_counter() - start
    return {
        "ms": 1e3 * total / steps,
        "host_ms": 1e3 * enqueued / steps,
        "capture_s": capture_s,
        "loss": got,
        "eager_loss": expected,
        "loss_matches": math.isclose(got, expected, rel_tol=2e-2 if step.bf16 else 1e-4),
    }


def measure(args: argparse.Namespace, preset: str, mode: str) -> dict:
    device = torch.device(args.device)
    bf16 = args.precision == "bf16"
    step = build(preset, args.batch, device, bf16, args.tiny)
    flops = count_flops(step)
    timed = (time_eager if mode == "eager" else time_graph)(step, args.steps, args.warmup)
    images_per_s = args.batch / (timed["ms"] / 1e3)
    return {
        **timed,
        "images_per_s": images_per_s,
        "gflop_per_step": flops / 1e9,
        "tflop_per_s": flops / (timed["ms"] / 1e3) / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--modes", nargs="+", default=["eager", "graph"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="h = 3 and 8x8 images (a trial)")
    parser.add_argument("--label", default="", help="a name for this code version")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    header = {
        "label": args.label,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "batch": args.batch,
        "precision": args.precision,
        "model_code": pixelrnn_model.__file__,
    }
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (kept open: one line a row)
    for preset in args.presets:
        for mode in args.modes:
            if mode == "graph" and args.device != "cuda":
                continue
            row = {**header, "preset": preset, "mode": mode}
            try:
                row.update(measure(args, preset, mode))
            except Exception as error:  # one failure must not hide the other figures
                row["error"] = "".join(traceback.format_exception_only(error)).strip()[-600:]
                traceback.print_exc(file=sys.stderr)
            line = json.dumps(row)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
