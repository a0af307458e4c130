"""Stream a `SourcePlan` into Parquet shards + manifest.json, atomically.

Each split's rows are written in a seeded random order of the whole source (an external
shuffle through bucket files on local disk: `shuffle.py`), so shards mix the source's classes.

Everything is written into a hidden sibling folder and renamed onto the output at the end, so a
failure (bad input, Ctrl-C) leaves no partial dataset, and `--force` replaces an old dataset only
once the new one is complete.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from pipeline.datasets.base import SPLITS, UNLABELED, ReadUnit, SourcePlan
from pipeline.datasets.manifest import MANIFEST_NAME, build_manifest
from pipeline.datasets.shards import ShardWriter
from pipeline.datasets.shuffle import ExternalShuffle
from pipeline.errors import DataError

logger = logging.getLogger(__name__)
# What the manifest's `source.options.row_order` says of shards written by this version.
ROW_ORDER = "shuffled: each split sorted by a hash of (seed, index)"


class ValSplitter:
    """Seeded hold-out of a fraction of the train rows, exact over the whole stream.

    After n rows exactly round(fraction·n) are held out; which rows of each chunk is drawn from
    a generator seeded by (seed, chunk number), so the split depends only on source and seed.
    """

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed
        self.seen = self.taken = self.chunks = 0

    def mask(self, count: int) -> np.ndarray:
        """Boolean (count,): True for rows of the next chunk that go to val."""
        target = math.floor(self.fraction * (self.seen + count) + 0.5)
        rng = np.random.default_rng((self.seed, self.chunks))
        mask = np.zeros(count, dtype=bool)
        mask[rng.choice(count, size=target - self.taken, replace=False)] = True
        self.seen, self.taken, self.chunks = self.seen + count, target, self.chunks + 1
        return mask


def prepare(
    plan: SourcePlan,
    output: Path,
    *,
    shard_rows: int,
    split_rules: dict[str, str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
    options: dict | None = None,
) -> dict:
    """Read every unit of `plan`, write shards per split under `output`, return the manifest.

    Args:
        plan: what to read.
        output: the dataset folder to create (must not hold a dataset unless `force`).
        shard_rows: rows per Parquet shard.
        split_rules: output split -> glob over unit names; matching units go to that split.
        val_fraction: hold out this fraction of train rows as val (seeded by `seed`).
        seed: seed of the val hold-out and of the order of the rows in the shards.
        force: replace an existing prepared dataset at `output`.
        options: extra source options to record in the manifest.
    """
    _check_output(output, force)
    routes = _route(plan.units, split_rules or {})
    if val_fraction is not None and any(split == "val" for _, split in routes):
        raise DataError(f"{plan.input}: the source already has a val split; drop --val-fraction")
    created = _make_parents(output.parent)
    temporary = _sibling(output, "partial")
    try:
        splits = _write(plan, routes, temporary, shard_rows, val_fraction, seed)
        recorded = {"shard_rows": shard_rows, "split_rules": split_rules or {}}
        recorded |= {"val_fraction": val_fraction, "seed": seed, "row_order": ROW_ORDER}
        recorded |= options or {}
        manifest = build_manifest(plan, splits, recorded)
        (temporary / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        _publish(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        for folder in reversed(created):
            _remove_if_empty(folder)
        raise
    counts = ", ".join(f"{split} {info['count']}" for split, info in splits.items())
    logger.info("prepared %s into %s (%s)", plan.source, output, counts)
    return manifest


def _write(
    plan: SourcePlan,
    routes: list[tuple[ReadUnit, str]],
    folder: Path,
    shard_rows: int,
    val_fraction: float | None,
    seed: int,
) -> dict[str, dict]:
    """Read the source into shuffle buckets under `folder`, then write each split's shards in
    its shuffled order (`shuffle.ExternalShuffle`); the buckets are gone when this returns."""
    buckets = ExternalShuffle(folder / ".shuffle", plan.shape, seed)
    try:
        _spill(plan, routes, buckets, val_fraction, seed)
        writer = ShardWriter(folder, plan.shape, plan.levels, shard_rows)
        for split in SPLITS:
            for images, labels, indices in buckets.drain(split):
                writer.add(split, images, labels, indices)
    finally:
        buckets.close()
        shutil.rmtree(folder / ".shuffle", ignore_errors=True)
    splits = writer.close()
    if not splits:
        raise DataError(f"{plan.input}: no images found")
    return {split: splits[split] for split in SPLITS if split in splits}


def _spill(
    plan: SourcePlan,
    routes: list[tuple[ReadUnit, str]],
    buckets: ExternalShuffle,
    val_fraction: float | None,
    seed: int,
) -> None:
    """Pass 1: every unit's rows, numbered in source order, into their split's buckets."""
    splitter = ValSplitter(val_fraction, seed) if val_fraction is not None else None
    position = 0
    total_files = sum(unit.num_files for unit in plan.units)
    with tqdm(total=total_files, unit="file", desc=f"prepare {plan.source}", disable=None) as bar:
        for unit, split in routes:
            for images, labels in unit.read():
                _check_chunk(plan, unit, images, labels)
                indices = np.arange(position, position + len(images), dtype=np.int64)
                position += len(images)
                if splitter is not None and split == "train":
                    held = splitter.mask(len(images))
                    buckets.add("val", images[held], labels[held], indices[held])
                    buckets.add("train", images[~held], labels[~held], indices[~held])
                else:
                    buckets.add(split, images, labels, indices)
                bar.set_postfix(images=position, refresh=False)
            bar.update(unit.num_files)


def _check_chunk(plan: SourcePlan, unit: ReadUnit, images: np.ndarray, labels: np.ndarray) -> None:
    """The generic guard every reader's output passes: dtype, shape, label range, levels."""
    if images.dtype != np.uint8 or images.shape[1:] != plan.shape:
        raise DataError(
            f"{unit.name}: images are {images.dtype} {images.shape[1:]}, expected uint8 "
            f"{plan.shape} like the rest of the dataset"
        )
    if labels.shape != images.shape[:1]:
        raise DataError(f"{unit.name}: {len(labels)} labels for {len(images)} images")
    high = plan.num_classes - 1 if plan.num_classes else UNLABELED
    low = 0 if plan.num_classes else UNLABELED
    if labels.size and (labels.min() < low or labels.max() > high):
        raise DataError(f"{unit.name}: labels outside {low}..{high}")
    if plan.levels < 256 and images.size and images.max() >= plan.levels:
        raise DataError(f"{unit.name}: pixel value {images.max()} with levels={plan.levels}")


def _route(units: tuple[ReadUnit, ...], rules: dict[str, str]) -> list[tuple[ReadUnit, str]]:
    """Output split of every unit: the first matching `--split` rule, else the source's split."""
    for split, pattern in rules.items():
        if split not in SPLITS:
            raise DataError(f"--split {split}={pattern}: unknown split (use one of {SPLITS})")
        if not any(_matches(unit, pattern) for unit in units):
            names = ", ".join(unit.name for unit in units[:8])
            raise DataError(f"--split {split}={pattern}: matches no source file (files: {names})")
    return [
        (unit, next((s for s, p in rules.items() if _matches(unit, p)), unit.split))
        for unit in units
    ]


def _matches(unit: ReadUnit, pattern: str) -> bool:
    name = unit.name.split(":")[-1]
    return fnmatch.fnmatch(unit.name, pattern) or fnmatch.fnmatch(PurePosixPath(name).name, pattern)


def _check_output(output: Path, force: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise DataError(f"{output}: exists and is not a folder")
    if (output / MANIFEST_NAME).exists():
        if not force:
            raise DataError(
                f"{output}: already holds a prepared dataset; pass --force to replace it"
            )
    elif any(output.iterdir()):
        raise DataError(f"{output}: exists and is not empty (and is not a prepared dataset)")


def _publish(temporary: Path, output: Path) -> None:
    """Rename the finished folder onto `output`, replacing an old dataset only at the very end."""
    if output.exists() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        os.rename(temporary, output)
        return
    old = _sibling(output, "old")
    os.rename(output, old / output.name)
    os.rename(temporary, output)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(output: Path, role: str) -> Path:
    """A new hidden folder next to `output` (same filesystem, so renames are atomic)."""
    folder = output.parent / f".{output.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()  # default mode, unlike mkdtemp's 0700: the dataset is meant to be shared
    return folder


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and missing parents; return the ones created (outermost first)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
