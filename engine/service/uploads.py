"""An upload as a file the loader can open, without anything the upload says becoming a path.

``load_image`` (and the DICOM exports, which read the source header again) take a path, so each
upload is copied into a temporary file in a folder private to this service process (mode 0700),
under a generated name, and removed when its request is done. The client's file name is never
used, not even its suffix: it can hold ``../``, a patient's name, or lie about the format. The
suffix the temporary file gets is sniffed from the bytes (it only changes how a raster file is
named in a plain-words message; the loader sniffs the format itself).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

_COPY_CHUNK = 1 << 20
# Magic numbers of the raster formats load_image reads; everything else is offered to the DICOM
# reader, which refuses what it cannot read.
_RASTER_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
                 (b"MM\x00*", ".tif"))


def sniffed_suffix(head: bytes) -> str:
    for magic, suffix in _RASTER_MAGIC:
        if head.startswith(magic):
            return suffix
    return ".dcm"


class PrivateFolder:
    """A temporary folder only this process's user can enter, removed by ``remove``."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="lantern-service-"))  # mkdtemp: mode 0700

    @contextmanager
    def saved(self, upload: BinaryIO) -> Iterator[Path]:
        """The upload's bytes as a new file here, removed after the block."""
        head = upload.read(16)
        upload.seek(0)
        path = self.path / f"{uuid.uuid4().hex}{sniffed_suffix(head)}"
        # O_EXCL: a fresh file, never an existing one (or a link planted under that name).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(upload, out, _COPY_CHUNK)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
