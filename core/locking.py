"""One process at a time: an exclusive, non-blocking ``flock`` on a file (no Django, no app).

The kernel drops an flock when its holder dies, even by SIGKILL, so there is never a stale lock to clean up
(local filesystems; NFS flock semantics vary). Used for a training run's directory (one trainer), a curation
run's folder (one worker computing it), and the probe that asks whether a trainer still holds its directory.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def try_lock(path: str | Path, mode: str = "a+b", **open_options) -> Iterator[IO | None]:
    """Open ``path`` (created if missing) and try to lock it exclusively without waiting.

    Yields the open file while this process holds the lock (released on leaving the block), or None when another
    process holds it.
    """
    with open(path, mode, **open_options) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def is_locked(path: str | Path) -> bool:
    """Whether a live process holds the lock on ``path`` (False when the file does not exist).

    The probe holds the lock for an instant: a process trying to take it in that instant fails as if it were held.
    """
    if not Path(path).exists():
        return False
    with try_lock(path) as handle:
        return handle is None
