"""CIFAR-10 (PixelRNN paper, section 5) in both official layouts: binary and python batches.

Binary: each record is 1 label byte + 3,072 pixel bytes (1,024 red, then green, then blue, each
plane row-major 32×32). Python: pickled dicts whose `data` is (N, 3072) uint8 in the same
channel-planar order. Either may be an extracted folder or the `.tar.gz` as downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.datasets.archive import ArchiveFiles, FolderFiles, open_files
from pipeline.datasets.base import (
    Chunk,
    ReadUnit,
    SourcePlan,
    check_labels,
    natural_key,
    planar_to_hwc,
)
from pipeline.datasets.safe_pickle import safe_load
from pipeline.errors import DataError

SIZE, CHANNELS, NUM_CLASSES = 32, 3, 10
PIXELS = CHANNELS * SIZE * SIZE  # 3,072
RECORD_BYTES = 1 + PIXELS  # 3,073
RECORDS_PER_CHUNK = 10_000
LAYOUTS = {  # layout -> (batch file pattern, class-names file)
    "cifar-binary": (re.compile(r"(?:^|/)(data_batch_\d+|test_batch)\.bin$"), "batches.meta.txt"),
    "cifar-python": (re.compile(r"(?:^|/)(data_batch_\d+|test_batch)$"), "batches.meta"),
}


def plan(input_path: Path) -> SourcePlan:
    """Plan reading CIFAR-10 from a batches folder, its parent, or the downloaded archive.

    Args:
        input_path: `cifar-10-batches-bin/`, `cifar-10-batches-py/`, a folder holding one of
            them, or `cifar-10-binary.tar.gz` / `cifar-10-python.tar.gz`.

    Returns:
        A plan whose images are uint8 (32, 32, 3) and labels 0..9; `data_batch_*` form the
        train split and `test_batch` the test split.
    """
    files = open_files(input_path)
    layout, batches = _find_batches(files, input_path)
    folders = {Path(name).parent for name in batches}
    if len(folders) > 1:
        raise DataError(f"{input_path}: CIFAR-10 batches in several folders: {sorted(folders)}")
    read = _read_binary if layout == "cifar-binary" else _read_python
    units = tuple(
        ReadUnit(
            name=files.label(name),
            split="test" if Path(name).name.startswith("test_batch") else "train",
            read=partial(read, files, name),
        )
        for name in batches
    )
    meta_name = (folders.pop() / LAYOUTS[layout][1]).as_posix()
    class_names = _class_names(files, meta_name, layout) if meta_name in files.sizes else None
    archive = isinstance(files, ArchiveFiles)
    return SourcePlan(
        source="cifar10",
        layout=layout,
        input=str(input_path),
        shape=(SIZE, SIZE, CHANNELS),
        levels=256,
        units=units,
        input_root=input_path.parent if archive else input_path,
        input_files=(input_path.name,) if archive else (*batches, *_present(files, meta_name)),
        class_names=class_names,
        num_classes=NUM_CLASSES,
    )


def _find_batches(files: FolderFiles | ArchiveFiles, input_path: Path) -> tuple[str, list[str]]:
    """The layout found and its batch names in natural order (binary preferred over python)."""
    for layout, (pattern, _) in LAYOUTS.items():
        batches = sorted((n for n in files.sizes if pattern.search(n)), key=natural_key)
        if batches:
            return layout, batches
    raise DataError(
        f"{input_path}: no CIFAR-10 batches found (expected data_batch_1.bin ... or the "
        "python batches data_batch_1 ..., in a folder or a .tar.gz)"
    )


def _read_binary(files: FolderFiles | ArchiveFiles, name: str) -> Iterator[Chunk]:
    """Yield (images (n, 32, 32, 3), labels (n,)) from one binary batch, in record blocks."""
    where, size = files.label(name), files.sizes[name]
    if size == 0 or size % RECORD_BYTES:
        raise DataError(
            f"{where}: {size} bytes is not a whole number of {RECORD_BYTES}-byte records "
            f"(1 label byte + {PIXELS} pixel bytes); truncated, or not the CIFAR-10 binary version"
        )
    with files.open(name) as file:
        for first in range(0, size // RECORD_BYTES, RECORDS_PER_CHUNK):
            count = min(RECORDS_PER_CHUNK, size // RECORD_BYTES - first)
            data = file.read(count * RECORD_BYTES)
            if len(data) != count * RECORD_BYTES:
                raise DataError(
                    f"{where}: file ended early, at record {first + len(data) // RECORD_BYTES}"
                )
            records = np.frombuffer(data, np.uint8).reshape(count, RECORD_BYTES)
            labels = check_labels(records[:, 0], 0, NUM_CLASSES - 1, where, first)
            yield planar_to_hwc(records[:, 1:], CHANNELS, SIZE), labels


def _read_python(files: FolderFiles | ArchiveFiles, name: str) -> Iterator[Chunk]:
    """Yield (images (N, 32, 32, 3), labels (N,)) from one pickled python batch."""
    where = files.label(name)
    with files.open(name) as file:
        batch = _str_keys(safe_load(file, where), where)
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{where}: missing key '{key}' (found {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{where}: 'data' must be a uint8 array (N, {PIXELS})")
    if data.shape[1] != PIXELS or labels.shape != (data.shape[0],):
        raise DataError(
            f"{where}: 'data' has shape {data.shape} and 'labels' {labels.shape}; expected "
            f"(N, {PIXELS}) and (N,)"
        )
    yield planar_to_hwc(data, CHANNELS, SIZE), check_labels(labels, 0, NUM_CLASSES - 1, where)


def _str_keys(batch: object, where: str) -> dict:
    """A batch dict with str keys (Python 2 pickles may give bytes keys)."""
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict, found {type(batch).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _class_names(files: FolderFiles | ArchiveFiles, name: str, layout: str) -> tuple[str, ...]:
    """The ten class names from batches.meta.txt (binary) or batches.meta (python)."""
    with files.open(name) as file:
        if layout == "cifar-binary":
            names = [line.strip() for line in file.read().decode("utf-8").splitlines()]
        else:
            names = _str_keys(safe_load(file, files.label(name)), name).get("label_names", [])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names if n]
    if len(names) != NUM_CLASSES:
        raise DataError(f"{files.label(name)}: {len(names)} class names, expected {NUM_CLASSES}")
    return tuple(names)


def _present(files: FolderFiles | ArchiveFiles, name: str) -> tuple[str, ...]:
    return (name,) if name in files.sizes else ()
