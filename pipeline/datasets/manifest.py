"""`manifest.json`: what a prepared dataset holds, where it came from, and how to check it.

Written by `prepare`; read back through pyarrow filesystems so a dataset may live in a local
folder or under an `s3://` / `gs://` URI. Every shard is listed with its row count, size and
sha256. `verify_shards` checks that every shard is there with its size (cheap: what every command
does at start) and, on demand, its sha256 (`pixelrnn verify`, `--verify`, the end of `prepare`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.datasets.base import SourcePlan
from pipeline.datasets.shards import sha256_file
from pipeline.errors import DataError, PixelRNNError

MANIFEST_NAME = "manifest.json"
FORMAT, FORMAT_VERSION = "pixelrnn-prepared-images", 1
MAX_LISTED_FILES = 10_000  # beyond this (ImageNet PNG folders) only totals and a digest are kept
REQUIRED_KEYS = ("format", "format_version", "source", "shape", "levels", "splits")


def describe_inputs(plan: SourcePlan) -> dict:
    """Count, total bytes, sha256 of each input file, and one digest over the whole listing."""
    listing, files, total = hashlib.sha256(), [], 0
    for name in plan.input_files:
        path = plan.input_root / name
        entry = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        listing.update(f"{name}\t{entry['bytes']}\t{entry['sha256']}\n".encode())
        total += entry["bytes"]
        if len(plan.input_files) <= MAX_LISTED_FILES:
            files.append(entry)
    return {
        "count": len(plan.input_files),
        "bytes": total,
        "listing_sha256": listing.hexdigest(),
        "files": files if len(plan.input_files) <= MAX_LISTED_FILES else None,
    }


def build_manifest(plan: SourcePlan, splits: dict[str, dict], options: dict) -> dict:
    """The manifest dict for a finished preparation.

    Args:
        plan: the source that was read.
        splits: per split, `ShardWriter.close()`'s summary (count, stats, shards).
        options: the preparation options (shard size, split rules, seed, source options).
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "pixelrnn", "version": _tool_version()},
        "source": {
            "name": plan.source,
            "layout": plan.layout,
            "input": plan.input,
            "options": options,
            "files": describe_inputs(plan),
        },
        "shape": list(plan.shape),
        "levels": plan.levels,
        "num_classes": plan.num_classes,
        "class_names": list(plan.class_names) if plan.class_names else None,
        "columns": {
            "image": "fixed_size_binary[H*W*C]: uint8 pixels in H x W x C order",
            "label": "int64, -1 when the source has no labels",
            "index": "int64, position of the image in the source (files in order)",
        },
        "splits": splits,
    }


def resolve(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path for a local folder or a `scheme://` URI."""
    try:
        return storage.filesystem(root)
    except PixelRNNError as error:
        raise DataError(str(error)) from None


def read_manifest(root: str) -> dict:
    """Parse and sanity-check `root/manifest.json` (missing keys and wrong format -> DataError)."""
    filesystem, base = resolve(root)
    where = f"{root.rstrip('/')}/{MANIFEST_NAME}"
    try:
        storage.require_bucket(root)
    except PixelRNNError as error:
        raise DataError(str(error)) from None
    try:
        with filesystem.open_input_stream(f"{base}/{MANIFEST_NAME}") as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError:
        raise DataError(f"{where}: not found; run `pixelrnn prepare` first") from None
    except (OSError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DataError(f"{where}: unreadable ({message})") from None
    missing = (
        [key for key in REQUIRED_KEYS if key not in manifest]
        if isinstance(manifest, dict)
        else ["all"]
    )
    if missing:
        raise DataError(f"{where}: not a prepared-dataset manifest (missing {missing})")
    if manifest["format"] != FORMAT or manifest["format_version"] > FORMAT_VERSION:
        raise DataError(
            f"{where}: format {manifest['format']!r} version {manifest['format_version']} is not "
            f"readable by this version (expects {FORMAT!r} <= {FORMAT_VERSION})"
        )
    for name, split in manifest["splits"].items():
        for shard in split.get("shards", []):
            path = str(shard.get("path", ""))
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise DataError(
                    f"{where}: split {name!r} lists a shard outside the dataset: {path}"
                )
    return manifest


def verify_shards(
    root: str,
    manifest: dict,
    checksums: bool = True,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check every listed shard exists with its recorded size (and sha256 when `checksums`).

    The presence and size check is one listing request per shard; the sha256 pass reads every
    byte once (the manifest's total is `sum(shard["bytes"])`).

    Args:
        root: the dataset's folder or URI.
        manifest: its parsed manifest.
        checksums: also compare each shard's sha256.
        progress: called with the number of bytes read after each block of the sha256 pass.

    Raises:
        DataError: naming the first shard that is missing, resized or altered, or the dataset's
            location when its storage cannot be reached.
    """
    filesystem, base = resolve(root)
    shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
    try:
        with storage.reaching(root):
            infos = filesystem.get_file_info([f"{base}/{shard['path']}" for shard in shards])
    except PixelRNNError as error:
        raise DataError(str(error)) from None
    for shard, info in zip(shards, infos, strict=True):
        where = f"{root.rstrip('/')}/{shard['path']}"
        if info.type != pafs.FileType.File:
            raise DataError(f"{where}: missing (listed in {MANIFEST_NAME})")
        if info.size != shard["bytes"]:
            raise DataError(
                f"{where}: {info.size} bytes, the manifest says {shard['bytes']}; the shard was "
                "altered or truncated after prepare"
            )
    if not checksums:
        return
    for shard, info in zip(shards, infos, strict=True):
        where = f"{root.rstrip('/')}/{shard['path']}"
        if _sha256(filesystem, info.path, progress) != shard["sha256"]:
            raise DataError(f"{where}: sha256 differs from the manifest; the shard was altered")


def total_bytes(manifest: dict) -> int:
    """Bytes of all the shards a manifest lists."""
    return sum(shard["bytes"] for split in manifest["splits"].values() for shard in split["shards"])


def _sha256(
    filesystem: pafs.FileSystem, path: str, progress: Callable[[int], None] | None = None
) -> str:
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def _tool_version() -> str:
    try:
        return importlib.metadata.version("pixelrnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
