"""Sample order on a class-sorted source, as ImageNet's class folders are: `prepare` shuffles the
whole source, and the epoch's global batches mix classes like a uniform shuffle, hold the same
images for any worker count, and cover every image once per epoch (`pixelrnn batches`)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.main import main
from pipeline.data import index_values, open_prepared, read_in_order, warn_if_unshuffled
from pipeline.datasets.shuffle import shuffle_keys

CLASSES, PER_CLASS, SIZE, SHARD_ROWS, BATCH = 8, 300, 4, 64, 16
TRAIN = 2280  # 95% of 2,400 (--val-fraction 0.05): 142 global batches of 16, 8 rows left over


def make_class_folders(root):
    """8 class folders of 300 random 4x4 PNGs each: the source's order is sorted by class."""
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for number in range(PER_CLASS):
            pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("sorted") / "classes")


def prepare(source, output, seed: int = 0) -> str:
    argv = ["prepare", "folder", "--input", str(source), "--output", str(output), "--size",
            str(SIZE), "--val-fraction", "0.05", "--shard-size", str(SHARD_ROWS),
            "--seed", str(seed)]  # fmt: skip
    assert main(argv) == 0
    return str(output)


@pytest.fixture(scope="module")
def dataset(source, tmp_path_factory):
    return prepare(source, tmp_path_factory.mktemp("prepared") / "ds")


def split_rows(root: str, split: str) -> dict[str, np.ndarray]:
    """Columns `label` and `index` of a split's shards, concatenated in manifest order."""
    manifest = json.loads(Path(root, "manifest.json").read_text())
    tables = [pq.read_table(f"{root}/{shard['path']}", columns=["label", "index"])
              for shard in manifest["splits"][split]["shards"]]  # fmt: skip
    return {column: np.concatenate([t[column].to_numpy() for t in tables])
            for column in ("label", "index")}  # fmt: skip


def uniform_distinct(counts: list[int], batch: int) -> float:
    """Exact mean number of classes in `batch` rows drawn uniformly without replacement."""
    total = sum(counts)
    missing = sum(Fraction(math.comb(total - count, batch), math.comb(total, batch))
                  for count in counts)  # fmt: skip
    return float(len(counts) - missing)


def printed(capsys, root: str, *flags: str) -> list[dict]:
    assert main(["batches", root, *flags]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def by_step(lines: list[dict]) -> dict[int, list[list[int]]]:
    """step -> the index lists of ranks 0, 1, ... in that step."""
    steps: dict[int, list[list[int]]] = {}
    for line in lines:
        assert len(steps.setdefault(line["step"], [])) == line["rank"]
        steps[line["step"]].append(line["index"])
    return steps


def epoch(capsys, root: str, workers: int, number: int = 1, seed: int = 0):
    flags = ["--epoch", str(number), "--workers", str(workers), "--batch-size", str(BATCH),
             "--seed", str(seed)]  # fmt: skip
    return by_step(printed(capsys, root, *flags))


def test_prepare_writes_the_sorted_source_in_a_seeded_random_order(source, dataset, tmp_path):
    manifest = json.loads(Path(dataset, "manifest.json").read_text())
    assert manifest["source"]["options"]["seed"] == 0
    assert manifest["source"]["options"]["row_order"].startswith("shuffled")
    rows = split_rows(dataset, "train")
    keys = shuffle_keys(0, rows["index"])
    assert np.all(keys[1:] > keys[:-1])  # sorted by the hash of (seed, index): a permutation
    labels, counts = rows["label"], manifest["splits"]["train"]["label_counts"]
    per_shard = [len(np.unique(labels[start : start + SHARD_ROWS]))
                 for start in range(0, len(labels) - SHARD_ROWS + 1, SHARD_ROWS)]  # fmt: skip
    assert np.mean(per_shard) >= 0.9 * uniform_distinct(list(counts.values()), SHARD_ROWS)
    again = split_rows(prepare(source, tmp_path / "again"), "train")
    np.testing.assert_array_equal(again["index"], rows["index"])  # the same seed, the same order
    other = split_rows(prepare(source, tmp_path / "other", seed=1), "train")
    assert not np.array_equal(other["index"], rows["index"])
    assert set(other["index"].tolist()) != set(rows["index"].tolist())  # the hold-out is seeded too


def test_global_and_per_worker_batches_mix_classes_like_a_uniform_shuffle(capsys, dataset):
    rows = split_rows(dataset, "train")
    label_of = dict(zip(rows["index"].tolist(), rows["label"].tolist(), strict=True))
    counts = np.bincount(rows["label"]).tolist()
    for workers in (1, 2, 4):
        steps = epoch(capsys, dataset, workers)
        whole = [[label_of[i] for part in parts for i in part] for parts in steps.values()]
        mean_distinct = np.mean([len(set(labels)) for labels in whole])
        assert mean_distinct >= 0.9 * uniform_distinct(counts, BATCH), workers
        parts = [[label_of[i] for i in part] for step in steps.values() for part in step]
        assert {len(part) for part in parts} == {BATCH // workers}
        mean_distinct = np.mean([len(set(labels)) for labels in parts])
        assert mean_distinct >= 0.9 * uniform_distinct(counts, BATCH // workers), workers


def test_a_worker_count_that_does_not_divide_the_batch_splits_it_by_at_most_one(capsys, dataset):
    one, three = epoch(capsys, dataset, 1), epoch(capsys, dataset, 3)  # BATCH over 3: uneven
    for step, parts in three.items():
        assert sorted(len(part) for part in parts) in ([5, 5, 6], [5, 6, 6]), parts
        assert sorted(i for part in parts for i in part) == sorted(one[step][0])


def test_global_batches_are_the_same_images_for_1_2_and_4_workers(capsys, dataset):
    train = set(split_rows(dataset, "train")["index"].tolist())
    epochs = []
    for number in (1, 2):
        batches = {}
        for workers in (1, 2, 4):
            steps = epoch(capsys, dataset, workers, number)
            batches[workers] = [
                sorted(i for part in parts for i in part) for parts in steps.values()
            ]
        assert batches[1] == batches[2] == batches[4]
        assert len(batches[1]) == TRAIN // BATCH
        seen = [i for batch in batches[1] for i in batch]
        assert len(seen) == len(set(seen)) == TRAIN - TRAIN % BATCH  # each image at most once
        assert len(train - set(seen)) == TRAIN % BATCH  # the same 8 sit out for every W
        epochs.append(batches[1])
    assert epochs[0] != epochs[1]
    assert {frozenset(b) for b in epochs[0]}.isdisjoint({frozenset(b) for b in epochs[1]})
    assert epoch(capsys, dataset, 2, seed=1) != epoch(capsys, dataset, 2)


def test_each_worker_reads_about_its_share_of_the_shards(dataset):
    data = open_prepared(dataset)
    shards = len(data.manifest["splits"]["train"]["shards"])  # 36, in 3 shuffle blocks
    for workers in (1, 2, 4):
        orders = [data.rank_order("train", rank, workers, BATCH, seed=0, epoch=1, shuffle=True)
                  for rank in range(workers)]  # fmt: skip
        reads = sum(len(order.paths) for order in orders)
        assert reads <= shards + 2 * workers * 3, (workers, reads)  # + 2 per worker and block


def test_a_position_in_samples_resumes_at_the_same_rows_on_any_worker_count(dataset):
    data = open_prepared(dataset)
    skip = 37  # global batches done: 37 * 16 samples into the epoch

    def rest(workers: int) -> list[set[int]]:
        parts = []
        for rank in range(workers):
            order = data.rank_order("train", rank, workers, BATCH, seed=4, epoch=2, shuffle=True)
            values = index_values(data, order.after(skip))
            parts.append(np.split(values, np.cumsum(order.batch_sizes[skip:])[:-1]))
        return [set(np.concatenate(step).tolist()) for step in zip(*parts, strict=True)]

    whole = data.rank_order("train", 0, 1, BATCH, seed=4, epoch=2, shuffle=True)
    everything = index_values(data, whole).reshape(-1, BATCH)
    assert rest(1) == rest(2) == rest(4) == [set(batch.tolist()) for batch in everything[skip:]]


def test_reader_yields_exactly_the_named_rows_and_pixels(dataset):
    data = open_prepared(dataset)
    order = data.rank_order("train", 1, 2, BATCH, seed=3, epoch=4, shuffle=True).after(5)
    batches = list(read_in_order(data, order, prefetch=1))
    assert [len(batch["index"]) for batch in batches] == [BATCH // 2] * (TRAIN // BATCH - 5)
    np.testing.assert_array_equal(
        np.concatenate([b["index"].numpy() for b in batches]), index_values(data, order)
    )
    pixels_of = {}
    for shard in data.manifest["splits"]["train"]["shards"]:
        table = pq.read_table(f"{dataset}/{shard['path']}")
        images = np.frombuffer(b"".join(table["image"].to_pylist()), np.uint8)
        pixels_of.update(
            zip(table["index"].to_pylist(), images.reshape(-1, SIZE, SIZE, 3), strict=True)
        )
    for batch in batches:
        for index, pixels in zip(batch["index"].tolist(), batch["pixels"].numpy(), strict=True):
            np.testing.assert_array_equal(pixels, pixels_of[index].transpose(2, 0, 1))  # (C, H, W)
    val = data.rank_order("val", 14, 16, BATCH, seed=0, epoch=0, shuffle=False)
    assert val.batch_sizes.tolist() == [1] * 7 + [0]  # 120 rows: the last batch of 8 has none
    assert [len(b["index"]) for b in read_in_order(data, val)] == [1] * 7


def test_validation_reads_every_row_once_in_the_same_global_batches(capsys, dataset):
    val = split_rows(dataset, "val")["index"].tolist()  # 120 rows: 7 batches of 16, then 8
    flags = ["--split", "val", "--validation", "--epoch", "1", "--batch-size", "16"]
    one = by_step(printed(capsys, dataset, *flags, "--workers", "1"))
    four = by_step(printed(capsys, dataset, *flags, "--workers", "4"))
    assert [len(parts[0]) for parts in one.values()] == [16] * 7 + [8]
    in_order = [i for parts in four.values() for part in parts for i in part]
    assert in_order == [i for parts in one.values() for i in parts[0]] == val  # manifest order
    assert [len(part) for part in four[7]] == [2, 2, 2, 2]  # the last, partial batch split too


def test_steps_selects_a_range_of_global_batches(capsys, dataset):
    flags = ["--epoch", "3", "--workers", "2", "--batch-size", "16"]
    everything = printed(capsys, dataset, *flags)
    assert printed(capsys, dataset, *flags, "--steps", "40:42") == everything[80:84]
    assert printed(capsys, dataset, *flags, "--steps", "141") == everything[-2:]
    assert printed(capsys, dataset, *flags, "--steps", "140:") == everything[-4:]
    assert {line["epoch"] for line in everything} == {3}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "17"], "--batch-size 16 leaves some of --workers 17 without an image"),
        (["--steps", "5:2"], "--steps 5:2: expected A:B with 0 <= A < B"),
        (["--steps", "x"], "--steps x: expected A:B"),
        (["--steps", "142:"], "--steps 142:: epoch 1 has 142 steps (0 to 141)"),
        (["--split", "test"], "no split 'test'"),
        (["--batch-size", "4096"], "split 'train' has 2280 images, fewer than one batch of 4096"),
        (["--epoch", "0"], "--epoch: expected a positive integer, got 0"),
    ],
)
def test_bad_input_is_one_line_naming_it(capsys, dataset, flags, message):
    argv = {"--epoch": "1", "--workers": "2", "--batch-size": "16"}
    argv.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    assert main(["batches", dataset, *[item for pair in argv.items() for item in pair]]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("pixelrnn: error: ") and message in line, line
    assert not captured.out


def test_a_missing_dataset_is_one_line(capsys, tmp_path):
    flags = ["--epoch", "1", "--workers", "1", "--batch-size", "4"]
    assert main(["batches", str(tmp_path / "nope"), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{tmp_path / 'nope'}/manifest.json: not found" in line


def test_training_warns_about_a_dataset_prepared_in_source_order(dataset, caplog):
    data = open_prepared(dataset)
    warn_if_unshuffled(data)
    assert not caplog.records
    del data.manifest["source"]["options"]["row_order"]  # as an older `prepare` wrote it
    warn_if_unshuffled(data)
    assert "its shards hold the source's order" in caplog.text and dataset in caplog.text
