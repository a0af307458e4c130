"""Locations that are local folders or URIs (`s3://`, `gs://`, `file://`), via pyarrow filesystems.

Ray Train and Tune write results and checkpoints under `train.storage_path` through pyarrow
themselves; this module gives the driver the same view of that storage for the small files we
keep beside them (run records), and lets `pixelrnn prepare` publish a dataset to a URI.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from pipeline.errors import PixelRNNError


def is_uri(location: str) -> bool:
    """True for `scheme://...` locations, False for local paths."""
    return "://" in location


def normalize(location: str) -> str:
    """A local path made absolute (Ray moves workers to other folders); a URI unchanged."""
    if is_uri(location):
        return location
    return str(Path(location).expanduser().resolve())


def join(location: str, *names: str) -> str:
    """`location/name/...` for a local path or a URI."""
    return "/".join([location.rstrip("/"), *names])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `location` and the path inside it.

    Raises:
        PixelRNNError: an unknown scheme, or a bucket that cannot be reached.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), normalize(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise PixelRNNError(f"{location}: cannot open this location ({error})") from None


def location_of(root: str, path: str) -> str:
    """Turn a filesystem path under `root`'s filesystem (as Ray reports it) into a location."""
    if not is_uri(root):
        return path
    return f"{root.split('://', 1)[0]}://{path}"  # file:// + /abs/path, s3:// + bucket/key


def read_text(location: str) -> str:
    """The text of one file. Raises FileNotFoundError when it is missing."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str, text: str) -> None:
    """Write one file, creating its folder; readers never see it half-written.

    Local files are written beside and renamed into place; an object store replaces an object
    only once its upload is complete.
    """
    fs, path = filesystem(location)
    parent, _, name = path.rpartition("/")
    fs.create_dir(parent, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{parent}/.{name}.partial" if local else path
    with fs.open_output_stream(target) as stream:
        stream.write(text.encode())
    if local:
        fs.move(target, path)


def is_file(location: str) -> bool:
    """True when `location` is an existing file."""
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def modified_s(location: str) -> float:
    """Modification time of a file, in seconds since the epoch."""
    fs, path = filesystem(location)
    return fs.get_file_info(path).mtime.timestamp()


def has_contents(location: str) -> bool:
    """True when the folder at `location` exists and holds anything."""
    return bool(_listing(location))


def subfolders(location: str) -> list[str]:
    """Names of the folders directly under `location` (none when it does not exist)."""
    return [info.base_name for info in _listing(location) if info.type == pafs.FileType.Directory]


def _listing(location: str) -> list[pafs.FileInfo]:
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return []
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def upload_folder(local: Path, location: str, last: str, replace: bool = False) -> None:
    """Copy a local folder to `location`, writing the file named `last` after all the others.

    Args:
        local: the folder to copy.
        location: the destination folder (local path or URI).
        last: a top-level file (a manifest) that readers look for first: uploaded last, so it
            never names files that are not there yet.
        replace: delete what `location` holds first.
    """
    fs, path = filesystem(location)
    if replace:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)
    for file in sorted(p for p in local.rglob("*") if p.is_file() and p != local / last):
        relative = file.relative_to(local).as_posix()
        fs.create_dir(f"{path}/{relative}".rpartition("/")[0], recursive=True)
        pafs.copy_files(str(file), f"{path}/{relative}", destination_filesystem=fs)
    pafs.copy_files(str(local / last), f"{path}/{last}", destination_filesystem=fs)
