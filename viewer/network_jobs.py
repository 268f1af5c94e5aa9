"""Network work (echo, query, retrieve, send) off the GUI thread, on a pool of its own.

A C-MOVE can hold its thread for minutes while the PACS sends, and a dead node holds one for the
association timeout. On the interactive pool (two threads) two such waits would stop images from
opening; on the background pool one would hold up the worklist. Network jobs mostly wait on
sockets, so a pool of their own costs no CPU and keeps both of the others free.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from PySide6.QtCore import QObject, QThreadPool

from engine import Progress
from viewer.jobs import Job, JobRunner

T = TypeVar("T")
NETWORK_THREADS = 4
_pool: list[QThreadPool] = []


def network_pool() -> QThreadPool:
    if not _pool:
        pool = QThreadPool()
        pool.setObjectName("lantern-network")
        pool.setMaxThreadCount(NETWORK_THREADS)
        _pool.append(pool)
    return _pool[0]


def network_runner(parent: QObject) -> JobRunner:
    """A JobRunner whose "interactive" jobs run on the network pool (the runner's rules, latest
    request wins per key and nothing reported after a cancel, hold as for any other job)."""
    return JobRunner(parent, interactive=network_pool())


class NetworkJob(Job[T]):
    """``fn(progress, cancel)``: an engine call that reports ``Progress`` through a callback and
    stops when the ``threading.Event`` is set (move_study, get_study, send_files take both), so
    Cancel reaches the network, which a CallJob's cancel would not."""

    def __init__(self, fn: Callable[[Callable[[Progress], None], threading.Event], T], what: str):
        super().__init__(what)
        self.fn = fn

    def work(self) -> T:
        return self.fn(self._report, self._cancel)

    def _report(self, progress: Progress) -> None:
        self._emit(self.signals.progress, progress)
