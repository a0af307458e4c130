"""Binarized MNIST (Larochelle & Murray 2011), the PixelRNN paper's section 5 MNIST data.

Official `.amat` text files (`binarized_mnist_{train,valid,test}.amat`: one image per line, 784
values `0`/`1` separated by spaces) or an `.npz` with `train` / `valid` / `test` arrays of 0/1,
shaped (N, 28, 28) or (N, 784). Images are stored as 0/1 pixels with levels=2, one channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.datasets import npz
from pipeline.datasets.base import UNLABELED, Chunk, ReadUnit, SourcePlan
from pipeline.errors import DataError

SIZE = 28
PIXELS = SIZE * SIZE  # 784
SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}
ROWS_PER_CHUNK = 10_000
AMAT_PATTERN = re.compile(r"binarized_mnist_(train|valid|test)\.amat")


def plan(input_path: Path) -> SourcePlan:
    """Plan reading binarized MNIST from `.amat` files or an `.npz`.

    Args:
        input_path: a folder of `binarized_mnist_*.amat` files, one such file, an `.npz` file,
            or a folder holding exactly one `.npz`.

    Returns:
        A plan yielding uint8 (28, 28, 1) images of 0/1 pixels, unlabeled; valid -> val.
    """
    if not input_path.exists():
        raise DataError(f"{input_path}: not found (expected binarized MNIST .amat files or .npz)")
    if input_path.is_dir():
        candidates = sorted(p for p in input_path.iterdir() if AMAT_PATTERN.fullmatch(p.name))
        if not candidates:
            candidates = sorted(input_path.glob("*.npz"))
            if len(candidates) != 1:
                raise DataError(
                    f"{input_path}: expected binarized_mnist_{{train,valid,test}}.amat files or "
                    f"exactly one .npz, found {len(candidates)} .npz files and no .amat"
                )
    else:
        candidates = [input_path]
    if candidates[0].suffix == ".npz":
        return _plan_npz(input_path, candidates[0])
    order = list(SPLIT_NAMES)
    candidates.sort(key=lambda p: order.index(_amat_split(p)))
    units = tuple(
        ReadUnit(name=str(p), split=SPLIT_NAMES[_amat_split(p)], read=partial(_read_amat, p))
        for p in candidates
    )
    return _plan(input_path, "amat", units, candidates)


def _plan_npz(input_path: Path, path: Path) -> SourcePlan:
    arrays = npz.npz_arrays(path)
    keys = [key for key in SPLIT_NAMES if key in arrays]
    if not keys:
        raise DataError(
            f"{path}: missing keys: expected some of 'train', 'valid', 'test' "
            f"(found {sorted(arrays)})"
        )
    for key in keys:
        shape = arrays[key].shape
        if len(shape) < 2 or shape[1:] not in ((SIZE, SIZE), (PIXELS,)):
            raise DataError(
                f"{path}: '{key}' has shape {shape}, expected (N, {SIZE}, {SIZE}) or (N, {PIXELS})"
            )
    units = tuple(
        ReadUnit(name=f"{path}:{key}", split=SPLIT_NAMES[key], read=partial(_read_npz, path, key))
        for key in keys
    )
    return _plan(input_path, "npz", units, [path])


def _plan(
    input_path: Path, layout: str, units: tuple[ReadUnit, ...], files: list[Path]
) -> SourcePlan:
    root = input_path if input_path.is_dir() else input_path.parent
    return SourcePlan(
        source="binarized_mnist",
        layout=layout,
        input=str(input_path),
        shape=(SIZE, SIZE, 1),
        levels=2,
        units=units,
        input_root=root,
        input_files=tuple(p.relative_to(root).as_posix() for p in files),
    )


def _amat_split(path: Path) -> str:
    match = AMAT_PATTERN.fullmatch(path.name)
    if not match:
        raise DataError(f"{path}: expected a file named binarized_mnist_{{train,valid,test}}.amat")
    return match.group(1)


def _read_npz(path: Path, key: str) -> Iterator[Chunk]:
    """Yield (images (n, 28, 28, 1) of 0/1, labels (n,) = -1) from one npz array."""
    where = f"{path}:{key}"
    for rows in npz.iter_rows(path, key, ROWS_PER_CHUNK):
        if rows.dtype.kind not in "biuf":
            raise DataError(f"{where}: dtype {rows.dtype}, expected 0/1 numbers")
        binary = np.isin(rows, (0, 1))
        if not binary.all():
            raise DataError(f"{where}: value {rows[~binary][0]} found, expected only 0 and 1")
        yield _chunk(rows.astype(np.uint8))


def _read_amat(path: Path) -> Iterator[Chunk]:
    """Yield (images (n, 28, 28, 1) of 0/1, labels (n,) = -1) from one `.amat` text file."""
    rows: list[np.ndarray] = []
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                rows.append(_parse_line(line, f"{path}: line {number}"))
            if len(rows) == ROWS_PER_CHUNK:
                yield _chunk(np.stack(rows))
                rows = []
    if rows:
        yield _chunk(np.stack(rows))


def _parse_line(line: bytes, where: str) -> np.ndarray:
    """784 values (784,) uint8 from one line; fast path for the official `0 1 0 ...` format."""
    text = line.rstrip(b"\r\n")
    raw = np.frombuffer(text, np.uint8)
    if raw.size == 2 * PIXELS - 1 and (raw[1::2] == ord(" ")).all():
        values = raw[::2] - ord("0")
        if (values <= 1).all():
            return values
    tokens = text.split()
    if len(tokens) != PIXELS:
        raise DataError(f"{where} has {len(tokens)} values, expected {PIXELS}")
    bad = [t for t in tokens if t not in (b"0", b"1")]
    if bad:
        raise DataError(f"{where} has value {bad[0].decode(errors='replace')!r}, expected 0 or 1")
    return (np.array(tokens) == b"1").astype(np.uint8)


def _chunk(rows: np.ndarray) -> Chunk:
    images = rows.reshape(-1, SIZE, SIZE, 1)  # (N, 28, 28, 1)
    return images, np.full(len(images), UNLABELED, dtype=np.int64)
