"""The test session's own temporary root: a fresh folder that is TMPDIR and RAY_TMPDIR for the
session and every process it starts, removed when the session ends.

Nothing the suite runs (Ray sessions, `_ray_lockfiles`, pytest's `tmp_path`s, subprocess
drivers) writes to the machine's temp folder, and Ray starts as on a machine where it never ran.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Ray's Unix sockets live at <Ray temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/<name>,
# and a socket path has at most 107 characters. The longest tail seen is the dashboard's
# (a 7-digit pid at most), and the deepest Ray temp dir in the suite is <root>/<short dir>/ray
# (a driver whose RAY_TMPDIR is a `short_dir()`); the root gets what is left.
SOCKET_TAIL = len("/session_2026-12-04_15-42-55_327533_1234567/sockets/dash_MetricsHead")
DEEPEST_RAY_DIR = len("/r99/ray")
MAX_ROOT_CHARS = 107 - SOCKET_TAIL - DEEPEST_RAY_DIR


@contextlib.contextmanager
def session_root(grace_s: float = 15.0) -> Iterator[Path]:
    """A fresh folder under the current temp folder that TMPDIR, RAY_TMPDIR and `tempfile` point
    at while the context is open (and MPLCONFIGDIR at a folder in it: matplotlib's config and
    font cache otherwise go to HOME); on exit its leftover processes are ended and it is removed.

    Args:
        grace_s: how long processes still running from the root (a Ray dashboard or agent that
            outlives `ray.shutdown()` by a few seconds) get to exit before they are killed.
    """
    root = Path(tempfile.mkdtemp(prefix="p"))
    if len(str(root)) > MAX_ROOT_CHARS:
        root.rmdir()
        raise RuntimeError(
            f"the test temp root {root} is {len(str(root))} characters; Ray's socket paths under"
            f" it would pass 107, so set TMPDIR to a folder of at most"
            f" {MAX_ROOT_CHARS - len('/p12345678')} characters (e.g. TMPDIR=$(mktemp -d))"
        )
    # Ray's default temp root is $RAY_TMPDIR/ray; ray.cluster_utils.Cluster writes its address
    # file there without creating the folder (it exists only where Ray ran before).
    (root / "ray").mkdir()
    env = {"TMPDIR": str(root), "RAY_TMPDIR": str(root), "MPLCONFIGDIR": str(root / "matplotlib")}
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    tempfile.tempdir = None  # tempfile reads TMPDIR again
    try:
        yield root
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tempfile.tempdir = None
        end_processes_mentioning(str(root), grace_s)
        shutil.rmtree(root, ignore_errors=True)


def short_dir(prefix: str) -> Path:
    """A new, empty folder right under the current temp folder (the session root in a test
    session) named `prefix` and a number: a short path for a Ray temp dir or RAY_TMPDIR."""
    for number in itertools.count():
        path = Path(tempfile.gettempdir(), f"{prefix}{number}")
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            return path
    raise AssertionError("unreachable: itertools.count() does not end")


def processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains `text` (e.g. a Ray temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(int(entry.name))
    return found


def end_processes_mentioning(text: str, grace_s: float) -> None:
    """Wait up to `grace_s` for the processes whose command line names `text` to exit, then
    SIGKILL the rest and say so on stderr."""
    deadline = time.monotonic() + grace_s
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = processes_mentioning(text)
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftover:
        print(f"ended {len(leftover)} processes left running under {text}", file=sys.stderr)
