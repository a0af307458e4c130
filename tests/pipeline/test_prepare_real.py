"""The real CIFAR-10 and binarized MNIST (../shared/data) decode to their published statistics."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.data import open_prepared

CIFAR_MEAN = [125.3069, 122.9504, 113.8654]
CIFAR_STD = [62.9932, 62.0887, 66.7049]


def test_real_cifar10_binary(shared_data, tmp_path):
    source = shared_data / "cifar-10-batches-bin"
    output = tmp_path / "cifar"
    assert main(["prepare", "cifar10", "--input", str(source), "--output", str(output)]) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert list(manifest["splits"]) == ["train"] and train["count"] == 50_000
    assert train["channel_mean"] == pytest.approx(CIFAR_MEAN, abs=0.01)
    assert train["channel_std"] == pytest.approx(CIFAR_STD, abs=0.01)
    assert train["label_counts"] == {str(label): 5000 for label in range(10)}
    assert manifest["class_names"][0] == "airplane" and manifest["class_names"][9] == "truck"
    assert sum(shard["rows"] for shard in train["shards"]) == 50_000
    # The first and last records, decoded here straight from the official bytes.
    for batch, position, row in (("data_batch_1.bin", 0, 0), ("data_batch_5.bin", 9999, 49_999)):
        raw = np.fromfile(source / batch, np.uint8).reshape(10_000, 3073)[position]
        tables = (pq.read_table(output / shard["path"]) for shard in train["shards"])
        table = next(t for t in tables if row in t.column("index").to_pylist())
        offset = table.column("index").to_pylist().index(row)  # shards hold rows shuffled
        pixels = np.frombuffer(table.column("image")[offset].as_py(), np.uint8)
        np.testing.assert_array_equal(
            pixels.reshape(32, 32, 3), raw[1:].reshape(3, 32, 32).transpose(1, 2, 0)
        )
        assert table.column("label")[offset].as_py() == raw[0]
    assert open_prepared(str(output)).count("train") == 50_000


def test_real_binarized_mnist(shared_data, tmp_path):
    source = shared_data / "binarized_mnist" / "binarized_mnist_train_valid.npz"
    output = tmp_path / "mnist"
    assert (
        main(["prepare", "binarized_mnist", "--input", str(source), "--output", str(output)]) == 0
    )
    dataset = open_prepared(str(output))
    assert (dataset.channels, dataset.height, dataset.width, dataset.levels) == (1, 28, 28, 2)
    assert dataset.splits == ("train", "val")
    assert (dataset.count("train"), dataset.count("val")) == (50_000, 10_000)
    with np.load(source) as arrays:
        for split, key in (("train", "train"), ("val", "valid")):
            shards = dataset.manifest["splits"][split]["shards"]
            tables = [pq.read_table(output / s["path"]) for s in shards]
            pixels = np.frombuffer(
                b"".join(b for t in tables for b in t["image"].to_pylist()), np.uint8
            )
            indices = np.concatenate([t["index"].to_numpy() for t in tables])
            first = 0 if split == "train" else 50_000  # `index` counts on through the file
            assert set(np.unique(pixels).tolist()) == {0, 1}
            np.testing.assert_array_equal(
                pixels.reshape(-1, 28, 28),
                arrays[key][indices - first],  # shards: shuffled
            )
            mean = dataset.manifest["splits"][split]["channel_mean"][0]
            assert mean == pytest.approx(arrays[key].mean(), abs=1e-6)
