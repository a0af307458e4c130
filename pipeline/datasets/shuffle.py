"""External shuffle for `prepare`: each split's rows in a seeded random order, in bounded memory.

Shards written in the source's order keep its sorting (ImageNet's class folders: ~3 classes in
a batch of 1,000-class data). Every row gets a 64-bit key, a hash of (seed, its `index`), and
rows are written in key order, a uniformly random permutation that depends on the seed and the
source only (WebDataset's recipe: shuffle before writing shards):

- pass 1 (`add`): each row is appended, as one fixed-size record (key, index, label, pixels),
  to the bucket file of its split and of its key's top `FANOUT_BITS` bits;
- pass 2 (`drain`): bucket by bucket in key order, a bucket's records are loaded, sorted by key
  and handed on; a bucket over `max_bucket_bytes` is first split again by the key's next bits.

Memory is one source chunk in pass 1 and about twice `max_bucket_bytes` in pass 2; the buckets
take as much local disk as the split's raw pixels, freed bucket by bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

FANOUT_BITS = 6  # 64 bucket files per split and level
MAX_BUCKET_BYTES = 256 * 1024**2  # ImageNet 64x64's 1.28 M train images: ~250 MB per bucket
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def shuffle_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """uint64 (N,) keys of rows with `index` values int64 (N,): splitmix64 of (seed, index)."""
    base = np.random.SeedSequence([seed, 26]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        z = base + (indices.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


class ExternalShuffle:
    """Spills rows into bucket files under `folder`, then yields each split in key order."""

    def __init__(
        self, folder: Path, shape: tuple[int, int, int], seed: int,
        max_bucket_bytes: int = MAX_BUCKET_BYTES,
    ) -> None:  # fmt: skip
        self.folder, self.seed, self.max_bucket_bytes = folder, seed, max_bucket_bytes
        self.dtype = np.dtype([("key", "<u8"), ("index", "<i8"), ("label", "<i8"),
                               ("image", "u1", shape)])  # fmt: skip
        self.files: dict[tuple[str, int], BinaryIO] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, split: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        """Append images uint8 (N, H, W, C), labels (N,) and indices (N,) to `split`'s buckets."""
        if not len(images):
            return
        records = np.empty(len(images), self.dtype)
        records["key"] = shuffle_keys(self.seed, indices)
        records["index"], records["label"], records["image"] = indices, labels, images
        self._scatter(records, split, level=0, write=self._bucket_file)

    def drain(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`split`'s rows in key order, as (images (n, H, W, C), labels (n,), indices (n,))."""
        buckets = sorted(bucket for name, bucket in self.files if name == split)
        for bucket in buckets:
            self.files.pop((split, bucket)).close()
            yield from self._drain_file(self._path(split, bucket), level=0)

    def close(self) -> None:
        """Close any bucket file still open (after an error)."""
        for handle in self.files.values():
            handle.close()
        self.files.clear()

    def _drain_file(self, path: Path, level: int) -> Iterator[tuple[np.ndarray, ...]]:
        if path.stat().st_size > self.max_bucket_bytes and level * FANOUT_BITS < 64 - FANOUT_BITS:
            children: dict[int, BinaryIO] = {}
            rows_per_read = max(1, self.max_bucket_bytes // self.dtype.itemsize)
            with open(path, "rb") as source:
                while records := source.read(rows_per_read * self.dtype.itemsize):
                    chunk = np.frombuffer(records, self.dtype)
                    self._scatter(chunk, path.name, level + 1,
                                  write=lambda _, child: _child(children, path, child))  # fmt: skip
            path.unlink()
            for child in sorted(children):
                children[child].close()
                yield from self._drain_file(_child_path(path, child), level + 1)
            return
        records = np.fromfile(path, self.dtype)
        path.unlink()
        records = records[np.lexsort((records["index"], records["key"]))]
        yield records["image"], records["label"], records["index"]

    def _scatter(self, records: np.ndarray, split: str, level: int, write) -> None:
        """Append `records` to the bucket of their key bits at `level` (`write(split, bucket)`
        opens it)."""
        shift = np.uint64(64 - FANOUT_BITS * (level + 1))
        buckets = (records["key"] >> shift) & np.uint64((1 << FANOUT_BITS) - 1)
        order = np.argsort(buckets, kind="stable")
        records, buckets = records[order], buckets[order]
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        for start, end in zip(starts, [*starts[1:], len(records)], strict=True):
            write(split, int(buckets[start])).write(records[start:end].tobytes())

    def _bucket_file(self, split: str, bucket: int) -> BinaryIO:
        if (split, bucket) not in self.files:
            self.files[(split, bucket)] = open(self._path(split, bucket), "wb")  # noqa: SIM115
        return self.files[(split, bucket)]

    def _path(self, split: str, bucket: int) -> Path:
        return self.folder / f"{split}-{bucket:02d}.bin"


def _child_path(path: Path, child: int) -> Path:
    return path.with_name(f"{path.name}-{child:02d}")


def _child(children: dict[int, BinaryIO], path: Path, child: int) -> BinaryIO:
    if child not in children:
        children[child] = open(_child_path(path, child), "wb")  # noqa: SIM115
    return children[child]
