"""The log file: tracebacks for whoever supports the workstation, never patient identifiers.

Image file names often carry patient names, so every path the viewer opens is registered here
and replaced in log records by a short stable token; metadata is never logged at all.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from PySide6.QtCore import QStandardPaths

LOG_NAME = "lantern.log"
_lock = threading.Lock()
_secrets: dict[str, str] = {}


def token(path: str | Path) -> str:
    return "image-" + hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def register_path(path: str | Path) -> None:
    """Names that must not reach the log: the full path, and a file's name (the engine's
    messages name files by it). A folder's bare name is left alone: "studies" would otherwise
    be replaced in every log line that says the word."""
    path = Path(path)
    tok = token(path)
    texts = [str(path)] if path.is_dir() else [str(path), path.name]
    with _lock:
        for text in texts:
            if len(text) >= 3:
                _secrets[text] = tok


def redact(text: str) -> str:
    with _lock:
        items = sorted(_secrets.items(), key=lambda kv: -len(kv[0]))  # longest first
    for secret, tok in items:
        text = text.replace(secret, tok)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_folder() -> Path:
    return Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation))


def setup_logging(folder: Path | None = None) -> Path:
    """Log to ``folder`` (default: the user's data folder) and return the log file's path."""
    folder = Path(folder) if folder else log_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("lantern")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return path
