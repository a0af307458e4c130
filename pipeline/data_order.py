"""The order a split is trained on: global batches that are a function of (seed, epoch) alone.

MosaicML Streaming's "elastic determinism" on the Parquet shards `prepare` wrote in a seeded
random order of the whole source. Rows are named by their *sample id*, their number in the
split's shards concatenated in manifest order. For the training split, in each epoch:

1. the shards are permuted by a generator seeded with (seed, epoch) and their rows concatenated
   in that order: a row's *read position*;
2. read positions are cut into shuffle blocks of about `SHUFFLE_BLOCK_SHARDS` shards' worth of
   rows, a multiple of G = `train.batch_size`; a block of s·G rows is cut into G strata of s
   consecutive read positions, each permuted (the same generator), and its k-th global batch
   holds the k-th row of every stratum, in stratum order;
3. the last N mod G rows (< G, in the last block) sit the epoch out, the same ones for any
   worker count;
4. worker r of W trains on strata [r·G/W, (r+1)·G/W) of every global batch: its 1/W of each
   block's read positions, so it reads only about 1/W of the shards (plus the shards its part
   of a block starts and ends in), and the W workers together read each shard about once.

The set of rows in a global batch never depends on W; only which worker trains on which of
them does. Validation reads its split in manifest order, cut the same way but keeping the
last, partial batch (every row once). A position inside an epoch is a count of global samples
(k·G after k steps), which means the same rows for any W: a run resumes on another worker
count at the same sample (`RankOrder.after`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Shuffle blocks span about this many shards' worth of rows (32,768 rows of the default
# 2,048-row shards). A worker holds its share of one block's shards while it trains on it.
SHUFFLE_BLOCK_SHARDS = 16


@dataclass(frozen=True)
class RankOrder:
    """The rows one worker trains on in one epoch, step by step.

    Attributes:
        paths: shard paths relative to the dataset root, in the order they are first needed.
        rows: the manifest's row count of each of those shards.
        shard_of: int64 (n,) position in `paths` of each row's shard, in training order.
        row_of: int64 (n,) each row's number inside its shard.
        batch_sizes: int64 (steps,) this worker's rows in each step; they sum to n.
    """

    paths: tuple[str, ...]
    rows: tuple[int, ...]
    shard_of: np.ndarray
    row_of: np.ndarray
    batch_sizes: np.ndarray

    @property
    def steps(self) -> int:
        """Number of batches (optimizer steps, for training)."""
        return len(self.batch_sizes)

    def after(self, steps: int) -> RankOrder:
        """The same order without its first `steps` batches (already trained on), and without
        the shards only those batches read."""
        skipped = int(self.batch_sizes[:steps].sum())
        return _keep_shards(self.paths, self.rows, self.shard_of[skipped:],
                            self.row_of[skipped:], self.batch_sizes[steps:])  # fmt: skip

    def until(self, steps: int) -> RankOrder:
        """The first `steps` batches of this order, and only the shards they read."""
        kept = int(self.batch_sizes[:steps].sum())
        return _keep_shards(self.paths, self.rows, self.shard_of[:kept], self.row_of[:kept],
                            self.batch_sizes[:steps])  # fmt: skip


def _keep_shards(paths, rows, shard_of, row_of, batch_sizes) -> RankOrder:
    """A `RankOrder` of these rows, listing only the shards they are in, in first-use order."""
    keep, first = np.unique(shard_of, return_index=True)
    keep = keep[np.argsort(first)]
    renumber = np.full(len(paths), -1, dtype=np.int64)
    renumber[keep] = np.arange(len(keep))
    kept_paths, kept_rows = (tuple(column[s] for s in keep) for column in (paths, rows))
    return RankOrder(kept_paths, kept_rows, renumber[shard_of], row_of, batch_sizes)


def epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    """Seed of an epoch's shard permutation and block shuffle."""
    return np.random.SeedSequence([seed, epoch])


def global_order(
    shard_rows: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool
) -> np.ndarray:
    """The sample ids of one epoch in training order: global batch k is `[k·G, (k+1)·G)`.

    Args:
        shard_rows: int64 (shards,) rows of each shard, in manifest order.
        batch_size: G, rows per global batch.
        seed, epoch: with `shuffle`, the order is a function of these (and the shards) only.
        shuffle: permute as the module docstring says and drop the last N mod G rows (the
            training split); without it, every row once in manifest order (validation).

    Returns:
        int64 (S·G,), S = N // G, with `shuffle`, else (N,); each global batch sorted by read
        position.
    """
    shard_rows = np.asarray(shard_rows, dtype=np.int64)
    total = int(shard_rows.sum())
    if not shuffle:
        return np.arange(total, dtype=np.int64)
    generator = np.random.default_rng(epoch_seed(seed, epoch))
    shard_order = generator.permutation(len(shard_rows))
    starts = np.cumsum(shard_rows) - shard_rows  # (shards,) first sample id of each shard
    read_starts = np.cumsum(shard_rows[shard_order]) - shard_rows[shard_order]
    # sample id at each read position: read positions run through the permuted shards
    at_read = np.repeat(starts[shard_order] - read_starts, shard_rows[shard_order])
    at_read += np.arange(total)
    block = max(1, SHUFFLE_BLOCK_SHARDS * int(shard_rows.max(initial=1)) // batch_size)
    batches = []  # per block: (s, G) read positions
    for first in range(0, total, block * batch_size):
        stratum = min(block, (total - first) // batch_size)  # s rows per stratum
        strata = first + np.arange(batch_size * stratum).reshape(batch_size, stratum)  # (G, s)
        batches.append(generator.permuted(strata, axis=1).T)  # (s, G): batch k, row k of each
    positions = np.concatenate(batches) if batches else np.zeros((0, batch_size), np.int64)
    return at_read[positions.reshape(-1)]


def rank_rows(order: np.ndarray, batch_size: int, rank: int, world: int) -> tuple[np.ndarray, ...]:
    """Worker `rank`'s part of every global batch of `order`.

    Of a batch of m rows (m = G but for validation's last batch) the worker takes positions
    [rank·m // world, (rank+1)·m // world).

    Returns:
        (its sample ids int64 (n,), its rows per batch int64 (batches,)).
    """
    starts = np.arange(0, len(order), batch_size, dtype=np.int64)
    sizes = np.minimum(batch_size, len(order) - starts)
    low, high = starts + rank * sizes // world, starts + (rank + 1) * sizes // world
    counts = high - low
    take = np.repeat(low - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    return order[take], counts


def rank_orders(
    split: dict, *, ranks: list[int], world: int, batch_size: int, seed: int = 0,
    epoch: int = 0, shuffle: bool = True,
) -> list[RankOrder]:  # fmt: skip
    """The rows workers `ranks` of `world` train on in `epoch`, batch by batch.

    Args:
        split: the manifest's entry for the split ({"shards": [{"path", "rows"}, ...]}).
        ranks, world: these workers and the number of workers; `world` divides `batch_size`
            for training (`ExperimentConfig` checks it).
        batch_size: G, the global batch.
        seed, epoch, shuffle: as for `global_order` (computed once for all `ranks`).
    """
    shards = split["shards"]
    shard_rows = np.array([shard["rows"] for shard in shards], dtype=np.int64)
    order = global_order(shard_rows, batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    ends = np.cumsum(shard_rows)
    paths = tuple(entry["path"] for entry in shards)
    orders = []
    for rank in ranks:
        samples, sizes = rank_rows(order, batch_size, rank, world)
        shard = np.searchsorted(ends, samples, side="right")  # manifest position of each row
        row = samples - (ends - shard_rows)[shard]
        orders.append(_keep_shards(paths, tuple(shard_rows.tolist()), shard, row, sizes))
    return orders
