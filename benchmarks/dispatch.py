"""Host overhead of a training step: aten ops dispatched, the tiny-width floor, full-size img/s.

Each figure is measured for two versions of `pixelrnn_model`: this checkout's and a baseline
commit's (extracted with `git archive` into a temporary folder), each in its own subprocess,
the two alternating round by round (one interleaved run, so both see the same machine state).

- ops: aten ops one training step (forward + backward of bits/dim, batch 1) dispatches, counted
  by a `TorchDispatchMode`; "kernels" leaves out views (no kernel launch on a GPU).
- tiny: the same training step with the preset's width cut to h=3 (head 6), batch 1, where
  nothing but dispatch costs time: best of `--repeats` steps, ms.
- full: the preset as built, training steps (forward + backward + RMSProp) at its batch size,
  images/s (best of `--repeats` steps after two warm-up steps).
- equal: float64 logits and gradients of the preset (2 images of 7x6, learned initial state),
  the "after" model loading the "before" model's state_dict strictly: largest differences.
- compile: the first training step of the torch.compile'd preset (batch 1), seconds, and the
  graph breaks dynamo counted.
- sample, sample24: the cached and naive samplers at 12x12, 1 image, the preset's depth at
  h=3 (head 6) and at h=24 (head 48), s/image.

    python benchmarks/dispatch.py [--baseline REV] [--rounds N] [--repeats N]
        [--what equal ops tiny full sample sample24 compile] [--presets NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = (
    "cifar10_row_lstm",
    "cifar10_diagonal_bilstm",
    "mnist_diagonal_bilstm",
    "cifar10_pixelcnn",
)
FULL_BATCH = {"cifar10_row_lstm": 8, "cifar10_diagonal_bilstm": 8, "mnist_diagonal_bilstm": 32}


def _pixels(cfg, batch: int, size: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.levels, (batch, cfg.channels, size, size), generator=generator)


def _model(preset: str, tiny: bool, hidden: int = 3):
    import torch

    from pixelrnn_model import PRESETS as ALL
    from pixelrnn_model import PixelRNN

    cfg = ALL[preset]
    if tiny:  # hidden = 3 (head 6): the tiny width; wider for the sampling comparison
        cfg = dataclasses.replace(
            cfg, hidden_channels=hidden * cfg.channels, head_channels=2 * hidden * cfg.channels
        )
    torch.manual_seed(0)
    return PixelRNN(cfg)


def _size(preset: str) -> int:
    return 28 if preset.startswith("mnist") else 32


def count_ops(preset: str) -> dict:
    """Aten ops (and those that are not views) of one training step of the full preset."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pixelrnn_model import bits_per_dim

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            self.kernels += not func.is_view
            return func(*args, **(kwargs or {}))

    model = _model(preset, tiny=False)
    pixels = _pixels(model.config, 1, _size(preset))
    bits_per_dim(model(pixels), pixels).backward()  # warm-up: caches, lazy initialisation
    model.zero_grad()
    with Counter() as counter:
        bits_per_dim(model(pixels), pixels).backward()
    return {"ops": counter.ops, "kernels": counter.kernels}


def time_steps(preset: str, tiny: bool, repeats: int) -> float:
    """Best seconds of a training step (tiny: forward + backward at batch 1; full: + RMSProp at
    the preset's benchmark batch)."""
    import torch

    from pixelrnn_model import bits_per_dim

    model = _model(preset, tiny)
    pixels = _pixels(model.config, 1 if tiny else FULL_BATCH[preset], _size(preset))
    optimizer = None if tiny else torch.optim.RMSprop(model.parameters(), lr=1e-4)
    best, warmup = float("inf"), 2  # warm-up: lazy initialisation, buffer pools, the heap
    for step in range(repeats + warmup):
        start = time.perf_counter()
        loss = bits_per_dim(model(pixels), pixels)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        best = min(best, time.perf_counter() - start) if step >= warmup else best
    return best


def time_sampling(preset: str, method: str, hidden: int) -> float:
    """Seconds to draw one 12x12 image with the preset's depth at width h = hidden (head 2h)."""
    import torch

    from pixelrnn_model.sampling import sample

    model = _model(preset, tiny=True, hidden=hidden)
    torch.manual_seed(0)
    start = time.perf_counter()
    sample(model, 1, 12, 12, seed=0, method=method)
    return time.perf_counter() - start


def compile_first_step(preset: str) -> dict:
    """Seconds of the first training step (forward + backward, batch 1) of the torch.compile'd
    preset, and the graph breaks dynamo reported (the scans are excluded from compilation)."""
    import torch
    import torch._dynamo

    from pixelrnn_model import bits_per_dim

    model = _model(preset, tiny=False)
    pixels = _pixels(model.config, 1, _size(preset))
    compiled = torch.compile(model)
    start = time.perf_counter()
    bits_per_dim(compiled(pixels), pixels).backward()
    seconds = time.perf_counter() - start
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return {"seconds": seconds, "graph_breaks": breaks}


def float64_pass(preset: str, state_file: str) -> dict:
    """The preset (learned initial state, random non-zero initial vectors) in float64 on 2
    images of 7x6: logits and every parameter's gradient of a float64 loss, with the weights in
    `state_file` (written by the first caller, loaded strictly by the others)."""
    import torch

    from pixelrnn_model import PRESETS as ALL
    from pixelrnn_model import PixelRNN

    cfg = dataclasses.replace(ALL[preset], learn_initial_state=True)
    torch.manual_seed(0)
    model = PixelRNN(cfg).double()
    if os.path.exists(state_file):
        model.load_state_dict(torch.load(state_file, weights_only=True), strict=True)
    else:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("initial_hidden", "initial_cell")):
                    parameter.normal_(std=0.5)
        torch.save(model.state_dict(), state_file)
    pixels = _pixels(cfg, 2, 7)[..., :6]
    logits = model(pixels)
    # A float64 loss (bits_per_dim computes in float32): logits times fixed random weights.
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits * upstream.double()).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    saved = f"{state_file}.{os.getpid()}.out"
    torch.save({"logits": logits.detach(), "grads": grads}, saved)
    return {"saved": saved}


def compare_float64(before: str, after: str) -> dict:
    """Largest absolute differences of logits and gradients between two `float64_pass` files."""
    import torch

    a, b = torch.load(before, weights_only=True), torch.load(after, weights_only=True)

    def relative(x, y) -> float:  # largest difference over the largest magnitude
        return ((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item()

    grads = [(a["grads"][k] - b["grads"][k]).abs().max().item() for k in a["grads"]]
    return {
        "logits": (a["logits"] - b["logits"]).abs().max().item(),
        "grads": max(grads),
        "relative": max(relative(a["grads"][k], b["grads"][k]) for k in a["grads"]),
        "largest": max(g.abs().max().item() for g in a["grads"].values()),
    }


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    if args.what == "ops":
        result = count_ops(args.preset)
    elif args.what == "compile":
        result = compile_first_step(args.preset)
    elif args.what == "equal":
        result = float64_pass(args.preset, os.environ["DISPATCH_STATE"])
    elif args.what.startswith("sample"):  # sample (tiny width) or sample24 (h = 24)
        hidden = int(args.what.removeprefix("sample") or 3)
        result = {m: time_sampling(args.preset, m, hidden) for m in ("cached", "naive")}
    else:
        result = {"seconds": time_steps(args.preset, args.what == "tiny", args.repeats)}
    print(json.dumps(result))


def extract(rev: str, folder: Path) -> Path:
    """The baseline's pixelrnn_model/ under folder (a PYTHONPATH root)."""
    archive = subprocess.run(
        ["git", "archive", rev, "pixelrnn_model"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def measure(
    root: Path, preset: str, what: str, repeats: int, threads: int, state: str = ""
) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), DISPATCH_STATE=state)
    command = [sys.executable, __file__, "--worker", "--preset", preset, "--what", what]
    command += ["--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
    if done.returncode:
        raise RuntimeError(f"{preset} {what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="e50ed63", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch_threads())
    parser.add_argument(
        "--what", nargs="+", default=["equal", "ops", "tiny", "full", "sample", "sample24"]
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.what = args.what[0] if isinstance(args.what, list) else args.what
        worker(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        roots = {"before": extract(args.baseline, Path(folder)), "after": ROOT}
        print(f"# {machine()}; baseline {args.baseline}; {args.threads} threads", flush=True)
        results: dict = {}
        for what in args.what:
            presets = [p for p in args.presets if what != "full" or p in FULL_BATCH]
            rounds = 1 if what in ("ops", "equal", "compile") else args.rounds
            for round_ in range(rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for preset in presets:
                    state = str(Path(folder) / f"{preset}.pt")
                    for version in order:
                        got = measure(
                            roots[version], preset, what, args.repeats, args.threads, state
                        )
                        results.setdefault((what, preset, version), []).append(got)
                        print(json.dumps([what, preset, version, got]), flush=True)
        report(results)


def report(results: dict) -> None:
    """Markdown tables: per figure, before, after and after/before (best over rounds)."""
    for (what, preset, version), got in sorted(results.items()):
        if version != "before":
            continue
        after = results[(what, preset, "after")]
        if what == "equal":
            diff = compare_float64(got[0]["saved"], after[0]["saved"])
            print(
                f"| float64 max abs difference | {preset} | logits {diff['logits']:.1e} | "
                f"gradients {diff['grads']:.1e} (relative {diff['relative']:.1e}; largest "
                f"gradient {diff['largest']:.1e}) | |"
            )
        elif what == "compile":
            b, a = got[0], after[0]
            print(
                f"| compiled first step s (graph breaks) | {preset} | {b['seconds']:.1f} "
                f"({b['graph_breaks']}) | {a['seconds']:.1f} ({a['graph_breaks']}) | |"
            )
        elif what == "ops":
            b, a = got[0], after[0]
            print(
                f"| ops | {preset} | {b['ops']:,} ({b['kernels']:,}) | "
                f"{a['ops']:,} ({a['kernels']:,}) | {a['ops'] / b['ops']:.3f} |"
            )
        elif what.startswith("sample"):
            for method in ("cached", "naive"):
                b = min(g[method] for g in got)
                a = min(g[method] for g in after)
                print(f"| {what} {method} s/img | {preset} | {b:.2f} | {a:.2f} | {a / b:.3f} |")
            b = min(g["naive"] for g in got) / min(g["cached"] for g in got)
            a = min(g["naive"] for g in after) / min(g["cached"] for g in after)
            print(f"| {what} naive/cached | {preset} | {b:.2f}x | {a:.2f}x | |")
        else:
            b = min(g["seconds"] for g in got)
            a = min(g["seconds"] for g in after)
            if what == "tiny":
                print(f"| tiny ms | {preset} | {b * 1e3:.1f} | {a * 1e3:.1f} | {a / b:.3f} |")
            else:
                batch = FULL_BATCH[preset]
                print(
                    f"| full img/s (batch {batch}) | {preset} | {batch / b:.2f} | "
                    f"{batch / a:.2f} | {b / a:.3f} (speed-up) |"
                )


def torch_threads() -> int:
    return min(os.cpu_count() or 1, 2)


def machine() -> str:
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}; {os.cpu_count()} cores; Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
