"""Work off the GUI thread: QRunnable workers that report through a signals QObject.

Every job carries a request id. The window only keeps the id of the job it still wants, so a
result for an image the user has already left is recognised and dropped on arrival.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from typing import Any, Callable, Generator

from PySide6.QtCore import QEventLoop, QObject, QRunnable, QThreadPool, QTimer, Signal

log = logging.getLogger("lantern.jobs")
_ids = itertools.count(1)


class WorkerSignals(QObject):
    progress = Signal(int, int, str)  # step, total, stage
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()


def user_message(exc: BaseException) -> str:
    """What the user reads: the engine's plain-words message, else type and text."""
    message = getattr(exc, "message", None)
    return str(message) if message else f"{type(exc).__name__}: {exc}"


class FunctionWorker(QRunnable):
    """Runs one call; its return value or a readable error comes back as a signal."""

    def __init__(self, fn: Callable[[], Any], what: str):
        super().__init__()
        self.fn = fn
        self.what = what
        self.signals = WorkerSignals()

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # noqa: BLE001 - reported to the user and logged, not swallowed
            log.error("%s failed", self.what, exc_info=True)
            self.signals.failed.emit(user_message(exc))
            return
        self.signals.finished.emit(result)


class GeneratorWorker(QRunnable):
    """Drives a generator that yields progress objects (stage, step, total) and returns a
    result. Cancellation is cooperative: the flag is checked between yields and the generator
    is closed, so the engine's own cleanup runs."""

    def __init__(self, make_steps: Callable[[], Generator[Any, None, Any]], what: str):
        super().__init__()
        self.make_steps = make_steps
        self.what = what
        self.signals = WorkerSignals()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        steps = None
        try:
            if self._cancel.is_set():
                self.signals.cancelled.emit()
                return
            steps = self.make_steps()
            while True:
                if self._cancel.is_set():
                    steps.close()
                    self.signals.cancelled.emit()
                    return
                try:
                    update = next(steps)
                except StopIteration as done:
                    result = done.value
                    break
                self.signals.progress.emit(int(update.step), int(update.total), str(update.stage))
        except Exception as exc:  # noqa: BLE001 - reported to the user and logged, not swallowed
            log.error("%s failed", self.what, exc_info=True)
            self.signals.failed.emit(user_message(exc))
            return
        if self._cancel.is_set():
            self.signals.cancelled.emit()
        else:
            self.signals.finished.emit(result)


class JobRunner(QObject):
    """Starts workers on a thread pool and routes their signals, tagged with the request id,
    to callbacks on the GUI thread."""

    def __init__(self, parent: QObject | None = None, pool: QThreadPool | None = None):
        super().__init__(parent)
        self.pool = pool or QThreadPool.globalInstance()
        self._live: dict[int, QRunnable] = {}  # keeps workers (and their signals) alive
        self._closed = False

    def close(self) -> None:
        """Stop reporting: the window these callbacks would update is going away. Work still
        running finishes on its own; its results are dropped."""
        self._closed = True
        for request in list(self._live):
            self.cancel(request)

    def _start(self, worker, on_done, on_failed, on_progress=None, on_cancelled=None) -> int:
        request = next(_ids)
        self._live[request] = worker
        sig = worker.signals
        # functools.partial runs on the GUI thread: PySide queues it through a receiver there.
        sig.finished.connect(functools.partial(self._finish, request, on_done))
        sig.failed.connect(functools.partial(self._finish, request, on_failed))
        if on_progress is not None:
            sig.progress.connect(functools.partial(self._report, request, on_progress))
        sig.cancelled.connect(functools.partial(self._finish, request, on_cancelled))
        self.pool.start(worker)
        return request

    def _report(self, request: int, callback, *args) -> None:
        if not self._closed:
            callback(request, *args)

    def _finish(self, request: int, callback, *args) -> None:
        self._live.pop(request, None)
        if callback is not None and not self._closed:
            callback(request, *args)

    def call(self, fn: Callable[[], Any], what: str, on_done, on_failed) -> int:
        return self._start(FunctionWorker(fn, what), on_done, on_failed)

    def steps(self, make_steps, what: str, on_done, on_failed, on_progress, on_cancelled) -> int:
        return self._start(GeneratorWorker(make_steps, what), on_done, on_failed, on_progress, on_cancelled)

    def cancel(self, request: int | None) -> bool:
        worker = self._live.get(request) if request is not None else None
        if isinstance(worker, GeneratorWorker):
            worker.cancel()
            return True
        return False

    @property
    def busy(self) -> bool:
        return bool(self._live)

    def wait(self, msecs: int = 5000) -> bool:
        return self.pool.waitForDone(msecs)


def wait_until(app, done: Callable[[], bool], timeout_ms: int = 120_000) -> bool:
    """Spin the real event loop (not a busy processEvents loop) until ``done()`` or timeout."""
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(2)
    poll.timeout.connect(lambda: loop.quit() if done() else None)
    QTimer.singleShot(timeout_ms, loop.quit)
    poll.start()
    loop.exec()
    poll.stop()
    return bool(done())
