"""Which rows each DDP rank reads in an epoch, and in which order: a function of (seed, epoch).

Ray Data's `streaming_split` hands blocks to whichever rank asks first, so which rank read which
row, and in which order, changed from run to run with the same seed. Here the order is computed
before anything is read, from the manifest's shard row counts and the shards' `index` column:

1. the split's shards are permuted by a generator seeded with (seed, epoch);
2. their rows, concatenated in that order, are cut into `world` equal contiguous spans (the
   remainder, fewer than `world` rows, sits this epoch out); rank r reads span r, so each rank
   reads about 1/world of the shards, at most two of them partly;
3. inside its span a rank's rows are permuted in windows of `SHUFFLE_WINDOW` consecutive rows,
   seeded with (seed, epoch, rank).

Contiguous spans keep reads shard-local (a rank never scans the whole split); windows bound the
memory a reader needs to put rows in order. The order depends on `world`: a mid-epoch position is
only meaningful for the worker count that produced it. A checkpoint taken after b batches resumes
with `RankOrder.after(b * batch_size)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.datasets.manifest import resolve
from pipeline.errors import DataError

# Rows permuted together inside a rank's span: the same mixing as the former local shuffle
# buffer; 4096 rows of 64×64×3 stay under 50 MB per worker while a reader puts them in order.
SHUFFLE_WINDOW = 4096


@dataclass(frozen=True)
class RankOrder:
    """The rows one rank reads in one epoch, in the order it trains on them.

    Attributes:
        paths: shard paths (for the dataset's filesystem) this rank reads, in read order.
        indices: int64 (n,) the `index` value of each row, in training order.
        shard_of: int64 (n,) position in `paths` of the shard holding each row.
    """

    paths: tuple[str, ...]
    indices: np.ndarray
    shard_of: np.ndarray

    def after(self, rows: int) -> RankOrder:
        """The same order without its first `rows` rows (already trained on), and without the
        shards only those rows came from."""
        shard_of = self.shard_of[rows:]
        keep = np.unique(shard_of)  # sorted: read order is kept
        renumber = np.full(len(self.paths), -1, dtype=np.int64)
        renumber[keep] = np.arange(len(keep))
        paths = tuple(self.paths[position] for position in keep)
        return RankOrder(paths, self.indices[rows:], renumber[shard_of])


def epoch_seed(seed: int, epoch: int, rank: int = -1) -> np.random.SeedSequence:
    """Seed of an epoch's shard permutation (rank -1) or of one rank's window shuffle."""
    return np.random.SeedSequence([seed, epoch, rank + 1])


def rank_order(
    root: str,
    split: dict,
    *,
    rank: int,
    world: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> RankOrder:
    """The rows rank `rank` of `world` reads in `epoch`, in order.

    Args:
        root: the dataset's folder or URI (`PreparedDataset.root`).
        split: the manifest's entry for the split ({"shards": [{"path", "rows"}, ...]}).
        rank, world: this rank and the number of ranks.
        seed, epoch: with `shuffle`, the order is a function of these (and rank, world) only.
        shuffle: permute shards and windows, and give every rank the same number of rows (the
            training split); without it shards stay in order and every row is read once
            (validation).

    Raises:
        DataError: a shard's `index` column has another length than the manifest says, or
            repeats a value.
    """
    shards = split["shards"]
    rows = np.array([shard["rows"] for shard in shards], dtype=np.int64)
    order = np.arange(len(shards))
    if shuffle:
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(shards))
    ends = np.cumsum(rows[order])  # end of each shard in the concatenated rows
    total = int(ends[-1]) if len(ends) else 0
    if shuffle:
        per_rank = total // world
        start, stop = rank * per_rank, (rank + 1) * per_rank
    else:
        start, stop = rank * total // world, (rank + 1) * total // world
    filesystem, base = resolve(root)
    paths, indices, shard_of = [], [], []
    for position, shard in enumerate(order):
        first = int(ends[position] - rows[shard])
        lo, hi = max(start, first), min(stop, int(ends[position]))
        if lo >= hi:
            continue
        path = f"{base}/{shards[shard]['path']}"
        column = pq.read_table(path, columns=["index"], filesystem=filesystem)["index"]
        if len(column) != rows[shard]:
            raise DataError(f"{root}/{shards[shard]['path']}: {len(column)} rows, manifest says "
                            f"{rows[shard]}")  # fmt: skip
        indices.append(column.to_numpy()[lo - first : hi - first])
        shard_of.append(np.full(hi - lo, len(paths), dtype=np.int64))
        paths.append(path)
    indices_array = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    shard_array = np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int64)
    if len(np.unique(indices_array)) != len(indices_array):
        raise DataError(f"{root}: the `index` column repeats values within a split")
    if shuffle:
        generator = np.random.default_rng(epoch_seed(seed, epoch, rank))
        for window in range(0, len(indices_array), SHUFFLE_WINDOW):
            permutation = window + generator.permutation(
                min(SHUFFLE_WINDOW, len(indices_array) - window)
            )
            indices_array[window : window + len(permutation)] = indices_array[permutation]
            shard_array[window : window + len(permutation)] = shard_array[permutation]
    return RankOrder(tuple(paths), indices_array, shard_array)
