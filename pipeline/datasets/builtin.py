"""The built-in dataset: random crops of the PNG photographs inside the scikit-image wheel.

Offline (never scikit-image's pooch downloads), so `make demo` and tests need nothing else. Each
photograph belongs to one split, so no val/test crop shares a photograph with train. A crop is a
random square, side log-uniform in [size, short side / 2], resized to size×size; seeded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.base import SPLITS, UNLABELED, Chunk, ReadUnit, SourcePlan
from pipeline.datasets.images import decode
from pipeline.errors import DataError

DEFAULT_SIZE = 32
DEFAULT_COUNTS = {"train": 4000, "val": 400, "test": 400}
# Fixed photo -> split assignment; the stereo pair motorcycle_left/right (one scene) stays together.
PHOTOGRAPHS = {
    "astronaut.png": "train",
    "brick.png": "train",
    "cell.png": "train",
    "clock_motion.png": "train",
    "grass.png": "train",
    "gravel.png": "train",
    "ihc.png": "train",
    "moon.png": "train",
    "motorcycle_left.png": "train",
    "motorcycle_right.png": "train",
    "page.png": "train",
    "text.png": "train",
    "chelsea.png": "val",
    "coins.png": "val",
    "coffee.png": "test",
    "camera.png": "test",
}


def skimage_data_dir() -> Path:
    """The `skimage/data` folder of the installed wheel (found without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("builtin: scikit-image is not installed; it ships the built-in photos")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def plan(size: int, counts: dict[str, int], seed: int) -> SourcePlan:
    """Plan the built-in dataset.

    Args:
        size: side of the square output images.
        counts: images per split, e.g. {"train": 4000, "val": 400, "test": 400}.
        seed: makes the crops (positions and scales) reproducible.

    Returns:
        A plan yielding uint8 (size, size, 3) images (grey photos replicated to RGB), label -1.
    """
    data_dir = skimage_data_dir()
    present = [name for name in PHOTOGRAPHS if (data_dir / name).is_file()]
    units = []
    for split, count in counts.items():
        photos = [name for name in present if PHOTOGRAPHS[name] == split]
        if count and not photos:
            raise DataError(f"builtin: no photograph for the {split} split found in {data_dir}")
        if count:
            read = partial(_read_split, data_dir, split, photos, size, count, seed)
            name = f"{split}: {', '.join(photos)}"
            units.append(ReadUnit(name=name, split=split, read=read, num_files=len(photos)))
    return SourcePlan(
        source="builtin",
        layout="skimage-photographs",
        input=f"scikit-image {importlib.metadata.version('scikit-image')}",
        shape=(size, size, 3),
        levels=256,
        units=tuple(units),
        input_root=data_dir,
        input_files=tuple(present),
    )


def _read_split(
    data_dir: Path, split: str, photos: list[str], size: int, count: int, seed: int
) -> Iterator[Chunk]:
    """Yield the split's `count` crops (count, size, size, 3) in a seeded random order, label -1.

    Crops are spread evenly over `photos`; each photo's crops come from a generator seeded by
    (seed, photo), the interleaving from one seeded by (seed, split), so shards mix all photos.
    """
    crops = []
    for position, name in enumerate(photos):
        share = count // len(photos) + (position < count % len(photos))
        crops.append(_crops(data_dir / name, size, share, (seed, list(PHOTOGRAPHS).index(name))))
    images = np.concatenate(crops)
    # Stream ids past the photo ids, one per split, keep the shuffles independent of the crops.
    order = np.random.default_rng((seed, len(PHOTOGRAPHS) + SPLITS.index(split)))
    yield images[order.permutation(count)], np.full(count, UNLABELED, dtype=np.int64)


def _crops(path: Path, size: int, count: int, seed: tuple[int, int]) -> np.ndarray:
    """`count` random square crops of one photograph resized to (count, size, size, 3)."""
    photo = decode(path, path.name).convert("RGB")
    width, height = photo.size
    if min(width, height) < size:
        raise DataError(
            f"builtin: size {size} exceeds the photograph {path.name} ({width}x{height})"
        )
    rng = np.random.default_rng(seed)
    largest = max(size, min(width, height) // 2)
    sides = np.exp(rng.uniform(np.log(size), np.log(largest), count)).round().astype(int)
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, side in enumerate(sides):
        left, top = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        box = (int(left), int(top), int(left + side), int(top + side))
        crops[i] = np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return crops
