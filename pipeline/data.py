"""A prepared dataset's Parquet shards read as integer pixels, for training and evaluation.

`open_prepared` reads `manifest.json` and checks its shards are there
(`verify_checksums`: and their sha256). Training workers read their part of each global batch
with `read_in_order` (pyarrow, shards prefetched in the order `pipeline.data_order` needs them);
`evaluate` streams a split with Ray Data (`read_split`). Pixels are uint8 (C, H, W), whose
`.long()` is the int64 input of the model's 256-way (or, for binarized data, 2-way: `levels`)
softmax per sub-pixel (PixelRNN paper, section 2.2).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import torch

from pipeline.data_order import RankOrder, rank_orders
from pipeline.datasets.manifest import read_manifest, resolve, total_bytes, verify_shards
from pipeline.datasets.shards import images_of
from pipeline.errors import DataError

logger = logging.getLogger(__name__)
# Shards each training worker reads ahead of the batch it is on (and threads reading them).
PREFETCH_SHARDS = 2

# Rows a consumer of `read_split(shuffle=True)` keeps in a local shuffle buffer (training reads
# through `read_in_order` instead); 4096 rows of 64×64×3 stay under 50 MB.
LOCAL_SHUFFLE_BUFFER = 4096


@dataclass(frozen=True)
class PreparedDataset:
    """A verified prepared dataset: where it is, what its images look like, which splits exist.

    Attributes:
        root: local folder or `s3://` / `gs://` URI holding `manifest.json`.
        manifest: the parsed manifest.
        height, width, channels: image shape; batches are (B, channels, height, width).
        levels: distinct pixel values: 256, or 2 for binarized data.
        splits: the splits present, e.g. ("train", "val").
    """

    root: str
    manifest: dict
    height: int
    width: int
    channels: int
    levels: int
    splits: tuple[str, ...]

    @classmethod
    def from_manifest(cls, root: str, manifest: dict) -> PreparedDataset:
        """The dataset at `root` described by its (already verified) `manifest`."""
        height, width, channels = manifest["shape"]
        return cls(root=root, manifest=manifest, height=height, width=width, channels=channels,
                   levels=manifest["levels"], splits=tuple(manifest["splits"]))  # fmt: skip

    def count(self, split: str) -> int:
        """Number of images in `split`."""
        return self._split(split)["count"]

    def shard_paths(self, split: str) -> list[str]:
        """Filesystem paths (for `resolve(root)`'s filesystem) of the shards of `split`."""
        _, base = resolve(self.root)
        return [f"{base}/{shard['path']}" for shard in self._split(split)["shards"]]

    def rank_orders(
        self, split: str, ranks: list[int], world: int, batch_size: int, seed: int, epoch: int,
        shuffle: bool,
    ) -> list[RankOrder]:  # fmt: skip
        """The rows workers `ranks` of `world` train on from `split` in `epoch`, in global
        batches of `batch_size` (see `pipeline.data_order`)."""
        return rank_orders(self._split(split), ranks=ranks, world=world, batch_size=batch_size,
                           seed=seed, epoch=epoch, shuffle=shuffle)  # fmt: skip

    def rank_order(
        self, split: str, rank: int, world: int, batch_size: int, seed: int, epoch: int,
        shuffle: bool,
    ) -> RankOrder:  # fmt: skip
        """`rank_orders` of one worker."""
        return self.rank_orders(split, [rank], world, batch_size, seed, epoch, shuffle)[0]

    def _split(self, split: str) -> dict:
        if split not in self.splits:
            raise DataError(f"{self.root}: no split {split!r} (this dataset has {self.splits})")
        return self.manifest["splits"][split]


def warn_if_unshuffled(dataset: PreparedDataset) -> None:
    """Log a warning when `prepare` wrote the shards in source order (before it shuffled)."""
    if "row_order" not in dataset.manifest["source"].get("options", {}):
        logger.warning(
            "%s: its shards hold the source's order (prepared by an older version), so a "
            "class-sorted source gives batches of few classes; prepare it again to shuffle it",
            dataset.root,
        )


def open_prepared(root: str, *, verify_checksums: bool = False) -> PreparedDataset:
    """Read `root/manifest.json` and check every shard it lists is there with its size.

    Args:
        root: local folder or `s3://` / `gs://` URI of a dataset written by `pixelrnn prepare`.
        verify_checksums: also compare each shard's sha256, with a progress bar over bytes
            (reads every byte once: ~15 GB for downsampled ImageNet 64x64). `prepare` checks
            them once at its end; `pixelrnn verify` and `--verify` do it on demand.

    Raises:
        DataError: missing or malformed manifest; a shard missing, resized or altered.
    """
    manifest = read_manifest(root)
    if verify_checksums:
        verify_with_progress(root, manifest)
    else:
        verify_shards(root, manifest, checksums=False)
    return PreparedDataset.from_manifest(root, manifest)


def verify_with_progress(root: str, manifest: dict, desc: str = "sha256") -> None:
    """`verify_shards` with checksums, showing a progress bar over the bytes read."""
    from tqdm import tqdm

    with tqdm(total=total_bytes(manifest), unit="B", unit_scale=True, desc=desc) as bar:
        verify_shards(root, manifest, checksums=True, progress=bar.update)


def verify_uploaded(root: str, manifest: dict) -> None:
    """After an upload: every shard of `manifest` read back from `root` matches its sha256."""
    verify_with_progress(root, manifest, desc="checking the upload")


def decode_pixels(
    batch: dict[str, np.ndarray], shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Decode shard rows to model input.

    Args:
        batch: {"image": (B,) bytes of H·W·C uint8 pixels, "label": (B,), "index": (B,)}.
        shape: (H, W, C) from the manifest.

    Returns:
        {"pixels": uint8 (B, C, H, W), "label": int64 (B,), "index": int64 (B,)}.
    """
    flat = np.frombuffer(b"".join(batch["image"]), dtype=np.uint8)
    images = flat.reshape(-1, *shape)  # (B, H, W, C)
    return {
        "pixels": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),  # (B, C, H, W)
        "label": np.asarray(batch["label"], dtype=np.int64),
        "index": np.asarray(batch["index"], dtype=np.int64),
    }


def read_split(
    dataset: PreparedDataset, split: str, *, shuffle: bool = False, seed: int | None = None
) -> ray.data.Dataset:
    """Stream one split as a Ray Dataset; nothing is materialised.

    Args:
        dataset: from `open_prepared`.
        split: e.g. "train".
        shuffle: randomise the shard (block) order, anew on every execution (epoch); combine
            with `iter_torch_batches(local_shuffle_buffer_size=LOCAL_SHUFFLE_BUFFER)`.
        seed: makes the sequence of per-epoch shard orders reproducible (None: random).

    Returns:
        Rows {"pixels": uint8 (C, H, W), "label": int64, "index": int64}.
    """
    filesystem, _ = resolve(dataset.root)
    paths = dataset.shard_paths(split)
    order = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle else None
    with _classic_parquet_reader():
        shards = ray.data.read_parquet(
            paths, filesystem=filesystem, shuffle=order, partitioning=None
        )
    shape = (dataset.height, dataset.width, dataset.channels)
    return shards.map_batches(decode_pixels, fn_kwargs={"shape": shape}, batch_format="numpy")


def read_in_order(
    dataset: PreparedDataset, order: RankOrder, prefetch: int = PREFETCH_SHARDS
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the batches of `order`, reading each of its shards once, with pyarrow.

    Shards are read in the order they are first needed by a pool of `prefetch` threads, up to
    `prefetch` shards beyond those the current batch needs; each is kept, decoded, until the
    last of its rows in `order` is yielded. With the block shuffle of `pipeline.data_order`
    a worker holds about its share of one block, SHUFFLE_BLOCK_SHARDS / W shards, plus the
    prefetched ones (docs/datasets.md gives the memory per worker).

    Args:
        dataset: from `open_prepared`; local folder or `s3://` / `gs://` URI.
        order: from `PreparedDataset.rank_order` (or its `after(steps)`).
        prefetch: shards read ahead, and threads reading them.

    Yields:
        {"pixels": uint8 (B, C, H, W), "index": int64 (B,)} as torch tensors, B = the order's
        batch sizes in turn (an empty batch is skipped).

    Raises:
        DataError: a shard that cannot be read, or whose rows differ from the manifest's count.
    """
    if not len(order.row_of):
        return
    ends = np.cumsum(order.batch_sizes)
    last_batch = np.zeros(len(order.paths), dtype=np.int64)  # last batch needing each shard
    np.maximum.at(last_batch, order.shard_of, np.repeat(np.arange(order.steps), order.batch_sizes))
    needed_by = np.maximum.accumulate(order.shard_of)[ends - 1]  # (steps,) highest shard so far
    pool = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="shard-reader")
    reads: dict[int, Future] = {}  # shards read or being read, until their last batch
    submitted = 0
    try:
        for batch, end in enumerate(ends.tolist()):
            while submitted < min(len(order.paths), int(needed_by[batch]) + 1 + prefetch):
                reads[submitted] = pool.submit(_read_shard, dataset, order, submitted)
                submitted += 1
            start = end - int(order.batch_sizes[batch])
            if start == end:  # validation's last batch, smaller than the worker count
                continue
            shards, rows = order.shard_of[start:end], order.row_of[start:end]
            pixels = np.empty((len(rows), dataset.height, dataset.width, dataset.channels),
                              dtype=np.uint8)  # fmt: skip
            index = np.empty(len(rows), dtype=np.int64)
            for shard in np.unique(shards).tolist():
                images, indices = reads[shard].result()
                mine = shards == shard
                pixels[mine] = images[rows[mine]]  # (b, H, W, C)
                index[mine] = indices[rows[mine]]
                if last_batch[shard] == batch:
                    del reads[shard]  # all its rows are in this batch or earlier ones
            yield {"pixels": torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),  # (B, C, H, W)
                   "index": torch.from_numpy(index)}  # fmt: skip
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_shard(
    dataset: PreparedDataset, order: RankOrder, shard: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shard `shard` of `order`: images uint8 (rows, H, W, C) and `index` int64 (rows,)."""
    filesystem, base = resolve(dataset.root)
    path = order.paths[shard]
    where = f"{dataset.root.rstrip('/')}/{path}"
    try:
        table = pq.read_table(f"{base}/{path}", columns=["image", "index"], filesystem=filesystem)
    except (OSError, pa.ArrowException) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DataError(f"{where}: unreadable shard ({message})") from None
    if table.num_rows != order.rows[shard]:
        raise DataError(f"{where}: {table.num_rows} rows, the manifest says {order.rows[shard]}")
    shape = (dataset.height, dataset.width, dataset.channels)
    return images_of(table["image"], shape), table["index"].to_numpy()


def index_values(dataset: PreparedDataset, order: RankOrder) -> np.ndarray:
    """The `index` value of every row of `order`, int64 (n,), reading only `index` columns
    (`PREFETCH_SHARDS` * 4 at a time)."""
    filesystem, base = resolve(dataset.root)

    def column(path: str) -> np.ndarray:
        table = pq.read_table(f"{base}/{path}", columns=["index"], filesystem=filesystem)
        return table["index"].to_numpy()

    with ThreadPoolExecutor(max_workers=4 * PREFETCH_SHARDS) as pool:
        columns = list(pool.map(column, order.paths))
    values = np.zeros(len(order.row_of), dtype=np.int64)
    for shard, indices in enumerate(columns):
        mine = order.shard_of == shard
        values[mine] = indices[order.row_of[mine]]
    return values


@contextlib.contextmanager
def _classic_parquet_reader() -> Iterator[None]:
    """Plan `read_parquet` with Ray Data's file-based (V1) Parquet datasource.

    Ray 2.60's default V2 reader starts a pool of 32 footer-reading actors on every execution,
    which costs 4-6 s per epoch on a 2-core machine (V1: ~0.3 s) and logs spurious errors; V1
    also reshuffles the file order per execution. The flag is read only when the read is
    planned, so it is restored right after.
    """
    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        yield
    finally:
        context.use_datasource_v2 = previous
