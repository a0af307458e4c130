"""Locations that are local folders or URIs (`s3://`, `gs://`, `file://`), via pyarrow filesystems.

Ray Train and Tune write results and checkpoints under `train.storage_path` through pyarrow
themselves; this module gives the driver the same view of that storage for the small files we
keep beside them (run records), and lets `pixelrnn prepare` publish a dataset to a URI.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
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


def join(location: str | Path, *names: str) -> str:
    """`location/name/...` for a local path or a URI."""
    return "/".join([str(location).rstrip("/"), *names])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `location` and the path inside it.

    Raises:
        PixelRNNError: an unknown scheme, S3 with no credentials anywhere, or a location that
            cannot be opened.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), normalize(location)
    if location.startswith("s3://") and not _have_aws_credentials():
        raise PixelRNNError(
            f"{location}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the node an instance role)"
        )
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
        message = _first_line(error)
        raise PixelRNNError(f"{location}: cannot open this location ({message})") from None


@functools.cache
def _have_aws_credentials() -> bool:
    """True when the AWS credential chain (variables, profiles, instance role) yields any; the
    AWS SDK would otherwise send unsigned requests and fail later with a less clear error."""
    import botocore.session

    return botocore.session.get_session().get_credentials() is not None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def reaching(location: str) -> Iterator[None]:
    """Turn a storage failure other than a missing file (an unreachable endpoint, a missing
    bucket, access denied) into a one-line `PixelRNNError` naming `location`."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as error:
        raise PixelRNNError(f"{location}: {_first_line(error)}") from None


def require_bucket(location: str) -> None:
    """For an object-store URI, check its bucket exists (a local path or `file://` passes).

    Raises:
        PixelRNNError: the bucket does not exist, or the store cannot be reached.
    """
    fs, path = filesystem(location)
    if not isinstance(fs, pafs.S3FileSystem | pafs.GcsFileSystem):
        return
    bucket = path.split("/", 1)[0]
    with reaching(location):
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise PixelRNNError(f"{location}: bucket {bucket!r} does not exist")


def location_of(root: str, path: str) -> str:
    """Turn a filesystem path under `root`'s filesystem (as Ray reports it) into a location."""
    if not is_uri(root):
        return path
    return f"{root.split('://', 1)[0]}://{path}"  # file:// + /abs/path, s3:// + bucket/key


def read_text(location: str) -> str:
    """The text of one file. Raises FileNotFoundError when it is missing."""
    return read_bytes(location).decode()


def read_bytes(location: str) -> bytes:
    """The bytes of one file. Raises FileNotFoundError when it is missing."""
    fs, path = filesystem(location)
    with reaching(location), fs.open_input_stream(path) as stream:
        return stream.read()


def write_text(location: str, text: str) -> None:
    """Write one file, creating its folder; readers never see it half-written.

    Local files are written beside and renamed into place; an object store replaces an object
    only once its upload is complete.
    """
    fs, path = filesystem(location)
    parent, _, name = path.rpartition("/")
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{parent}/.{name}.partial" if local else path
    with reaching(location):
        fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(target) as stream:
            stream.write(text.encode())
        if local:
            fs.move(target, path)


def is_file(location: str) -> bool:
    """True when `location` is an existing file."""
    fs, path = filesystem(location)
    with reaching(location):
        return fs.get_file_info(path).type == pafs.FileType.File


def modified_s(location: str) -> float:
    """Modification time of a file, in seconds since the epoch."""
    fs, path = filesystem(location)
    with reaching(location):
        return fs.get_file_info(path).mtime.timestamp()


def has_contents(location: str) -> bool:
    """True when the folder at `location` exists and holds anything."""
    return bool(_listing(location))


def subfolders(location: str) -> list[str]:
    """Names of the folders directly under `location` (none when it does not exist)."""
    return [info.base_name for info in _listing(location) if info.type == pafs.FileType.Directory]


def _listing(location: str) -> list[pafs.FileInfo]:
    fs, path = filesystem(location)
    with reaching(location):
        if fs.get_file_info(path).type == pafs.FileType.File:
            return []
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def latest_with(location: str, prefix: str, record: str) -> str | None:
    """The folder under `location` named `prefix...` whose file `record` was written last.

    Returns:
        The folder's name, or None when no such folder holds `record`.
    """
    records = {
        name: join(location, name, record)
        for name in subfolders(location)
        if name.startswith(prefix)
    }
    started = [name for name, path in records.items() if is_file(path)]
    return max(started, key=lambda name: modified_s(records[name]), default=None)


def upload_folder(
    local: Path,
    location: str,
    last: str,
    replace: bool = False,
    check: Callable[[], None] | None = None,
) -> None:
    """Copy a local folder to `location`, writing the file named `last` after all the others.

    Args:
        local: the folder to copy.
        location: the destination folder (local path or URI).
        last: a top-level file (a manifest) that readers look for first: uploaded last, so it
            never names files that are not there yet.
        replace: delete what `location` holds first.
        check: called once every other file is uploaded and before `last` is; what it raises
            stops the upload, so `last` is never written (e.g. a checksum pass over the copies).
    """
    fs, path = filesystem(location)
    with reaching(location):
        if replace:
            fs.delete_dir_contents(path, missing_dir_ok=True)
        fs.create_dir(path, recursive=True)
        for file in sorted(p for p in local.rglob("*") if p.is_file() and p != local / last):
            relative = file.relative_to(local).as_posix()
            fs.create_dir(f"{path}/{relative}".rpartition("/")[0], recursive=True)
            pafs.copy_files(str(file), f"{path}/{relative}", destination_filesystem=fs)
        if check is not None:
            check()
        pafs.copy_files(str(local / last), f"{path}/{last}", destination_filesystem=fs)


def download(location: str, destination: Path) -> Path:
    """Copy the file at `location` (local path or URI) to the local file `destination`.

    Raises:
        FileNotFoundError: nothing at `location`.
        PixelRNNError: the storage cannot be reached.
    """
    fs, path = filesystem(location)
    with reaching(location):
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(location)
        pafs.copy_files(path, str(destination), source_filesystem=fs)
    return destination
