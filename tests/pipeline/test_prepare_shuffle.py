"""The external shuffle behind `prepare`: rows come back in key order, whatever the bucket size."""

from __future__ import annotations

import numpy as np

from pipeline.datasets.shuffle import ExternalShuffle, shuffle_keys

SHAPE = (2, 2, 3)
ROWS, CHUNK = 500, 37


def spill(folder, max_bucket_bytes: int) -> tuple[ExternalShuffle, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (ROWS, *SHAPE), dtype=np.uint8)
    buckets = ExternalShuffle(folder, SHAPE, seed=9, max_bucket_bytes=max_bucket_bytes)
    for first in range(0, ROWS, CHUNK):
        rows = np.arange(first, min(first + CHUNK, ROWS))
        split = "val" if first == 0 else "train"
        buckets.add(split, images[rows], rows % 10, rows.astype(np.int64))
    return buckets, images


def drained(buckets: ExternalShuffle, split: str) -> tuple[np.ndarray, ...]:
    parts = list(buckets.drain(split))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def test_rows_come_back_in_key_order_with_their_pixels_and_labels(tmp_path):
    buckets, images = spill(tmp_path / "b", max_bucket_bytes=1 << 20)
    pixels, labels, indices = drained(buckets, "train")
    expected = np.arange(CHUNK, ROWS)[np.argsort(shuffle_keys(9, np.arange(CHUNK, ROWS)))]
    np.testing.assert_array_equal(indices, expected)  # a permutation, ordered by key
    np.testing.assert_array_equal(pixels, images[indices])
    np.testing.assert_array_equal(labels, indices % 10)
    assert sorted(drained(buckets, "val")[2].tolist()) == list(range(CHUNK))
    assert not list((tmp_path / "b").iterdir())  # every bucket file removed once drained


def test_buckets_over_the_limit_are_split_again_with_the_same_result(tmp_path):
    small, _ = spill(tmp_path / "small", max_bucket_bytes=100)  # under 3 records of 36 bytes
    files = []
    original = small._drain_file

    def recording(path, level):
        files.append(level)
        return original(path, level)

    small._drain_file = recording
    large, _ = spill(tmp_path / "large", max_bucket_bytes=1 << 20)
    for got, want in zip(drained(small, "train"), drained(large, "train"), strict=True):
        np.testing.assert_array_equal(got, want)
    assert max(files) >= 1  # buckets were split at least once more
    assert sorted(drained(small, "val")[2].tolist()) == list(range(CHUNK))
    assert not list((tmp_path / "small").iterdir())


def test_keys_depend_on_seed_and_index_only():
    indices = np.array([0, 1, 2, 1_281_166], dtype=np.int64)
    np.testing.assert_array_equal(shuffle_keys(3, indices), shuffle_keys(3, indices))
    assert shuffle_keys(3, indices[2:])[0] == shuffle_keys(3, indices)[2]
    assert not np.array_equal(shuffle_keys(3, indices), shuffle_keys(4, indices))
    assert len(set(shuffle_keys(0, np.arange(100_000)).tolist())) == 100_000
