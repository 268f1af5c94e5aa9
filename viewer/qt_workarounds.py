"""Workaround for two reference-counting bugs in PySide6 6.12 on CPython < 3.12.

- ``SignalInstance.emit()`` returns ``True`` without taking a reference to it, so every signal
  emitted from Python (ours, pyqtgraph's, the workers') lowers ``True``'s reference count by one.
- Every method that returns nothing (``setText``, ``setEnabled``, ``update``, ``resize``,
  ``QTimer.singleShot``...) returns ``None`` the same way: each call lowers ``None``'s count.

Before Python 3.12 made ``True`` and ``None`` immortal, the interpreter aborts ("bool_dealloc" /
"none_dealloc: deallocating None") once such a count reaches zero: ``None`` starts at a few
thousand references in a bare process, so a window/level drag of a few minutes, or a long test
run, ends in a crash, often at exit. A probe detects each bug; where present, the object's count
is raised once by a margin no session can use up (2**40 calls). Remove this module when PySide6
is fixed (the probes then make ``apply`` a no-op anyway).
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


def void_call_leaks_none() -> bool:
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(8):
        probe.setObjectName("lantern-probe")
    return sys.getrefcount(None) < before


def _compensate(obj) -> None:
    # ob_refcnt is the first field of every CPython object; id() is its address.
    ctypes.c_ssize_t.from_address(id(obj)).value += MARGIN


def apply() -> bool:
    """Compensate each leak once per process; True when compensation was needed."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    leaks = [obj for obj, probe in ((True, emit_leaks_true), (None, void_call_leaks_none)) if probe()]
    for obj in leaks:
        _compensate(obj)
    _applied = bool(leaks)
    return _applied
