"""Occluded-image completion for `pixelrnn sample --complete-from DIR --rows K` (section 5,
figure 1): the first `--n` images of DIR keep their top K rows and the model draws the rest.

DIR is a dataset written by `pixelrnn prepare` (it has a manifest.json; `--split` picks the
split, default the training run's val split) or a folder of PNG/JPEG files of one size. Three
grids are written next to `--out`: *_original.png, *_occluded.png (rows >= K black) and
*_completions.png (one column per image, `--completions` rows).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline import storage
from pipeline.checkpointing import TrainedModel
from pipeline.config import ExperimentConfig
from pipeline.datasets.images import decode, list_images
from pipeline.datasets.manifest import MANIFEST_NAME
from pipeline.engine import center_crop
from pipeline.errors import DataError, PixelRNNError
from pixelrnn_model import sample

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--complete-from DIR`, `--rows K`, `--split NAME`, `--completions M`."""
    parser.add_argument(
        "--complete-from", help="prepared dataset (local folder or URI) or local image folder"
    )
    parser.add_argument("--rows", type=int, default=16, help="rows kept when completing")
    parser.add_argument("--split", default="", help="split of a prepared dataset (default: val)")
    parser.add_argument("--completions", type=int, default=1, help="completions per image")


def run_completion(
    args: argparse.Namespace, trained: TrainedModel, generator: torch.Generator
) -> tuple[str, Path]:
    """Complete `args.n` images of `args.complete_from` and write the three grids.

    Returns:
        A one-line summary, and the completions grid's path.
    """
    from tqdm import tqdm

    from pipeline.images import save_grid  # torchvision: only when writing

    if args.completions < 1:
        raise PixelRNNError(f"--completions must be >= 1, got {args.completions}")
    model, levels = trained.model, trained.model.config.levels
    originals = load_images(args.complete_from, args.n, trained.config, args.split)
    count, channels, height, width = originals.shape  # (N, C, H, W)
    if not 0 < args.rows < height:
        raise PixelRNNError(f"--rows must be between 1 and {height - 1}, got {args.rows}")
    occluded = originals.clone()
    occluded[:, :, args.rows :] = 0
    prefix = originals.repeat(args.completions, 1, 1, 1)  # (M*N, C, H, W), completion-major
    with tqdm(total=(height - args.rows) * width * channels, unit="sub-pixel") as bar:
        completions = sample(
            model, len(prefix), height, width, generator=generator,
            temperature=args.temperature, prefix=prefix, rows=args.rows,
            progress=lambda done, total: bar.update(done - bar.n),
        )  # fmt: skip
    out = Path(args.out)
    paths = [
        save_grid(images, levels, out.with_name(f"{out.stem}_{name}.png"), columns=count)
        for name, images in (
            ("original", originals),
            ("occluded", occluded),
            ("completions", completions),
        )
    ]
    summary = f"completed {count} images below row {args.rows}: " + ", ".join(map(str, paths))
    return summary, paths[-1]


def load_images(root: str | Path, count: int, cfg: ExperimentConfig, split: str = "") -> Tensor:
    """The first `count` images of a prepared dataset or an image folder, as the model sees them.

    Returns:
        int64 (N, C, H, W) in [0, levels), centre-cropped to `data.crop_size` when it is set.
    """
    root = str(root)
    if storage.is_uri(root) or storage.is_file(storage.join(root, MANIFEST_NAME)):
        pixels = _prepared_images(root, count, split or cfg.data.val_split)
    else:
        pixels = _folder_images(Path(root), count, cfg.model.channels, cfg.model.levels)
    model = cfg.model
    if pixels.shape[1] != model.channels or int(pixels.max()) >= model.levels:
        raise DataError(
            f"{root}: images have {pixels.shape[1]} channels and values up to "
            f"{int(pixels.max())}; the model takes {model.channels} channels in [0, {model.levels})"
        )
    return center_crop(pixels, cfg.data.crop_size)


def _prepared_images(root: str, count: int, split: str) -> Tensor:
    """The first `count` rows of `split`'s shards, read straight from them (no Ray): a seeded
    random sample of the source, as `prepare` shuffles it."""
    import pyarrow.parquet as pq

    from pipeline.data import decode_pixels, open_prepared
    from pipeline.datasets.manifest import resolve

    dataset = open_prepared(root, verify_checksums=False)
    if split not in dataset.splits:
        raise DataError(f"{root}: no split {split!r} (this dataset has {dataset.splits})")
    filesystem, _ = resolve(dataset.root)
    columns: dict[str, list] = {"image": [], "label": [], "index": []}
    for path in dataset.shard_paths(split):
        table = pq.read_table(path, filesystem=filesystem, columns=list(columns))
        for name in columns:
            columns[name].extend(table.column(name).to_pylist()[: count - len(columns[name])])
        if len(columns["image"]) == count:
            break
    shape = (dataset.height, dataset.width, dataset.channels)
    logger.info("completing %d images of split %r of %s", len(columns["image"]), split, root)
    return torch.from_numpy(decode_pixels(columns, shape)["pixels"]).long()  # (N, C, H, W)


def _folder_images(root: Path, count: int, channels: int, levels: int) -> Tensor:
    """The first `count` images of a folder in sorted order, 8-bit values mapped to levels."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    names = list_images(root)[:count]
    if not names:
        raise DataError(f"{root}: no PNG/JPEG images here")
    arrays = []
    for name in names:
        image = decode(root / name, str(root / name)).convert("RGB" if channels == 3 else "L")
        array = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"{root / name}: {image.width}x{image.height}, unlike {names[0]}")
        arrays.append(array.astype(np.int64) * levels // 256)  # binary: >= 128 -> 1
    stacked = torch.from_numpy(np.stack(arrays))  # (N, H, W, C)
    return stacked.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
