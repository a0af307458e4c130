"""`pixelrnn prepare` on small fixtures of every source format: exact round trips and manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.main import main
from pipeline.datasets import synthetic

RNG = np.random.default_rng(1234)


def images(count: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def prepare(*argv: str) -> dict:
    """Run `pixelrnn prepare ...`, insist on success, return the manifest."""
    args = ["prepare", *argv]
    assert main(args) == 0, args
    output = Path(args[args.index("--output") + 1])
    return json.loads((output / "manifest.json").read_text())


def read_back(output: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, H, W, C), labels, indices) of a split, read with plain pyarrow, in source
    order (by `index`: the shards hold the rows shuffled)."""
    manifest = json.loads((output / "manifest.json").read_text())
    shape = manifest["shape"]
    tables = [pq.read_table(output / s["path"]) for s in manifest["splits"][split]["shards"]]
    pixels = b"".join(b for t in tables for b in t.column("image").to_pylist())
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])
    indices = np.concatenate([t.column("index").to_numpy() for t in tables])
    order = np.argsort(indices)
    images = np.frombuffer(pixels, np.uint8).reshape(-1, *shape)
    return images[order], labels[order], indices[order]


@pytest.fixture(scope="module")
def cifar_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "data_batch_1": (images(7), RNG.integers(0, 10, 7)),
        "data_batch_2": (images(5), RNG.integers(0, 10, 5)),
        "test_batch": (images(3), RNG.integers(0, 10, 3)),
    }


def cifar_folder(root: Path, arrays: dict, binary: bool = True) -> Path:
    folder = root / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    for name, (batch, labels) in arrays.items():
        if binary:
            synthetic.write_cifar_binary(folder / f"{name}.bin", batch, labels)
        else:
            synthetic.write_cifar_python(folder / name, batch, labels)
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")
    return folder


def check_cifar(output: Path, arrays: dict) -> dict:
    manifest = json.loads((output / "manifest.json").read_text())
    train_images, train_labels, train_indices = read_back(output, "train")
    expected = np.concatenate([arrays["data_batch_1"][0], arrays["data_batch_2"][0]])
    np.testing.assert_array_equal(train_images, expected)
    np.testing.assert_array_equal(
        train_labels, np.concatenate([arrays["data_batch_1"][1], arrays["data_batch_2"][1]])
    )
    np.testing.assert_array_equal(train_indices, np.arange(12))
    test_images, test_labels, test_indices = read_back(output, "test")
    np.testing.assert_array_equal(test_images, arrays["test_batch"][0])
    np.testing.assert_array_equal(test_labels, arrays["test_batch"][1])
    np.testing.assert_array_equal(test_indices, np.arange(12, 15))
    assert manifest["shape"] == [32, 32, 3] and manifest["levels"] == 256
    assert manifest["num_classes"] == 10
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 12, "test": 3}
    train = manifest["splits"]["train"]
    assert train["channel_mean"] == pytest.approx(expected.reshape(-1, 3).mean(0), abs=1e-6)
    assert train["channel_std"] == pytest.approx(expected.reshape(-1, 3).std(0), abs=1e-6)
    labels, counts = np.unique(train_labels, return_counts=True)
    assert train["label_counts"] == {str(k): int(v) for k, v in zip(labels, counts, strict=True)}
    return manifest


def test_cifar_binary_folder(tmp_path, cifar_arrays):
    folder = cifar_folder(tmp_path / "in", cifar_arrays)
    manifest = prepare("cifar10", "--input", str(folder), "--output", str(tmp_path / "out"))
    check_cifar(tmp_path / "out", cifar_arrays)
    assert manifest["source"]["layout"] == "cifar-binary"
    assert manifest["class_names"][:2] == ["airplane", "automobile"]
    listed = {f["path"]: f for f in manifest["source"]["files"]["files"]}
    assert set(listed) == {
        "data_batch_1.bin",
        "data_batch_2.bin",
        "test_batch.bin",
        "batches.meta.txt",
    }
    batch = (folder / "data_batch_2.bin").read_bytes()
    assert listed["data_batch_2.bin"]["bytes"] == len(batch) == 5 * 3073
    assert listed["data_batch_2.bin"]["sha256"] == hashlib.sha256(batch).hexdigest()
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            data = (tmp_path / "out" / shard["path"]).read_bytes()
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            assert shard["bytes"] == len(data)
    assert manifest["tool"] == {"name": "pixelrnn", "version": "0.1.0"}


def test_cifar_binary_record_layout_is_channel_planar(tmp_path):
    """A hand-written record: label byte, then R, G and B planes, each row-major."""
    red = np.arange(1024) % 251
    record = bytes([7]) + bytes(red.tolist()) + bytes((250 - red).tolist()) + bytes([3] * 1024)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data_batch_1.bin").write_bytes(record)
    prepare("cifar10", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    image, labels, _ = read_back(tmp_path / "out", "train")
    assert labels.tolist() == [7]
    assert image[0, 0, 1].tolist() == [1, 249, 3]  # row 0, column 1
    assert image[0, 1, 0].tolist() == [32, 218, 3]  # row 1, column 0
    np.testing.assert_array_equal(image[0, ..., 0], red.reshape(32, 32))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "python"])
def test_cifar_archive_matches_folder(tmp_path, cifar_arrays, binary):
    folder = cifar_folder(tmp_path / "in", cifar_arrays, binary)
    archive = synthetic.tar_gz(folder, tmp_path / "cifar-10.tar.gz")
    manifest = prepare("cifar10", "--input", str(archive), "--output", str(tmp_path / "out"))
    check_cifar(tmp_path / "out", cifar_arrays)
    assert manifest["source"]["layout"] == ("cifar-binary" if binary else "cifar-python")
    [listed] = manifest["source"]["files"]["files"]
    assert listed["path"] == "cifar-10.tar.gz"
    assert listed["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_cifar_python_folder(tmp_path, cifar_arrays):
    folder = cifar_folder(tmp_path / "in", cifar_arrays, binary=False)
    prepare("cifar10", "--input", str(folder.parent), "--output", str(tmp_path / "out"))
    check_cifar(tmp_path / "out", cifar_arrays)


def test_split_rule_and_shard_size(tmp_path, cifar_arrays):
    folder = cifar_folder(tmp_path / "in", cifar_arrays)
    manifest = prepare(
        "cifar10", "--input", str(folder), "--output", str(tmp_path / "out"),
        "--split", "val=data_batch_2.bin", "--shard-size", "3",
    )  # fmt: skip
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [3, 3, 1]
    assert [s["path"] for s in manifest["splits"]["val"]["shards"]] == [
        "val/part-00000.parquet",
        "val/part-00001.parquet",
    ]
    val_images, _, val_indices = read_back(tmp_path / "out", "val")
    np.testing.assert_array_equal(val_images, cifar_arrays["data_batch_2"][0])
    np.testing.assert_array_equal(val_indices, np.arange(7, 12))
    schema = pq.read_schema(tmp_path / "out" / "train" / "part-00000.parquet")
    assert schema.field("image").type.byte_width == 3072
    assert json.loads(schema.metadata[b"pixelrnn.shape"]) == [32, 32, 3]


def test_val_fraction_is_exact_seeded_and_disjoint(tmp_path):
    data = images(40)
    (tmp_path / "in").mkdir()
    synthetic.write_cifar_binary(tmp_path / "in" / "data_batch_1.bin", data, np.arange(40) % 10)

    def held_out(seed: int, name: str) -> list[int]:
        out = tmp_path / name
        prepare("cifar10", "--input", str(tmp_path / "in"), "--output", str(out),
                "--val-fraction", "0.25", "--seed", str(seed))  # fmt: skip
        train_images, _, train_indices = read_back(out, "train")
        val_images, _, val_indices = read_back(out, "val")
        assert len(val_indices) == 10 and len(train_indices) == 30
        assert sorted([*train_indices, *val_indices]) == list(range(40))
        np.testing.assert_array_equal(val_images, data[val_indices])
        np.testing.assert_array_equal(train_images, data[train_indices])
        return val_indices.tolist()

    assert held_out(0, "a") == held_out(0, "b")
    assert held_out(0, "a2") != held_out(1, "c")


def test_imagenet_npz_batches(tmp_path):
    batches = {n: (images(n + 1, 32), RNG.integers(1, 1001, n + 1)) for n in (1, 2, 10)}
    for n, (batch, labels) in batches.items():
        synthetic.write_imagenet_npz(tmp_path / f"train_data_batch_{n}.npz", batch, labels)
    val, val_labels = images(3, 32), np.array([1, 1000, 500])
    synthetic.write_imagenet_npz(tmp_path / "val_data.npz", val, val_labels)
    manifest = prepare("imagenet32", "--input", str(tmp_path), "--output", str(tmp_path / "out"))
    train_images, train_labels, _ = read_back(tmp_path / "out", "train")
    np.testing.assert_array_equal(train_images, np.concatenate([b[0] for b in batches.values()]))
    np.testing.assert_array_equal(
        train_labels, np.concatenate([b[1] for b in batches.values()]) - 1
    )
    val_images, val_read_labels, _ = read_back(tmp_path / "out", "val")
    np.testing.assert_array_equal(val_images, val)
    assert val_read_labels.tolist() == [0, 999, 499]
    assert manifest["source"]["layout"] == "npz" and manifest["num_classes"] == 1000


def test_imagenet64_png_folders(tmp_path):
    train, valid = images(4, 64), images(2, 64)
    synthetic.write_pngs(tmp_path / "train_64x64", train)
    synthetic.write_pngs(tmp_path / "valid_64x64", valid)
    manifest = prepare("imagenet64", "--input", str(tmp_path), "--output", str(tmp_path / "out"))
    train_images, train_labels, _ = read_back(tmp_path / "out", "train")
    np.testing.assert_array_equal(train_images, train)
    assert train_labels.tolist() == [-1] * 4
    np.testing.assert_array_equal(read_back(tmp_path / "out", "val")[0], valid)
    assert manifest["shape"] == [64, 64, 3] and manifest["source"]["layout"] == "png-folders"
    assert manifest["source"]["files"]["files"][0]["path"] == "train_64x64/00000.png"
    (tmp_path / "valid_64x64" / "._00000.png").write_bytes(b"macOS resource fork, skipped")
    only_val = prepare("imagenet64", "--input", str(tmp_path / "valid_64x64"),
                       "--output", str(tmp_path / "val-only"))  # fmt: skip
    assert list(only_val["splits"]) == ["val"]
    np.testing.assert_array_equal(read_back(tmp_path / "val-only", "val")[0], valid)


def binarized(count: int) -> np.ndarray:
    return RNG.integers(0, 2, (count, 28, 28, 1), dtype=np.uint8)


def test_binarized_mnist_amat(tmp_path):
    arrays = {"train": binarized(5), "valid": binarized(3), "test": binarized(2)}
    for name, data in arrays.items():
        synthetic.write_amat(tmp_path / f"binarized_mnist_{name}.amat", data)
    manifest = prepare("binarized_mnist", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert manifest["levels"] == 2 and manifest["shape"] == [28, 28, 1]
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        np.testing.assert_array_equal(read_back(tmp_path / "o", split)[0], arrays[name])
    assert manifest["splits"]["val"]["label_counts"] == {"-1": 3}


@pytest.mark.parametrize("flat", [False, True], ids=["NxHxW", "Nx784"])
def test_binarized_mnist_npz(tmp_path, flat):
    train, valid = binarized(6), binarized(4)
    shape = (-1, 784) if flat else (-1, 28, 28)
    path = synthetic.write_npz(
        tmp_path / "mnist.npz", train=train.reshape(shape), valid=valid.reshape(shape)
    )
    manifest = prepare("binarized_mnist", "--input", str(path), "--output", str(tmp_path / "o"))
    np.testing.assert_array_equal(read_back(tmp_path / "o", "train")[0], train)
    np.testing.assert_array_equal(read_back(tmp_path / "o", "val")[0], valid)
    assert list(manifest["splits"]) == ["train", "val"] and manifest["levels"] == 2


def test_folder_centre_crops_and_class_subfolders(tmp_path):
    wide = images(1, 32)[0]
    canvas = np.zeros((32, 64, 3), np.uint8)
    canvas[:, 16:48] = wide  # centre square of a 64-wide image
    synthetic.write_pngs(tmp_path / "in" / "cats", canvas[None], ["wide.png"])
    small = images(1, 16)[0]
    synthetic.write_pngs(tmp_path / "in" / "dogs", small[None], ["small.png"])
    Image.fromarray(images(1, 40)[0]).save(tmp_path / "in" / "dogs" / "photo.JPG", quality=90)
    manifest = prepare("folder", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"))
    pixels, labels, _ = read_back(tmp_path / "o", "train")
    assert labels.tolist() == [0, 1, 1]  # cats/wide.png, dogs/photo.JPG, dogs/small.png
    np.testing.assert_array_equal(pixels[0], wide)
    upscaled = Image.fromarray(small).resize((32, 32), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(pixels[2], np.asarray(upscaled))
    assert manifest["class_names"] == ["cats", "dogs"]
