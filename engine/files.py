"""Writing files safely: atomically, and never over a file Lantern did not create."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

# The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _mode_for(path: Path) -> int:
    """A replaced file keeps its permissions; a new one gets what ``open()`` would give it.
    (mkstemp makes its file 0600, which would leave exports on a shared folder unreadable.)"""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_UMASK


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str, fallback: str) -> str:
    """``text`` as a file-name part that is the same on every OS and cannot leave its folder:
    runs of anything but letters, digits and ``._+-`` become one underscore; ``fallback`` when
    nothing is left (or only dots)."""
    name = _UNSAFE.sub("_", text).strip("_")
    return name if name.strip(".") else fallback


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write so a reader never sees half a file: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def unused_path(path: str | Path) -> Path:
    """``path`` if nothing is there yet, else ``name-2.ext``, ``name-3.ext``...: exports never
    overwrite an earlier export or a source file."""
    path = Path(path)
    if not path.exists():
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free file name next to {path}")


def folder_size(folder: str | Path) -> int:
    """Bytes in the files under ``folder`` (symlinks not followed or counted)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total
