"""What happened to a DICOM listener, one :class:`NetworkEvent` at a time, in words safe to show:
the viewer's status line, ``lantern-engine listen``'s output and its refusals file read them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class NetworkEvent:
    """One thing that happened to the listener: ``kind`` is "stored", "duplicate", "refused" (an
    instance, with ``status``) or "rejected" (an association)."""

    when: str  # local time, ISO 8601
    kind: str
    calling_ae: str
    address: str
    sop_instance_uid: str = ""
    status: int | None = None
    reason: str = ""
    path: Path | None = None

    @property
    def is_refusal(self) -> bool:
        return self.kind in ("refused", "rejected")


def printable(value, limit: int = 128) -> str:
    """A sender's text as it goes into logs, events and the refusals file: one line, no control
    characters (a UID with a newline in it must not forge a log line), bounded in length."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")
