"""Crash-safe writes for run directories and caches.

A quality-tuning run may be killed at any instant (preemption, OOM killer, a
cancelled Celery task). Everything it writes is therefore written next to its
final name, flushed to disk, and renamed into place: a reader sees either the
old file, the complete new one, or nothing, never half a file. Directory
entries are fsynced too, because a rename is only durable once its directory is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (deepest first), then ``root`` itself."""
    for current, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(current) / name)
        fsync_dir(Path(current))


def temporary_sibling(path: Path) -> Path:
    # Hidden and suffixed, so that listings of the real entries never see it.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)``, fsync the result, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(path)
    try:
        write(temp)
        fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def publish_directory(staging: Path, final: Path) -> Path:
    """fsync a fully written ``staging`` directory and rename it to ``final`` (which must not exist)."""
    fsync_tree(staging)
    os.rename(staging, final)
    fsync_dir(final.parent)
    return final


def remove_directory(path: Path) -> None:
    """Delete a directory so that a kill midway never leaves a partial tree under its real name."""
    doomed = path.with_name(f".{path.name}.deleting")
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed)
