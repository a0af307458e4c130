"""Uniform access to a source's files, whether in an extracted folder or a downloaded archive."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """True when `path` is a file named like a tar archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


class FolderFiles:
    """Files under a folder; names are POSIX paths relative to it."""

    def __init__(self, root: Path):
        self.root = root
        self.sizes = {
            path.relative_to(root).as_posix(): path.stat().st_size
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    def label(self, name: str) -> str:
        """How errors name the file `name`: its path."""
        return str(self.root / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Open one file for reading."""
        with open(self.root / name, "rb") as file:
            yield file


class ArchiveFiles:
    """Regular members of a tar archive (.tar, .tar.gz); names are member paths.

    Listing reads the archive once; each `open` streams from the start to its member, so reading
    the members in archive order costs about one pass per member in the worst case and memory
    stays at one member's read buffer.
    """

    def __init__(self, path: Path):
        self.path = path
        with self._tar() as tar, _archive_errors(path):
            self.sizes = {member.name: member.size for member in tar if member.isfile()}

    def label(self, name: str) -> str:
        """How errors name the member `name`: archive path, colon, member path."""
        return f"{self.path}:{name}"

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Stream one member; errors in the compressed stream become DataErrors."""
        with self._tar() as tar, _archive_errors(self.path):
            for member in tar:
                if member.name == name:
                    yield tar.extractfile(member)
                    return
            raise DataError(f"{self.label(name)}: member vanished from the archive")

    def _tar(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DataError(f"{self.path}: not a readable tar archive ({error})") from None


@contextmanager
def _archive_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{path}: corrupt or truncated archive ({error})") from None


def open_files(path: Path) -> FolderFiles | ArchiveFiles:
    """The files of an extracted folder or of a tar archive at `path`."""
    if is_archive(path):
        return ArchiveFiles(path)
    if path.is_dir():
        return FolderFiles(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    raise DataError(f"{path}: expected a folder or a .tar.gz archive")
