"""Workaround for a reference-counting bug in PySide6 6.12 on CPython < 3.12.

``SignalInstance.emit()`` returns ``True`` without taking a reference to it, so every signal
emitted from Python (ours, pyqtgraph's, the workers') lowers ``True``'s reference count by one.
Before Python 3.12 made ``True`` immortal, the interpreter aborts with "bool_dealloc:
deallocating True or False" once that count reaches zero: after a few thousand emits, i.e.
minutes of window/level dragging, or at exit. A probe detects the bug; if present, ``True``'s
count is raised once by a margin no session can use up (2**40 emits). Remove this module when
PySide6 is fixed (the probe then makes ``apply`` a no-op anyway).
"""

from __future__ import annotations

import ctypes
import sys

MARGIN = 1 << 40
_applied = False


def emit_leaks_true() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    return sys.getrefcount(True) < before


def apply() -> bool:
    """Compensate the leak once per process; True when compensation was needed."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if not emit_leaks_true():
        return False
    # ob_refcnt is the first field of every CPython object; id() is its address.
    ctypes.c_ssize_t.from_address(id(True)).value += MARGIN
    _applied = True
    return True
