"""Folders of PNG/JPEG files: the `folder` source, and the decoding shared with ImageNet's PNGs.

Files are read in sorted relative-path order, `IMAGES_PER_UNIT` per read unit; a file that does
not decode, or (for fixed-size layouts) has another size, is a DataError naming it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.datasets.base import UNLABELED, Chunk, ReadUnit, SourcePlan, require_dir
from pipeline.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGES_PER_UNIT = 1000
ToArray = Callable[[Image.Image, str], np.ndarray]
"""Turns a decoded image (and its name for errors) into uint8 (H, W, C)."""


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the PNG/JPEG files under `root`, recursively, sorted.

    Hidden files and folders (".DS_Store", "._x.png" resource forks) are skipped.
    """
    names = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        prefix = Path(folder).relative_to(root)
        names.extend(
            (prefix / name).as_posix()
            for name in files
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
        )
    return sorted(names)


def decode(path: Path, where: str) -> Image.Image:
    """Fully decode one image file; unreadable or truncated files raise DataError."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise DataError(f"{where}: unreadable image (not a format Pillow recognises)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: unreadable image ({error})") from None


def exact_size(size: int) -> ToArray:
    """A converter that requires every image to be size×size and returns it as RGB (S, S, 3)."""

    def to_array(image: Image.Image, where: str) -> np.ndarray:
        if image.size != (size, size):
            raise DataError(
                f"{where}: image is {image.size[0]}x{image.size[1]}, expected {size}x{size} "
                "like the rest of this dataset (mixed image sizes)"
            )
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    return to_array


def center_fit(size: int) -> ToArray:
    """A converter that centre-crops to a square and resizes to size×size RGB (S, S, 3)."""

    def to_array(image: Image.Image, where: str) -> np.ndarray:
        fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
        return np.asarray(fitted, dtype=np.uint8)

    return to_array


def image_units(
    root: Path,
    names: list[str],
    split: str,
    to_array: ToArray,
    labels: list[int] | None = None,
    prefix: str = "",
) -> tuple[ReadUnit, ...]:
    """Read units of `IMAGES_PER_UNIT` files each, named `first .. last` file.

    Args:
        root: folder the `names` are relative to.
        names: image files in reading order.
        split: the source split of all of them.
        to_array: decoder to (H, W, C) uint8.
        labels: one label per name, or None for unlabeled (-1).
        prefix: prepended to names in errors and the progress bar (e.g. "train_32x32/").
    """
    units = []
    for first in range(0, len(names), IMAGES_PER_UNIT):
        batch = names[first : first + IMAGES_PER_UNIT]
        batch_labels = labels[first : first + IMAGES_PER_UNIT] if labels else None
        units.append(
            ReadUnit(
                name=prefix + (batch[0] if len(batch) == 1 else f"{batch[0]} .. {batch[-1]}"),
                split=split,
                read=partial(_read_images, root, batch, to_array, batch_labels),
                num_files=len(batch),
            )
        )
    return tuple(units)


def _read_images(
    root: Path, names: list[str], to_array: ToArray, labels: list[int] | None
) -> Iterator[Chunk]:
    images = np.stack([to_array(decode(root / n, str(root / n)), str(root / n)) for n in names])
    label_array = np.array(labels if labels else [UNLABELED] * len(names), dtype=np.int64)
    yield images, label_array  # (N, H, W, 3), (N,)


def plan_folder(input_path: Path, size: int) -> SourcePlan:
    """Plan the `folder` source: every PNG/JPEG under `input_path`, centre-cropped to size×size.

    Images directly under `input_path` are unlabeled (-1); when all images sit in first-level
    sub-folders, each sub-folder is a class (labels by sorted folder name, as torchvision's
    ImageFolder does). Everything goes to the train split; ask for `--val-fraction` to hold out.

    Returns:
        A plan yielding uint8 (size, size, 3) images.
    """
    root = require_dir(input_path, "a folder of PNG/JPEG images")
    names = list_images(root)
    if not names:
        raise DataError(
            f"{root}: no PNG/JPEG images found (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    classes = sorted({name.split("/")[0] for name in names})
    labelled = all("/" in name for name in names)
    class_index = {name: label for label, name in enumerate(classes)}
    labels = [class_index[name.split("/")[0]] for name in names] if labelled else None
    return SourcePlan(
        source="folder",
        layout="image-folder" if labelled else "images",
        input=str(input_path),
        shape=(size, size, 3),
        levels=256,
        units=image_units(root, names, "train", center_fit(size), labels),
        input_root=root,
        input_files=tuple(names),
        class_names=tuple(classes) if labelled else None,
        num_classes=len(classes) if labelled else None,
    )
