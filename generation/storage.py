"""Content-addressed, crash-safe storage for generated images."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.core.files.storage import FileSystemStorage

# A file being written; renamed to its content-addressed name once complete. A worker killed mid-write leaves one.
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".tmp-", ".part"


def content_addressed_name(sha256: str, extension: str = "png") -> str:
    # Two levels of fan-out keep directories small at millions of images. The
    # name says nothing about the model, only about the bytes.
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{extension}"


class ContentAddressedStorage(FileSystemStorage):
    """Files are named by their content hash, so a name is written at most once.

    Saving a name that exists is a no-op (same name means same bytes), and a
    new file appears under its name only complete and fsynced: it is written
    to a temporary file in the same directory and renamed into place, so a
    worker killed mid-write leaves no truncated image behind.
    """

    def get_available_name(self, name, max_length=None):
        return name

    def _save(self, name, content):
        full_path = self.path(name)
        if os.path.exists(full_path):
            return name
        directory = os.path.dirname(full_path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as tmp:
                if hasattr(content, "chunks"):
                    for chunk in content.chunks():
                        tmp.write(chunk)
                else:
                    tmp.write(content.read())
                tmp.flush()
                os.fsync(tmp.fileno())
            if self.file_permissions_mode is not None:
                os.chmod(tmp_path, self.file_permissions_mode)
            os.replace(tmp_path, full_path)
        except BaseException:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise
        return name

    def stale_partial_files(self, older_than_seconds: float) -> Iterator[Path]:
        """Half-written files (``.tmp-*.part``) untouched for ``older_than_seconds``: left by killed writers.

        Never an image: images only ever appear under their hash name, by rename. The age guard leaves alone
        the files that a live worker is writing right now.
        """
        root = Path(self.location)
        if not root.is_dir():
            return
        cutoff = time.time() - older_than_seconds
        for path in root.rglob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    yield path
            except FileNotFoundError:  # its writer finished or cleaned it up meanwhile
                continue
