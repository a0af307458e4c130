"""The epoch's data order: which rank reads which rows, in which order, from (seed, epoch) only."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import data_order
from pipeline.cli.main import main
from pipeline.data import open_prepared, read_in_order

IMAGES, SHARD_ROWS = 70, 9  # 8 shards, the last one short


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("order") / "ds"
    counts = [f"--train-images={IMAGES}", "--val-images=11", "--test-images=1"]
    argv = ["prepare", "builtin", "--output", str(root), "--size", "8", *counts]
    assert main([*argv, "--shard-size", str(SHARD_ROWS)]) == 0
    return open_prepared(str(root))


def orders(dataset, world: int, seed: int, epoch: int, shuffle: bool = True):
    split = "train" if shuffle else "val"
    return [dataset.rank_order(split, rank, world, seed, epoch, shuffle) for rank in range(world)]


def test_ranks_split_each_epoch_disjointly_and_equally(dataset):
    all_indices = set()
    for order in orders(dataset, world=3, seed=0, epoch=0):
        assert len(order.indices) == IMAGES // 3  # 70 // 3: one row sits the epoch out
        all_indices |= set(order.indices.tolist())
        assert len(order.paths) <= IMAGES // 3 // SHARD_ROWS + 2  # a span, not every shard
    assert len(all_indices) == 3 * (IMAGES // 3)
    val = orders(dataset, world=3, seed=0, epoch=0, shuffle=False)
    assert sorted(np.concatenate([o.indices for o in val]).tolist()) == sorted(
        set(np.concatenate([o.indices for o in val]).tolist())
    )
    assert sum(len(o.indices) for o in val) == 11  # validation reads every row once


def test_order_is_a_function_of_seed_and_epoch(dataset):
    first, again = orders(dataset, 2, seed=5, epoch=1), orders(dataset, 2, seed=5, epoch=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        assert a.paths == b.paths
    other_epoch = orders(dataset, 2, seed=5, epoch=2)
    other_seed = orders(dataset, 2, seed=6, epoch=1)
    assert not np.array_equal(first[0].indices, other_epoch[0].indices)
    assert not np.array_equal(first[0].indices, other_seed[0].indices)


def test_after_drops_rows_and_the_shards_only_they_came_from(dataset):
    (order,) = orders(dataset, 1, seed=0, epoch=0)
    rest = order.after(40)
    np.testing.assert_array_equal(rest.indices, order.indices[40:])
    assert set(rest.paths) == {order.paths[s] for s in order.shard_of[40:].tolist()}
    assert [rest.paths[s] for s in rest.shard_of] == [order.paths[s] for s in order.shard_of[40:]]


@pytest.mark.ray
def test_ray_data_reads_rows_in_exactly_that_order(ray_cluster, dataset, monkeypatch):
    monkeypatch.setattr(data_order, "SHUFFLE_WINDOW", 16)  # windows span several shards
    order = dataset.rank_order("train", 1, 2, seed=3, epoch=4, shuffle=True).after(5)
    batches = list(read_in_order(dataset, order, batch_size=4))
    assert [len(b["index"]) for b in batches] == [4] * 7 + [2]  # 35 - 5 rows left
    read = np.concatenate([b["index"].numpy() for b in batches])
    np.testing.assert_array_equal(read, order.indices)
    # The pixels are those of the rows named: the full read of every shard, by index.
    everything = {}
    for batch in dataset_rows(dataset):
        everything.update(zip(batch["index"].tolist(), batch["pixels"], strict=True))
    for batch in batches:
        for index, pixels in zip(batch["index"].tolist(), batch["pixels"].numpy(), strict=True):
            np.testing.assert_array_equal(pixels, everything[index])


def dataset_rows(dataset):
    from pipeline.data import read_split

    return read_split(dataset, "train").iter_batches(batch_size=None, batch_format="numpy")
