"""Opening a prepared dataset re-checks its manifest; decoding rows to model input is exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.data import decode_pixels, open_prepared
from pipeline.datasets import synthetic
from pipeline.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(3)
    (root / "in").mkdir()
    for name, count in (("data_batch_1", 20), ("test_batch", 6)):
        data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        synthetic.write_cifar_binary(root / "in" / f"{name}.bin", data, np.arange(count) % 10)
    argv = ["cifar10", "--input", str(root / "in"), "--output", str(root / "ds")]
    assert main(["prepare", *argv, "--shard-size", "8"]) == 0
    return root / "ds"


@pytest.fixture
def copy(prepared, tmp_path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "ds"))


def test_open_prepared_reads_shape_levels_splits_and_counts(prepared):
    dataset = open_prepared(str(prepared))
    assert (dataset.height, dataset.width, dataset.channels, dataset.levels) == (32, 32, 3, 256)
    assert dataset.splits == ("train", "test")
    assert (dataset.count("train"), dataset.count("test")) == (20, 6)
    assert [Path(p).name for p in dataset.shard_paths("train")] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    with pytest.raises(DataError, match="no split 'val'"):
        dataset.count("val")
    by_uri = open_prepared(prepared.as_uri())  # file://...; s3:// and gs:// take the same path
    assert by_uri.shard_paths("test") == dataset.shard_paths("test")


def test_missing_shard(copy):
    (copy / "train" / "part-00001.parquet").unlink()
    with pytest.raises(DataError, match=r"train/part-00001.parquet: missing"):
        open_prepared(str(copy))
    with pytest.raises(DataError, match="missing"):
        open_prepared(str(copy), verify_checksums=False)


def test_altered_shard_same_size(copy):
    path = copy / "test" / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    open_prepared(str(copy))  # the cheap start checks presence and sizes only
    with pytest.raises(DataError, match=r"test/part-00000.parquet: sha256 differs"):
        open_prepared(str(copy), verify_checksums=True)


def test_verify_command_names_the_altered_shard(copy, capsys):
    assert main(["verify", str(copy)]) == 0
    assert "every sha256 matches" in capsys.readouterr().out
    path = copy / "train" / "part-00001.parquet"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x01  # one bit of one byte: same size
    path.write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("pixelrnn: error: ")
    assert error.endswith("train/part-00001.parquet: sha256 differs from the manifest; the shard "
                          "was altered")  # fmt: skip


def test_truncated_shard(copy):
    path = copy / "train" / "part-00002.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"part-00002.parquet: \d+ bytes, the manifest says"):
        open_prepared(str(copy), verify_checksums=False)


def test_bad_manifests(copy, tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json: not found"):
        open_prepared(str(tmp_path / "nowhere"))
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: unreadable"):
        open_prepared(str(copy))
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "levels"}))
    with pytest.raises(DataError, match=r"missing \['levels'\]"):
        open_prepared(str(copy))
    manifest["splits"]["train"]["shards"][0]["path"] = "../../etc/passwd"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="outside the dataset"):
        open_prepared(str(copy))


def test_decode_pixels_literal():
    image = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 3, 2)  # (H=2, W=3, C=2)
    batch = {
        "image": np.array([image.tobytes(), (image + 100).tobytes()], dtype=object),
        "label": np.array([4, -1]),
        "index": np.array([10, 11]),
    }
    decoded = decode_pixels(batch, shape=(2, 3, 2))
    assert decoded["pixels"].shape == (2, 2, 2, 3) and decoded["pixels"].dtype == np.uint8
    assert decoded["pixels"][0, 0].tolist() == [[0, 2, 4], [6, 8, 10]]  # channel 0, H x W
    assert decoded["pixels"][1, 1].tolist() == [[101, 103, 105], [107, 109, 111]]
    assert decoded["label"].tolist() == [4, -1] and decoded["label"].dtype == np.int64
    assert decoded["index"].tolist() == [10, 11]
