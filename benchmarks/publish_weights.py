"""Publish the Results runs' best checkpoints as weights files, with a score to check them by.

For each run of README's Results (benchmarks/results.sh) whose checkpoints are here, this writes
`weights/<run>.pt` (`pixelrnn export`: model, config, metrics, step, dataset manifest digest; no
optimizer) from the epoch-end checkpoint with the best validation bits/dim, and records in
`weights/reference_scores.json` what the file scores on the first `REFERENCE_IMAGES` validation
images of the real dataset (read straight from ../shared/data, the same images `prepare` puts
first in the val split). tests/pipeline/test_published_weights.py checks every file against it.

    python benchmarks/publish_weights.py [--runs mnist_diagonal_bilstm ...] [--results results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpointing import CHECKPOINT_FILE, SCORE_METRIC, load_checkpoint
from pipeline.engine import evaluate
from pixelrnn_model import PixelRNN

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
SCORES = WEIGHTS / "reference_scores.json"
REFERENCE_IMAGES = 300
# run name -> (dataset source, prepared dataset folder that benchmarks/results.sh writes)
RUNS = {
    "mnist_pixelcnn": ("binarized_mnist", "data/results/binarized-mnist"),
    "mnist_row_lstm": ("binarized_mnist", "data/results/binarized-mnist"),
    "mnist_diagonal_bilstm": ("binarized_mnist", "data/results/binarized-mnist"),
    "cifar10_pixelcnn": ("cifar10", "data/results/cifar10"),
    "cifar10_row_lstm": ("cifar10", "data/results/cifar10"),
    "cifar10_diagonal_bilstm": ("cifar10", "data/results/cifar10"),
}


def shared_data() -> Path:
    return Path(os.environ.get("PIXELRNN_DATA_DIR", ROOT.parent / "shared" / "data"))


def reference_images(source: str, shared: Path, count: int = REFERENCE_IMAGES) -> torch.Tensor:
    """The first `count` validation images of a real dataset, as the model sees them.

    binarized MNIST: the npz's `valid` array; CIFAR-10: `data_batch_5.bin`, the val split of
    benchmarks/results.sh. Returns int64 (N, C, H, W).
    """
    if source == "binarized_mnist":
        archive = np.load(shared / "binarized_mnist" / "binarized_mnist_train_valid.npz")
        images = archive["valid"][:count, None]  # (N, 1, 28, 28) in {0, 1}
    elif source == "cifar10":
        record = 1 + 3 * 32 * 32  # a label byte, then R, G and B planes
        raw = (shared / "cifar-10-batches-bin" / "data_batch_5.bin").read_bytes()[: count * record]
        images = np.frombuffer(raw, dtype=np.uint8).reshape(count, record)[:, 1:]
        images = images.reshape(count, 3, 32, 32)
    else:
        raise ValueError(f"no reference images for {source!r}")
    return torch.from_numpy(np.ascontiguousarray(images)).long()


def score(model: PixelRNN, images: torch.Tensor, batch: int = 50) -> dict[str, float]:
    """{"bits_per_dim", "nll_nats"} of `model` (eval mode, fp32) on `images` (N, C, H, W)."""
    with torch.no_grad():
        return evaluate(model, images.split(batch))


def best_checkpoint(run_dir: Path) -> Path:
    """The epoch-end checkpoint folder of `run_dir` with the lowest validation bits/dim."""
    scored = []
    for folder in sorted(run_dir.glob("epoch_*")):
        if (folder / CHECKPOINT_FILE).is_file():
            metrics = load_checkpoint(folder)["metrics"]
            if SCORE_METRIC in metrics:
                scored.append((metrics[SCORE_METRIC], folder))
    if not scored:
        sys.exit(f"{run_dir}: no scored checkpoint")
    return min(scored)[1]


def main() -> None:
    from pipeline.checkpointing import model_from_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results.sh output")
    args = parser.parse_args()
    scores = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    for run in args.runs:
        source, data = RUNS[run]
        run_dir = args.results / "runs" / run
        if not run_dir.is_dir():
            print(f"{run}: no checkpoints in {run_dir}; skipped")
            continue
        checkpoint, out = best_checkpoint(run_dir), WEIGHTS / f"{run}.pt"
        command = [sys.executable, "-m", "pipeline", "export", "--checkpoint", str(checkpoint),
                   "--data", str(ROOT / data), "--out", str(out)]  # fmt: skip
        subprocess.run(command, check=True)
        trained = model_from_checkpoint(out)
        figures = score(trained.model, reference_images(source, shared_data()))
        step = load_checkpoint(out)["step"]
        scores[run] = {"source": source, "images": REFERENCE_IMAGES, **figures,
                       "checkpoint": checkpoint.name, "step": step}  # fmt: skip
        print(f"{run}: {out.name} from {checkpoint.name}: {figures}")
    SCORES.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
