"""Streaming reads of `.npz` archives: array headers first, then rows in bounded chunks.

`np.load` would decompress a whole member (1.5 GB for one ImageNet-64 batch) at once; reading the
`.npy` header and then fixed-size row blocks from the zip member keeps memory at one block.
Pickled (object) arrays are refused, never unpickled.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.errors import DataError


@dataclass(frozen=True)
class NpzArray:
    """Header of one array in an npz: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype


def npz_arrays(path: Path) -> dict[str, NpzArray]:
    """Array name -> shape and dtype, reading only each member's `.npy` header."""
    arrays = {}
    with _errors(path), zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    name = info.filename.removesuffix(".npy")
                    arrays[name] = _read_header(member, f"{path}:{name}")
    return arrays


def iter_rows(path: Path, name: str, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """Yield array `name` of `path` as consecutive blocks of at most `rows_per_chunk` rows.

    Args:
        path: the npz file.
        name: the array inside it.
        rows_per_chunk: rows per yielded block along axis 0.

    Yields:
        Arrays (n, *shape[1:]) in the stored dtype, n <= rows_per_chunk.
    """
    where = f"{path}:{name}"
    with _member(path, name) as (member, header):
        total, row_shape = header.shape[0], header.shape[1:]
        row_bytes = header.dtype.itemsize * math.prod(row_shape)
        for first in range(0, total, rows_per_chunk):
            count = min(rows_per_chunk, total - first)
            data = member.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise DataError(f"{where}: array data ends early (row {first + 1} of {total})")
            yield np.frombuffer(data, header.dtype).reshape(count, *row_shape)


def load(path: Path, name: str) -> np.ndarray:
    """The whole array `name` of `path` (for small arrays such as labels), shape as stored."""
    blocks = list(iter_rows(path, name, rows_per_chunk=1 << 20))
    with _member(path, name) as (_, header):
        return np.concatenate(blocks) if blocks else np.empty(header.shape, header.dtype)


@contextmanager
def _member(path: Path, name: str) -> Iterator[tuple[IO[bytes], NpzArray]]:
    """Open `name`.npy inside `path`, positioned after its header; a 0-d array is refused."""
    with _errors(path), zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        header = _read_header(member, f"{path}:{name}")
        if not header.shape:
            raise DataError(f"{path}:{name}: expected an array with rows, found a scalar")
        yield member, header


def _read_header(member: IO[bytes], where: str) -> NpzArray:
    try:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(member)
    except ValueError as error:
        raise DataError(f"{where}: not a valid .npy array ({error})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds pickled Python objects; only plain arrays are read")
    if fortran_order and len(shape) > 1:
        raise DataError(f"{where}: Fortran-ordered arrays are not supported; save it C-ordered")
    return NpzArray(tuple(shape), dtype)


@contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except KeyError as error:
        raise DataError(f"{path}: no array {error} in the archive") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise DataError(f"{path}: not a readable npz archive ({error})") from None
