"""Where a received instance goes: ``inbox/<Study Instance UID>/<SOP Instance UID>.dcm``.

Both names are made here from the UIDs, never taken from the sender as a path: a UID is digits
and dots (PS3.5 9.1), at most 64 characters, so a value that is anything else (``../../etc/x``)
gets a name derived from its hash instead, which keeps repeated copies of the same broken UID
together (and recognisable as duplicates) without letting any of its characters reach the path.
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from engine.errors import LanternError
from engine.files import write_bytes_atomic

MAX_UID = 64
# Leading zeros in a component break PS3.5 but are common and harmless in a file name.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
NO_STUDY = "unknown-study"  # instances without a Study Instance UID still belong together
_LOCK_STRIPES = 64


def safe_uid_name(uid: str | None) -> str | None:
    """``uid`` when it is a well-formed UID (only digits and dots, at most 64 characters), a
    name made from its hash when it is not, None when there is none."""
    text = (uid or "").strip().rstrip("\0")
    if not text:
        return None
    if len(text) <= MAX_UID and _UID.match(text):
        return text
    return "uid-" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True)
class Placement:
    """What became of one instance: where it is, and whether this copy wrote it."""

    path: Path
    duplicate: bool  # the same SOP Instance UID was already in the inbox: kept, not rewritten


class OutOfSpace(LanternError):
    """Writing would leave less free space than the floor, or the disk is full."""


class Inbox:
    """The folder received instances are written to: atomically, at most once per SOP Instance
    UID, and never when the disk would fall below ``min_free_bytes``."""

    def __init__(self, folder: str | Path, min_free_bytes: int):
        if min_free_bytes < 0:
            raise LanternError(f"the free-space floor cannot be negative ({min_free_bytes} bytes)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root = self.folder.resolve()
        self.min_free_bytes = min_free_bytes
        # One lock per stripe of target paths: two associations delivering the same instance at
        # once write it once; different instances rarely wait for each other.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def target(self, study_uid: str | None, sop_instance_uid: str | None) -> Path:
        study = safe_uid_name(study_uid) or NO_STUDY
        name = safe_uid_name(sop_instance_uid) or str(generate_uid())  # no UID: cannot be a duplicate
        path = self.root / study / f"{name}.dcm"
        # Cannot fail with the names above; kept so a future change to them cannot escape either.
        if path.parent.parent != self.root:
            raise LanternError(f"refusing to write outside the inbox: {path}")
        return path

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def place(self, target: Path, data: bytes) -> Placement:
        """Write ``data`` to ``target`` unless it is already there (a duplicate, kept as it is)."""
        with self._locks[hash(target) % _LOCK_STRIPES]:
            if target.exists():
                return Placement(target, duplicate=True)
            free = self.free_bytes()
            if free - len(data) < self.min_free_bytes:
                raise OutOfSpace(f"only {free // 2**20} MB free in the inbox, below the floor of "
                                 f"{self.min_free_bytes // 2**20} MB")
            try:
                write_bytes_atomic(target, data)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OutOfSpace(f"the inbox's disk is full ({exc.strerror})") from exc
                raise
        return Placement(target, duplicate=False)
