"""Training checkpoints: one atomically written `checkpoint.pt` per checkpoint folder, holding
the unwrapped model, optimizer, step/epoch and position inside the epoch (which drive the
schedule and the data order), time spent, config and RNG state; read back with
`torch.load(weights_only=True)`, so loading one never runs code. Retention is Ray Train's
`CheckpointConfig`, built in train.py: the best K epoch-end checkpoints by `CHECKPOINT_SCORE`
plus the latest of any kind (mid-epoch checkpoints score `MID_EPOCH_SCORE`, below every epoch end).

`export_weights` turns one into a published weights file: the same format without the optimizer
and RNG state, plus the digest of the dataset it was trained on; every loader here reads both, from
a local path or a URI (`s3://...`).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import storage
from pipeline.config import ExperimentConfig
from pipeline.errors import PixelRNNError
from pixelrnn_model import PixelRNN

CHECKPOINT_FILE = "checkpoint.pt"
SAMPLES_FILE = "samples.png"
SCORE_METRIC = "val/bits_per_dim"  # lower is better
# What Ray Train ranks checkpoints by: SCORE_METRIC at epoch ends; mid-epoch checkpoints, which
# have no validation score, get the largest float (JSON keeps it, unlike inf) so they rank last.
CHECKPOINT_SCORE = "checkpoint/score"
MID_EPOCH_SCORE = sys.float_info.max
POSITION_KEY = "checkpoint/samples_in_epoch"  # only in the reports of mid-epoch checkpoints
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Progress:
    """Where training stands: `epoch` epochs and `step` optimizer steps are complete.

    The first `samples_in_epoch` samples of the next epoch's global order (0-based index
    `epoch`; `pipeline.data_order`) are done too: a whole number of global batches, the same
    rows whatever the worker count (a mid-epoch checkpoint; 0 at epoch ends), and `meters`
    holds the training metrics' sums so far in that epoch. `seconds` is
    the wall-clock time the training loop has spent so far, over all restarts and resumes (what
    `train.max_minutes` counts); `budget_spent` says that budget ended training.
    """

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    budget_spent: bool = False
    samples_in_epoch: int = 0
    meters: tuple[float, ...] = ()  # with samples_in_epoch: the loop's `TrainMeter` totals


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    config: ExperimentConfig,
    metrics: dict[str, float] | None = None,
    image_shape: tuple[int, int, int] = (0, 0, 0),
) -> Path:
    """Write `directory/checkpoint.pt` atomically (temporary file, fsync, rename).

    Args:
        directory: an existing folder.
        model: the model, wrapped or not; its unwrapped state dict is saved.
        optimizer: its state (moments, step counts, learning rates).
        progress: completed epochs and steps, and the position inside the epoch.
        config: the experiment config, so the checkpoint alone rebuilds the model.
        metrics: the metrics reported with this checkpoint.
        image_shape: (C, H, W) of the training images, the default size for sampling.

    Returns:
        The checkpoint file's path.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        "seconds": progress.seconds,
        "budget_spent": progress.budget_spent,
        "samples_in_epoch": progress.samples_in_epoch,
        "meters": list(progress.meters),
        "config": config.to_dict(),
        "metrics": dict(metrics or {}),
        "image_shape": list(image_shape),
        "rng": _rng_state(),
    }
    path = Path(directory) / CHECKPOINT_FILE
    partial = path.with_name(f".{CHECKPOINT_FILE}.partial")
    with open(partial, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def load_checkpoint(location: str | Path) -> dict[str, Any]:
    """Read a checkpoint or weights file, or the `checkpoint.pt` inside a folder, onto the CPU.

    Args:
        location: a local path or a URI (`s3://bucket/run/epoch_0002`, `.../checkpoint.pt`).
    """
    location = str(location)
    if not storage.is_file(location):
        location = storage.join(location, CHECKPOINT_FILE)
    try:
        data = storage.read_bytes(location)
    except FileNotFoundError:
        raise PixelRNNError(f"{location}: no checkpoint file here") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise PixelRNNError(f"{location}: not a readable checkpoint ({message})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise PixelRNNError(f"{location}: not a pixelrnn checkpoint (format {FORMAT_VERSION})")
    return payload


# What a published weights file keeps of a checkpoint (optimizer and RNG state are training-only).
WEIGHTS_KEYS = ("format_version", "model", "config", "metrics", "image_shape", "epoch", "step")


def export_weights(
    checkpoint: str | Path, destination: Path, dataset_digest: str, **extra: Any
) -> Path:
    """Write a checkpoint's model, config, metrics and progress as one weights-only file.

    Args:
        checkpoint: a checkpoint folder or file (local path or URI).
        destination: the file to write (atomically).
        dataset_digest: sha256 of the `manifest.json` of the dataset it was trained on.
        extra: more facts to record (e.g. the split and value of a reference score).

    Returns:
        `destination`; `model_from_checkpoint(destination)` rebuilds the model from it.
    """
    payload = load_checkpoint(checkpoint)
    weights = {key: payload[key] for key in WEIGHTS_KEYS if key in payload}
    weights.update(dataset_digest=dataset_digest, **extra)
    partial = destination.with_name(f".{destination.name}.partial")
    torch.save(weights, partial)
    os.replace(partial, destination)
    return destination


def restore(
    directory: str | Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> Progress:
    """Load model (and optimizer, RNG) state from a checkpoint folder; None starts fresh.

    Returns:
        The progress stored in the checkpoint: training resumes at epoch `progress.epoch`.
    """
    if directory is None:
        return Progress()
    payload = load_checkpoint(directory)
    unwrap(model).load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if restore_rng:
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return Progress(
        epoch=payload["epoch"],
        step=payload["step"],
        seconds=float(payload.get("seconds", 0.0)),
        budget_spent=bool(payload.get("budget_spent", False)),
        samples_in_epoch=int(payload.get("samples_in_epoch", 0)),
        meters=tuple(float(value) for value in payload.get("meters", ())),
    )


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, with what it was trained on."""

    model: PixelRNN
    config: ExperimentConfig
    metrics: dict
    image_shape: tuple[int, int, int]  # (C, H, W); zeros if unknown


def model_from_checkpoint(path: str | Path) -> TrainedModel:
    """Rebuild the trained model, in eval mode, from a checkpoint or weights file alone (a local
    path or a URI)."""
    payload = load_checkpoint(path)
    config = ExperimentConfig.from_stored(payload["config"])
    model = PixelRNN(config.model)
    model.load_state_dict(payload["model"])
    shape = tuple(payload.get("image_shape", (0, 0, 0)))
    return TrainedModel(model.eval(), config, payload["metrics"], shape)  # type: ignore[arg-type]
