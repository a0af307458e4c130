"""Ray Data streams prepared splits pixel-exact, reshuffling the shard order every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli.main import main
from pipeline.data import LOCAL_SHUFFLE_BUFFER, open_prepared, read_split
from pipeline.datasets import synthetic

pytestmark = pytest.mark.ray
RNG = np.random.default_rng(11)
TRAIN = RNG.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
LABELS = RNG.integers(0, 10, 40)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ray-data")
    (root / "in").mkdir()
    synthetic.write_cifar_binary(root / "in" / "data_batch_1.bin", TRAIN, LABELS)
    argv = ["cifar10", "--input", str(root / "in"), "--output", str(root / "ds")]
    assert main(["prepare", *argv, "--shard-size", "8"]) == 0  # 5 shards
    return str(root / "ds")


def test_read_split_round_trip(ray_cluster, cifar_root):
    dataset = open_prepared(cifar_root)
    rows = read_split(dataset, "train").take_all()
    assert len(rows) == 40
    rows.sort(key=lambda row: row["index"])
    pixels = np.stack([row["pixels"] for row in rows])
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, TRAIN.transpose(0, 3, 1, 2))  # (N, C, H, W)
    assert [row["label"] for row in rows] == LABELS.tolist()


def test_shuffle_reorders_shards_every_epoch(ray_cluster, cifar_root):
    stream = read_split(open_prepared(cifar_root), "train", shuffle=True, seed=5)
    shard_orders = []
    for _ in range(3):
        indices = [i for b in stream.iter_batches(batch_size=None) for i in b["index"].tolist()]
        assert sorted(indices) == list(range(40))  # every image exactly once per epoch
        shard_orders.append(tuple(dict.fromkeys(i // 8 for i in indices)))
    assert len(set(shard_orders)) > 1, shard_orders


def test_torch_batches_for_the_trainer(ray_cluster, cifar_root):
    stream = read_split(open_prepared(Path(cifar_root).as_uri()), "train", shuffle=True)
    seen = {}
    for batch in stream.iter_torch_batches(
        batch_size=16, local_shuffle_buffer_size=LOCAL_SHUFFLE_BUFFER
    ):
        pixels = batch["pixels"].long()
        assert pixels.dtype == torch.int64 and pixels.shape[1:] == (3, 32, 32)
        for index, image in zip(batch["index"].tolist(), pixels, strict=True):
            seen[index] = image
    assert sorted(seen) == list(range(40))
    expected = torch.from_numpy(TRAIN.transpose(0, 3, 1, 2).astype(np.int64))
    assert torch.equal(torch.stack([seen[i] for i in range(40)]), expected)


def test_binarized_stream(ray_cluster, tmp_path):
    data = RNG.integers(0, 2, (6, 28, 28, 1), dtype=np.uint8)
    synthetic.write_amat(tmp_path / "binarized_mnist_valid.amat", data)
    output = Path(tmp_path / "ds")
    assert (
        main(["prepare", "binarized_mnist", "--input", str(tmp_path), "--output", str(output)]) == 0
    )
    dataset = open_prepared(str(output))
    assert (dataset.levels, dataset.channels, dataset.splits) == (2, 1, ("val",))
    [batch] = list(read_split(dataset, "val").iter_torch_batches(batch_size=6))
    order = batch["index"].argsort()
    assert batch["pixels"].shape == (6, 1, 28, 28)
    assert torch.equal(batch["pixels"][order], torch.from_numpy(data.transpose(0, 3, 1, 2)))
