"""What the service runs with, and the refusals to start that keep it safe by default.

A service bound to loopback is reachable only from this machine; anything else is reachable from
the network, where patients' images must not be analysed for whoever asks: off loopback the
service refuses to start without a bearer token (``--token-file``).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LanternError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_WORKERS = 2  # the machines Lantern runs on have a few cores; each analysis uses them all
DEFAULT_QUEUE = 8
DEFAULT_MAX_UPLOAD_MB = 64  # a large computed radiograph is ~20 MB; a mammogram can be ~50 MB
MAX_BATCH_FILES = 50
MIN_TOKEN_LENGTH = 16  # a short token can be guessed by trying: refuse it rather than trust it
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServiceSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None  # every request must carry it as "Authorization: Bearer <token>"
    workers: int = DEFAULT_WORKERS
    queue: int = DEFAULT_QUEUE  # requests admitted beyond the busy workers, waiting for one
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20  # the whole request body, a batch's files together
    max_batch_files: int = MAX_BATCH_FILES

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind to) is reachable only from this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def read_token(path: str | Path) -> str:
    """The bearer token in ``path`` (surrounding white space ignored), refused in plain words if
    missing, too short, or readable by every user of the machine."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise LanternError("the token file does not exist", path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LanternError(f"the token file could not be read: {exc}", path) from exc
    if os.name == "posix" and mode & stat.S_IROTH:
        raise LanternError("the token file is readable by every user of this machine; make it private "
                           f"(chmod 600 {path})", path)
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise LanternError(f"the token must be one word of at least {MIN_TOKEN_LENGTH} characters "
                           "(e.g. the output of 'openssl rand -hex 32')", path)
    return token


def checked_settings(settings: ServiceSettings) -> ServiceSettings:
    """``settings``, or a LanternError saying why the service must not start with them."""
    if not settings.loopback and settings.token is None:
        raise LanternError(f"refusing to listen on {settings.host} without a token: off loopback anyone on the "
                           "network could send images and read results. Give --token-file FILE (every request "
                           "must then carry 'Authorization: Bearer <token>'), or listen on 127.0.0.1")
    if settings.workers < 1:
        raise LanternError("--workers must be at least 1")
    if settings.queue < 0:
        raise LanternError("--queue must be 0 or more")
    if settings.max_upload_bytes < 1:
        raise LanternError("--max-upload-mb must be more than 0")
    if not 0 <= settings.port <= 65535:
        raise LanternError(f"--port must be between 0 and 65535, not {settings.port}")
    return settings
