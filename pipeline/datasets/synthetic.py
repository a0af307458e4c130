"""Writers of the official source formats from arrays, byte for byte as the owners publish them.

Tests build small fixtures with these, and the throughput benchmark builds large ones, so both
exercise exactly the readers a user's downloaded files go through. Images are uint8 (N, H, W, C).
"""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """One binary batch: per image 1 label byte + R, G, B planes (N, 3073 bytes)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3·32·32)
    records = np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1)
    path.write_bytes(records.tobytes())
    return path


def write_cifar_python(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """One python batch as the official files are: a Python 2 cPickle (protocol 2) dict with
    `batch_label`, `labels` (list), `data` (N, 3072) uint8 ndarray and `filenames`."""
    planes = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    body = b"}(" + _py2_str(b"batch_label") + _py2_str(path.name.encode())
    body += _py2_str(b"labels") + b"](" + b"".join(_int(int(v)) for v in labels) + b"e"
    body += _py2_str(b"data") + _py2_ndarray(planes)
    names = [f"image_{i}.png".encode() for i in range(len(images))]
    body += _py2_str(b"filenames") + b"](" + b"".join(map(_py2_str, names)) + b"eu."
    path.write_bytes(b"\x80\x02" + body)
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """An uncompressed `.npz` of the given arrays."""
    with open(path, "wb") as file:
        np.savez(file, **arrays)
    return path


def write_imagenet_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A downsampled-ImageNet npz batch: `data` (N, 3·S·S) channel-planar, `labels` 1..1000."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3·S·S)
    return write_npz(path, data=planes, labels=labels, mean=planes.mean(axis=0))


def write_amat(path: Path, images: np.ndarray) -> Path:
    """A binarized-MNIST `.amat`: one line of 784 space-separated 0/1 values per image."""
    lines = (" ".join(map(str, row)) for row in images.reshape(len(images), -1))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pngs(folder: Path, images: np.ndarray, names: list[str] | None = None) -> list[Path]:
    """One PNG per image (N, H, W, 3) under `folder` (names default to 00000.png, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / (names[i] if names else f"{i:05d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def tar_gz(folder: Path, archive: Path) -> Path:
    """`folder` packed as `archive` (.tar.gz) with the folder name as the top-level entry."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _py2_str(value: bytes) -> bytes:
    """A Python 2 `str` (SHORT_BINSTRING / BINSTRING opcode)."""
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def _int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_ndarray(array: np.ndarray) -> bytes:
    """A 2-D uint8 array pickled the way numpy 1.x under Python 2 did it."""
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
    minus_one = b"J" + struct.pack("<i", -1)
    dtype = b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN" + minus_one * 2 + b"K\x00tb"
    shape = b"(" + b"".join(_int(n) for n in array.shape) + b"t"
    state = b"(K\x01" + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb"
    return reconstruct + state
