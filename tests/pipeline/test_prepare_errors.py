"""Bad input never yields a dataset that looks fine: one-line error, exit 2, nothing left behind."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli.main import main
from pipeline.datasets import synthetic

RNG = np.random.default_rng(7)


def images(count: int, size: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def cifar_bin(root: Path, batches: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, count in batches.items():
        synthetic.write_cifar_binary(root / f"{name}.bin", images(count), np.arange(count) % 10)
    return root


def truncated_bin(tmp: Path) -> tuple[list[str], list[str]]:
    root = cifar_bin(tmp / "in", {"data_batch_1": 5, "data_batch_2": 2})
    with open(root / "data_batch_2.bin", "r+b") as file:
        file.truncate(2 * 3073 - 10)
    return ["cifar10", root, "--shard-size", "2"], ["data_batch_2.bin", "3073-byte records"]


def label_out_of_range(tmp: Path) -> tuple[list, list[str]]:
    root = tmp / "in"
    root.mkdir()
    synthetic.write_cifar_binary(root / "data_batch_1.bin", images(5), np.array([1, 2, 3, 12, 4]))
    return ["cifar10", root], ["data_batch_1.bin", "label 12 at record 3", "0..9"]


def truncated_archive(tmp: Path) -> tuple[list, list[str]]:
    folder = cifar_bin(tmp / "in" / "cifar-10-batches-bin", {"data_batch_1": 20, "test_batch": 20})
    archive = synthetic.tar_gz(folder, tmp / "cifar-10.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 3 // 5])
    return ["cifar10", archive], ["cifar-10.tar.gz", "archive"]


class Exploit:
    """Pickles as a call to os.system; a safe loader must never make that call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(tmp: Path) -> tuple[list, list[str]]:
    root = tmp / "cifar-10-batches-py"
    root.mkdir()
    payload = {b"data": Exploit(tmp / "pwned"), b"labels": [0]}
    (root / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    return ["cifar10", root], ["data_batch_1", "system", "only numpy arrays"]


def pickle_missing_key(tmp: Path) -> tuple[list, list[str]]:
    root = tmp / "cifar-10-batches-py"
    root.mkdir()
    data = images(2).transpose(0, 3, 1, 2).reshape(2, -1)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": data}, protocol=2))
    return ["cifar10", root], ["data_batch_1", "missing key 'labels'"]


def no_cifar_batches(tmp: Path) -> tuple[list, list[str]]:
    (tmp / "in").mkdir()
    (tmp / "in" / "readme.html").write_text("hello")
    return ["cifar10", tmp / "in"], ["in", "no CIFAR-10 batches found"]


def npz_missing_key(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_npz(tmp / "val_data.npz", data=np.zeros((2, 3072), np.uint8))
    return ["imagenet32", tmp], ["val_data.npz", "missing key 'labels'"]


def npz_wrong_shape(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_npz(
        tmp / "train_data_batch_1.npz", data=np.zeros((2, 100), np.uint8), labels=np.ones(2)
    )
    return ["imagenet32", tmp], ["train_data_batch_1.npz", "(2, 100)", "(N, 3072)"]


def npz_label_out_of_range(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_imagenet_npz(tmp / "train_data_batch_1.npz", images(3), np.array([5, 0, 7]))
    return ["imagenet32", tmp], ["train_data_batch_1.npz", "label 0 at record 1", "1..1000"]


def npz_object_array(tmp: Path) -> tuple[list, list[str]]:
    objects = np.array([{"a": 1}, None], dtype=object)
    synthetic.write_npz(tmp / "val_data.npz", data=objects, labels=np.ones(2, np.int64))
    return ["imagenet32", tmp], ["val_data.npz", "pickled Python objects"]


def not_an_npz(tmp: Path) -> tuple[list, list[str]]:
    (tmp / "val_data.npz").write_bytes(b"this is not a zip file")
    return ["imagenet32", tmp], ["val_data.npz", "not a readable npz"]


def mixed_png_sizes(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_pngs(tmp / "train_32x32", images(2))
    Image.fromarray(images(1, 33)[0]).save(tmp / "train_32x32" / "00002.png")
    return ["imagenet32", tmp], ["train_32x32/00002.png", "33x33", "mixed image sizes"]


def unreadable_image(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_pngs(tmp / "in", images(2))
    (tmp / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    return ["folder", tmp / "in"], ["broken.png", "unreadable image"]


def truncated_png(tmp: Path) -> tuple[list, list[str]]:
    [path] = synthetic.write_pngs(tmp / "in", images(1, 64))
    path.write_bytes(path.read_bytes()[:2000])
    return ["folder", tmp / "in"], ["00000.png", "unreadable image"]


def amat_short_line(tmp: Path) -> tuple[list, list[str]]:
    path = tmp / "binarized_mnist_train.amat"
    path.write_text(" ".join(["0"] * 784) + "\n" + " ".join(["1"] * 783) + "\n")
    return ["binarized_mnist", tmp], [path.name, "line 2 has 783 values, expected 784"]


def amat_bad_value(tmp: Path) -> tuple[list, list[str]]:
    path = tmp / "binarized_mnist_valid.amat"
    path.write_text(" ".join(["0"] * 783 + ["2"]) + "\n")
    return ["binarized_mnist", tmp], [path.name, "line 1 has value '2'"]


def mnist_npz_wrong_shape(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_npz(tmp / "mnist.npz", train=np.zeros((5, 27, 28), np.uint8))
    return ["binarized_mnist", tmp / "mnist.npz"], ["mnist.npz", "'train' has shape (5, 27, 28)"]


def mnist_npz_not_binary(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_npz(tmp / "mnist.npz", valid=np.full((2, 784), 255, np.uint8))
    return ["binarized_mnist", tmp / "mnist.npz"], ["mnist.npz:valid", "value 255"]


def mnist_npz_no_keys(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_npz(tmp / "mnist.npz", x=np.zeros((2, 784), np.uint8))
    return ["binarized_mnist", tmp / "mnist.npz"], ["mnist.npz", "missing keys", "'x'"]


def split_matches_nothing(tmp: Path) -> tuple[list, list[str]]:
    root = cifar_bin(tmp / "in", {"data_batch_1": 2})
    return ["cifar10", root, "--split", "val=data_batch_9*"], ["val=data_batch_9*", "matches no"]


def val_fraction_with_val(tmp: Path) -> tuple[list, list[str]]:
    synthetic.write_imagenet_npz(tmp / "val_data.npz", images(2), np.array([1, 2]))
    return ["imagenet32", tmp, "--val-fraction", "0.1"], [str(tmp), "already has a val split"]


CASES: dict[str, Callable[[Path], tuple[list, list[str]]]] = {
    f.__name__: f
    for f in (
        truncated_bin, label_out_of_range, truncated_archive, malicious_pickle,
        pickle_missing_key, no_cifar_batches, npz_missing_key, npz_wrong_shape,
        npz_label_out_of_range, npz_object_array, not_an_npz, mixed_png_sizes,
        unreadable_image, truncated_png, amat_short_line, amat_bad_value, mnist_npz_wrong_shape,
        mnist_npz_not_binary, mnist_npz_no_keys, split_matches_nothing, val_fraction_with_val,
    )
}  # fmt: skip


def run(argv: list, capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["prepare", *map(str, argv)])
    return status, capsys.readouterr().err


def assert_one_line_error(stderr: str, expected: list[str]) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("pixelrnn: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for text in expected:
        assert text in errors[0], (text, errors[0])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(case, tmp_path, capsys):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    argv, expected = CASES[case](source_dir)
    source, input_path, *extra = argv
    output = tmp_path / "new" / "out"  # the parent does not exist yet either
    status, stderr = run([source, "--input", input_path, "--output", output, *extra], capsys)
    assert status == 2
    assert_one_line_error(stderr, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no partial folder
    assert not (source_dir / "pwned").exists()


def test_existing_dataset_needs_force_and_survives_a_failed_replace(tmp_path, capsys):
    output = tmp_path / "out"
    small = ["--train-images", "8", "--val-images", "2", "--test-images", "2", "--size", "8"]
    assert run(["builtin", "--output", output, *small], capsys)[0] == 0
    before = (output / "manifest.json").read_text()
    status, stderr = run(["builtin", "--output", output, *small], capsys)
    assert status == 2
    assert_one_line_error(stderr, [str(output), "already holds a prepared dataset", "--force"])
    argv, _ = truncated_bin(tmp_path)
    status, stderr = run([argv[0], "--input", argv[1], "--output", output, "--force"], capsys)
    assert status == 2 and "data_batch_2.bin" in stderr
    assert (output / "manifest.json").read_text() == before  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert json.loads(before)["splits"]["train"]["count"] == 8


def test_non_dataset_folder_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    status, stderr = run(["builtin", "--output", tmp_path / "out", "--force"], capsys)
    assert status == 2
    assert_one_line_error(stderr, ["out", "not empty", "not a prepared dataset"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
