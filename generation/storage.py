"""Content-addressed, crash-safe storage for generated images."""

from __future__ import annotations

import os
import tempfile

from django.core.files.storage import FileSystemStorage


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
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
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
