"""What every source reader hands the shard writer: a plan of read units yielding image chunks.

A source module turns the files a user downloaded into a `SourcePlan`; `prepare.py` streams the
plan's units one by one (bounded memory), so no reader ever holds more than one file's images.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

SPLITS = ("train", "val", "test")
UNLABELED = -1

Chunk = tuple[np.ndarray, np.ndarray]
"""`(images, labels)`: images uint8 (N, H, W, C) and labels int64 (N,), -1 when unlabeled."""


@dataclass(frozen=True)
class ReadUnit:
    """One piece of a source read in one go: a file, an archive member, or a run of image files.

    `name` is the path relative to the input that errors and the progress bar show; `read()`
    yields `Chunk`s in source order.
    """

    name: str
    split: str
    read: Callable[[], Iterator[Chunk]]
    num_files: int = 1


@dataclass(frozen=True)
class SourcePlan:
    """Everything `prepare` needs to know about a source before reading a single image.

    Attributes:
        source: the source name ("cifar10", "imagenet32", ...).
        layout: which published layout was found ("cifar-binary", "npz", "png-folders", ...).
        input: the input path as the user gave it.
        shape: (H, W, C) of every image.
        levels: distinct pixel values (256, or 2 for binarized data).
        units: what to read, in source order (defines the `index` column).
        input_root: folder the `input_files` names are relative to.
        input_files: files whose sizes and sha256 the manifest records (relative names).
        class_names: label names when the source has them.
        num_classes: labels lie in [0, num_classes); None for unlabeled sources.
    """

    source: str
    layout: str
    input: str
    shape: tuple[int, int, int]
    levels: int
    units: tuple[ReadUnit, ...]
    input_root: Path
    input_files: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None


def natural_key(name: str) -> list:
    """Sort key that puts `data_batch_10` after `data_batch_9`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def planar_to_hwc(flat: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Channel-planar rows (N, C·S·S) — all red, then green, then blue — to (N, S, S, C)."""
    planes = flat.reshape(-1, channels, size, size)  # (N, C, S, S)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))  # (N, S, S, C)


def check_labels(
    labels: np.ndarray, low: int, high: int, where: str, first_position: int = 0
) -> np.ndarray:
    """Labels (N,) as int64 after checking low <= label <= high; DataError names the first bad one.

    `first_position` is the position of `labels[0]` in its file, so the message points at the
    right record.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    bad = np.flatnonzero((labels < low) | (labels > high))
    if bad.size:
        raise DataError(
            f"{where}: label {int(labels[bad[0]])} at record {first_position + int(bad[0])} "
            f"is out of range {low}..{high}"
        )
    return labels.astype(np.int64)


def require_dir(path: Path, what: str) -> Path:
    """`path` when it is an existing folder, else a DataError saying what was expected there."""
    if not path.exists():
        raise DataError(f"{path}: not found (expected {what})")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected {what})")
    return path
