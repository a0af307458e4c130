"""`pixelrnn prepare builtin`: offline, seeded, split by photograph, sized for the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.cli.main import main
from pipeline.datasets import builtin


def prepare(*argv: str) -> dict:
    """Run `pixelrnn prepare builtin ...`, insist on success, return the manifest."""
    args = ["prepare", "builtin", *argv]
    assert main(args) == 0, args
    return json.loads((Path(args[args.index("--output") + 1]) / "manifest.json").read_text())


def read_split(output: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, H, W, C), labels, indices) of a split, read with plain pyarrow, in source
    order (by `index`: the shards hold the rows shuffled)."""
    manifest = json.loads((output / "manifest.json").read_text())
    tables = [pq.read_table(output / s["path"]) for s in manifest["splits"][split]["shards"]]
    pixels = b"".join(b for t in tables for b in t.column("image").to_pylist())
    labels = np.concatenate([t.column("label").to_numpy() for t in tables])
    indices = np.concatenate([t.column("index").to_numpy() for t in tables])
    order = np.argsort(indices)
    images = np.frombuffer(pixels, np.uint8).reshape(-1, *manifest["shape"])
    return images[order], labels[order], indices[order]


def test_builtin_is_seeded_and_split_by_photograph(tmp_path):
    def shard_hashes(seed: int, name: str) -> list[str]:
        manifest = prepare("--output", str(tmp_path / name), "--size", "16",
                           "--train-images", "50", "--val-images", "10", "--test-images", "10",
                           "--seed", str(seed))  # fmt: skip
        counts = {s: v["count"] for s, v in manifest["splits"].items()}
        assert counts == {"train": 50, "val": 10, "test": 10}
        assert manifest["shape"] == [16, 16, 3]
        return [s["sha256"] for v in manifest["splits"].values() for s in v["shards"]]

    assert shard_hashes(0, "a") == shard_hashes(0, "b")
    assert shard_hashes(0, "a2") != shard_hashes(1, "c")
    data_dir = builtin.skimage_data_dir()
    used = [name for name in builtin.PHOTOGRAPHS if (data_dir / name).is_file()]
    by_split = {
        s: {n for n in used if builtin.PHOTOGRAPHS[n] == s} for s in ("train", "val", "test")
    }
    assert all(by_split.values())
    assert not (by_split["train"] & (by_split["val"] | by_split["test"]))
    plan = builtin.plan(16, {"train": 5, "val": 5, "test": 5}, seed=0)
    for unit in plan.units:  # each split's crops are drawn from that split's photos only
        assert (
            unit.name == f"{unit.split}: {', '.join(sorted(by_split[unit.split], key=used.index))}"
        )


def test_builtin_defaults_and_force(tmp_path):
    manifest = prepare("--output", str(tmp_path / "data"))
    assert {s: v["count"] for s, v in manifest["splits"].items()} == builtin.DEFAULT_COUNTS
    pixels, labels, indices = read_split(tmp_path / "data", "val")
    assert pixels.shape == (400, 32, 32, 3) and set(labels.tolist()) == {-1}
    assert len(set(indices.tolist())) == 400 and pixels.std() > 20  # varied photo crops
    again = prepare("--output", str(tmp_path / "data"), "--force", "--seed", "3")
    assert again["source"]["options"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no partial/old folders left
