"""The test session's own temporary root: a fresh folder that is TMPDIR and RAY_TMPDIR for the
session and every process it starts, removed when the session ends.

Nothing the suite runs (Ray sessions, `_ray_lockfiles`, pytest's `tmp_path`s, subprocess
drivers) writes to the machine's temp folder, and Ray starts as on a machine where it never ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Ray's Unix sockets live at <ray temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/<name>,
# and a socket path has at most 107 characters. A test's Ray temp dir is <root>/<10 characters>,
# which leaves the root this many.
MAX_ROOT_CHARS = 30
ENV_KEYS = ("TMPDIR", "RAY_TMPDIR")


@contextlib.contextmanager
def session_root(grace_s: float = 15.0) -> Iterator[Path]:
    """A fresh folder under the current temp folder that TMPDIR, RAY_TMPDIR and `tempfile` point
    at while the context is open; on exit its leftover processes are ended and it is removed.

    Args:
        grace_s: how long processes still running from the root (a Ray dashboard or agent that
            outlives `ray.shutdown()` by a few seconds) get to exit before they are killed.
    """
    root = Path(tempfile.mkdtemp(prefix="px"))
    if len(str(root)) > MAX_ROOT_CHARS:
        root.rmdir()
        raise RuntimeError(
            f"the test temp root {root} is {len(str(root))} characters; Ray's socket paths under"
            f" it would pass 107, so set TMPDIR to a folder of at most"
            f" {MAX_ROOT_CHARS - 11} characters (e.g. TMPDIR=$(mktemp -d))"
        )
    # Ray's default temp root is $RAY_TMPDIR/ray; ray.cluster_utils.Cluster writes its address
    # file there without creating the folder (it exists only where Ray ran before).
    (root / "ray").mkdir()
    previous = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ.update(dict.fromkeys(ENV_KEYS, str(root)))
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
