"""Python's cycle collector runs on the GUI thread only.

CPython collects cycles on whichever thread happens to allocate past its threshold. When that is a
worker (an analysis, an export importing highdicom, a weight file read) and the garbage holds a
Qt wrapper (a closed window, a deleted widget), the C++ destructor runs on the worker and
PySide6's override lookup then waits for the GIL the GUI thread will not give up: the process
hangs (seen: ``gc_collect_main`` under ``pydicom/sr/_cid_dict.py`` on an export worker, blocked in
``Shiboken::GilState::acquire`` from ``QObject::~QObject``), or crashes. So automatic collection
is switched off and a GUI-thread timer collects by the same generation thresholds instead (as
pyqtgraph's GarbageCollector does). Reference counting frees everything else as before.
"""

from __future__ import annotations

import gc

INTERVAL_MS = 500
_timer = None


def _collect(thresholds: tuple[int, int, int]) -> None:
    count0, count1, count2 = gc.get_count()
    if count0 > thresholds[0]:
        generation = 0
        if count1 > thresholds[1]:
            generation = 2 if count2 > thresholds[2] else 1
        gc.collect(generation)


def collect_on_gui_thread(app) -> None:
    """Install once per process, from the GUI thread, after the QApplication exists."""
    global _timer
    if _timer is not None:
        return
    from PySide6.QtCore import QTimer

    thresholds = gc.get_threshold()
    gc.disable()
    _timer = QTimer(app)
    _timer.setObjectName("lantern-gc")
    _timer.timeout.connect(lambda: _collect(thresholds))
    _timer.start(INTERVAL_MS)
