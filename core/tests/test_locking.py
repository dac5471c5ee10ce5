"""One process at a time: the flock helper says who holds a file, and the kernel frees it when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from core.locking import is_locked, try_lock


def test_a_lock_is_held_until_the_block_ends_and_a_second_try_is_refused(tmp_path):
    path = tmp_path / "run.lock"
    assert not is_locked(path) and not path.exists()  # the probe creates nothing
    with try_lock(path) as handle:
        assert handle is not None
        with try_lock(path) as second:  # another open file description: flock refuses it, even in this process
            assert second is None
        assert is_locked(path)
    assert not is_locked(path)


def test_a_killed_holder_releases_its_lock(tmp_path):
    path = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; sys.path.insert(0, sys.argv[1]); from core.locking import try_lock\n"
                "with try_lock(sys.argv[2]) as h:\n    print('held', flush=True); time.sleep(60)"
            ),
            str(Path(__file__).resolve().parents[2]),
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(path)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while is_locked(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_locked(path)
