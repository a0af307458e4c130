"""Downsampled ImageNet 32×32 / 64×64 (PixelRNN paper, section 5) in both published layouts.

npz batches (Chrabaszcz et al. 2017): `train_data_batch_{1..10}.npz`, `val_data.npz`, keys
`data` uint8 (N, 3·S·S) channel-planar and `labels` 1..1000 (stored as 0..999). PNG folders
(the version the paper reports on): `train_SxS/` and `valid_SxS/`, unlabeled.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.datasets import npz
from pipeline.datasets.base import (
    Chunk,
    ReadUnit,
    SourcePlan,
    check_labels,
    natural_key,
    planar_to_hwc,
    require_dir,
)
from pipeline.datasets.images import exact_size, image_units, list_images
from pipeline.errors import DataError

NUM_CLASSES = 1000
ROWS_PER_CHUNK = 4096  # 48 MiB of 64x64 pixels per block
NPZ_SPLITS = {"train_data_batch_": "train", "val_data": "val"}


def plan(input_path: Path, size: int) -> SourcePlan:
    """Plan reading downsampled ImageNet at `size` (32 or 64) from `input_path`.

    Args:
        input_path: a folder holding the npz batches, or `train_SxS/` / `valid_SxS/` folders
            (or one of those folders itself).
        size: 32 for `imagenet32`, 64 for `imagenet64`.

    Returns:
        A plan yielding uint8 (size, size, 3) images; labels 0..999 (npz) or -1 (PNG).
    """
    root = require_dir(input_path, f"downsampled ImageNet {size}x{size} files")
    batches = sorted(
        (
            p.name
            for p in root.iterdir()
            if re.fullmatch(r"(train_data_batch_\d+|val_data)\.npz", p.name)
        ),
        key=natural_key,
    )
    if batches:
        return _plan_npz(input_path, root, batches, size)
    folders = {"train": f"train_{size}x{size}", "val": f"valid_{size}x{size}"}
    found = {s: root / f for s, f in folders.items() if (root / f).is_dir()}
    found |= {s: root for s, f in folders.items() if root.name == f}
    if not found:
        raise DataError(
            f"{root}: no downsampled ImageNet {size}x{size} files (expected train_data_batch_*.npz "
            f"/ val_data.npz, or the folders {folders['train']}/ and {folders['val']}/)"
        )
    units, names = [], []
    for split, folder in found.items():
        images = list_images(folder)
        if not images:
            raise DataError(f"{folder}: no PNG images found")
        prefix = "" if folder == root else f"{folder.name}/"
        units.extend(image_units(folder, images, split, exact_size(size), prefix=prefix))
        names.extend(prefix + name for name in images)
    return SourcePlan(
        source=f"imagenet{size}",
        layout="png-folders",
        input=str(input_path),
        shape=(size, size, 3),
        levels=256,
        units=tuple(units),
        input_root=root,
        input_files=tuple(names),
    )


def _plan_npz(input_path: Path, root: Path, batches: list[str], size: int) -> SourcePlan:
    units = tuple(
        ReadUnit(
            name=str(root / name),
            split=next(s for prefix, s in NPZ_SPLITS.items() if name.startswith(prefix)),
            read=partial(_read_npz, root / name, size),
        )
        for name in batches
    )
    return SourcePlan(
        source=f"imagenet{size}",
        layout="npz",
        input=str(input_path),
        shape=(size, size, 3),
        levels=256,
        units=units,
        input_root=root,
        input_files=tuple(batches),
        num_classes=NUM_CLASSES,
    )


def _read_npz(path: Path, size: int) -> Iterator[Chunk]:
    """Yield (images (n, S, S, 3), labels (n,) in 0..999) from one npz batch, in row blocks."""
    arrays = npz.npz_arrays(path)
    for key in ("data", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: missing key '{key}' (found {sorted(arrays)})")
    data, labels = arrays["data"], arrays["labels"]
    pixels = 3 * size * size
    if data.dtype != np.uint8 or len(data.shape) != 2 or data.shape[1] != pixels:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}; imagenet{size} expects uint8 "
            f"(N, {pixels})"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: 'labels' has shape {labels.shape}, expected ({data.shape[0]},)")
    all_labels = check_labels(npz.load(path, "labels"), 1, NUM_CLASSES, path) - 1
    first = 0
    for rows in npz.iter_rows(path, "data", ROWS_PER_CHUNK):
        yield planar_to_hwc(rows, 3, size), all_labels[first : first + len(rows)]
        first += len(rows)
