"""Work off the GUI thread, and the rules that make its reports trustworthy.

A ``Job[T]`` runs on a worker thread and reports through Qt signals that arrive on the GUI
thread: ``progress`` (an ``engine.Progress``), then exactly one of ``finished`` (its result, a
``T``), ``failed`` (the exception itself) or ``cancelled``. A ``JobRunner`` starts the jobs of one
window and decides which reports still reach their callbacks:

- latest request wins, per key: starting a job under a key ("image", "analysis", "worklist"...)
  cancels the older job of that key, and nothing the older one reports (result, progress, error
  or cancellation) reaches a callback any more, however late it finishes. Callers keep no
  request ids and write no "is this still my job?" checks;
- a job asked to stop never reports a result: a late result or error becomes its cancellation;
- a closed runner (its window is going away) reports nothing at all.

Interactive and background work run on two thread pools, so that opening an image never waits
behind a worklist (see ``INTERACTIVE_THREADS``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from PySide6.QtCore import QEventLoop, QObject, QRunnable, QThread, QThreadPool, QTimer, Signal

from engine import LanternError, Progress, Steps

log = logging.getLogger("lantern.jobs")
T = TypeVar("T")

# Lantern is sized for a two-core workstation. Interactive work (open a file, load a model,
# analyse the shown image, make its display image and overlay) gets two threads: the session
# decodes one image while a model loads, and prepares an image for display while it is analysed.
# Background work (worklist batch, folder thumbnails, faithfulness, randomisation check,
# evaluation, temperature fitting, teaching preparation) gets one: a forward pass already spreads
# over both cores (onnxruntime's two intra-op threads), so a second background thread would only
# halve the speed of both and double their memory; the next background job waits its turn.
# Separate pools mean interactive work never queues behind background work; the cores are still
# shared, and the background threads ask the OS for less of them.
INTERACTIVE_THREADS = 2
BACKGROUND_THREADS = 1
_pools: dict[bool, QThreadPool] = {}


def thread_pool(background: bool) -> QThreadPool:
    """The process's interactive or background pool (one of each, shared by every window)."""
    pool = _pools.get(background)
    if pool is None:
        pool = QThreadPool()
        pool.setObjectName("lantern-background" if background else "lantern-interactive")
        pool.setMaxThreadCount(BACKGROUND_THREADS if background else INTERACTIVE_THREADS)
        if background:
            # A hint: Windows and macOS then give the GUI and interactive threads the cores
            # first. Linux's default scheduler ignores it (no harm done).
            pool.setThreadPriority(QThread.Priority.LowPriority)
        _pools[background] = pool
    return pool


def user_message(exc: BaseException, what: str | None = None) -> str:
    """The one place an exception becomes the words a user reads. An ``engine.LanternError``
    already says in plain words what is wrong and names the file; anything else is a fault in
    Lantern or its environment, whose type and traceback are for the log, not the screen."""
    if isinstance(exc, LanternError):
        return exc.message
    during = f" while {what}" if what else ""
    return f"Unexpected error{during} ({type(exc).__name__}); the details are in the log."


def log_failure(exc: BaseException, what: str) -> None:
    """Every failure goes to the log with its traceback (the engine chains the technical cause of
    its plain-words errors); only the unexpected ones are errors."""
    if isinstance(exc, LanternError):
        log.warning("%s failed: %s", what, exc.message, exc_info=exc)
    else:
        log.error("%s failed unexpectedly", what, exc_info=exc)


class JobSignals(QObject):
    """A job's reports. Emitted on the worker thread; Qt queues them to the GUI thread, where the
    runner decides whether they still reach anyone."""

    progress = Signal(object)  # engine.Progress(stage, step, total)
    finished = Signal(object)  # the result: a T, for a Job[T]
    failed = Signal(object)  # the Exception the work raised, itself (already logged with its traceback)
    cancelled = Signal()


class _Stopped(Exception):
    """Raised inside a job's work when it saw its cancel request between two steps."""


class Job(QRunnable, Generic[T]):
    """One piece of work whose result is a ``T``, run by a QThreadPool. Subclasses say what the
    work is (``work()``); ``what`` names it in the log and in unexpected-error messages.

    The pool deletes the C++ side after ``run()``: only Python attributes are used after that."""

    def __init__(self, what: str, *, background: bool = False):
        super().__init__()
        self.what = what
        self.background = background
        self.key: str | None = None  # set by the runner
        self.signals = JobSignals()
        self._cancel = threading.Event()
        self._ended = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop; safe from any thread. It stops at its next chance (before it
        starts, or between two steps) or, if it has none, finishes unheard."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until ``run()`` is over (the worker thread is free again)."""
        return self._ended.wait(timeout_s)

    def work(self) -> T:
        raise NotImplementedError

    def run(self) -> None:  # on a worker thread
        try:
            if self._cancel.is_set():  # cancelled while it waited in the queue: never started
                self._emit(self.signals.cancelled)
                return
            try:
                result = self.work()
            except _Stopped:
                self._emit(self.signals.cancelled)
                return
            except Exception as exc:  # noqa: BLE001 - logged here, and handed to the caller
                log_failure(exc, self.what)
                self._emit(self.signals.failed, exc)
                return
            self._emit(self.signals.finished, result)
        finally:
            self._ended.set()

    def _emit(self, signal, *args) -> None:
        """Report, unless the window (and with it the signals' C++ side) is already gone: a job
        that ends while Lantern closes has nobody to tell, and says so in the log only."""
        try:
            signal.emit(*args)
        except RuntimeError as exc:  # "Signal source has been deleted"
            log.debug("%s ended after its window closed: %s", self.what, exc)


class CallJob(Job[T]):
    """One call. It cannot stop half-way: cancelled before it starts, it is skipped; cancelled
    while it runs, its result is dropped."""

    def __init__(self, fn: Callable[[], T], what: str, *, background: bool = False):
        super().__init__(what, background=background)
        self.fn = fn

    def work(self) -> T:
        return self.fn()


class StepsJob(Job[T]):
    """Drives an engine generator of steps (``engine.steps.Steps[T]``: yields ``Progress``,
    returns a ``T``). Cancellation is cooperative: it is checked between steps, and the generator
    is then closed, so that its own cleanup (its ``finally`` blocks) runs on this thread."""

    def __init__(self, make_steps: Callable[[], Steps[T]], what: str, *, background: bool = False):
        super().__init__(what, background=background)
        self.make_steps = make_steps

    def work(self) -> T:
        steps = self.make_steps()
        try:
            while True:
                if self._cancel.is_set():
                    raise _Stopped
                try:
                    update = next(steps)
                except StopIteration as done:
                    return done.value
                self._emit(self.signals.progress, update)
        finally:
            steps.close()  # a no-op once the generator has returned or raised


@dataclass(frozen=True)
class _Callbacks:
    done: Callable[[Any], None] | None
    failed: Callable[[BaseException], None] | None
    progress: Callable[[Progress], None] | None
    cancelled: Callable[[], None] | None


class JobRunner(QObject):
    """Starts one window's jobs on the interactive or background pool and hands their reports to
    callbacks on the GUI thread, by the rules in this module's docstring."""

    def __init__(self, parent: QObject | None = None, *, interactive: QThreadPool | None = None,
                 background: QThreadPool | None = None):
        super().__init__(parent)
        self.interactive = interactive or thread_pool(background=False)
        self.background = background or thread_pool(background=True)
        self._callbacks: dict[Job, _Callbacks] = {}  # jobs whose end has not been reported
        self._latest: dict[str, Job] = {}  # key -> the one job of that key still listened to
        self._running: list[threading.Event] = []  # one per started job, set when its run() is over
        self._closed = False

    def start(self, job: Job[T], *, key: str | None = None, on_done: Callable[[T], None] | None = None,
              on_failed: Callable[[BaseException], None] | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              on_cancelled: Callable[[], None] | None = None) -> Job[T]:
        """Run ``job``; with a ``key``, the job of that key that came before it is cancelled and
        never heard from again. Callbacks run on the GUI thread; ``on_failed`` gets the
        exception (``user_message`` makes its text)."""
        if key is not None:
            self.drop(key)
            self._latest[key] = job
        job.key = key
        if self._closed:
            job.cancel()  # the window is going away: the job only reports that it did not run
        self._callbacks[job] = _Callbacks(on_done, on_failed, on_progress, on_cancelled)
        self._running = [ended for ended in self._running if not ended.is_set()] + [job._ended]
        signals = job.signals
        # functools.partial is no QObject: PySide queues its calls to the thread the signals
        # object lives in, the GUI thread (jobs are made there). A weak reference: the job owns
        # its signals, so a strong one would keep every job (and the images its work holds)
        # alive for as long as the connection, which is forever.
        ref = weakref.ref(job)
        signals.progress.connect(functools.partial(self._report, ref, "progress"))
        signals.finished.connect(functools.partial(self._report, ref, "done"))
        signals.failed.connect(functools.partial(self._report, ref, "failed"))
        signals.cancelled.connect(functools.partial(self._report, ref, "cancelled"))
        (self.background if job.background else self.interactive).start(job)
        return job

    def _report(self, ref: weakref.ref, kind: str, *args) -> None:
        """A job's signal, on the GUI thread: handed on only if someone still wants it."""
        job = ref()
        if job is None:
            return  # its end was reported already and nobody holds it any more
        current = job if job.key is None else self._latest.get(job.key)
        if kind == "progress":
            callbacks = self._callbacks.get(job)
        else:  # the end: forget the job before the callback, which may start its successor
            callbacks = self._callbacks.pop(job, None)
            if job.key is not None and current is job:
                del self._latest[job.key]
        if callbacks is None or self._closed or current is not job:
            return  # closed, or replaced / dropped under its key: its news is for nobody
        if job.cancel_requested:  # asked to stop: it reports its cancellation, never a result
            if kind == "progress":
                return
            kind, args = "cancelled", ()
        callback = getattr(callbacks, kind)
        if callback is not None:
            callback(*args)

    def running(self, key: str) -> bool:
        """A job of ``key`` has started and not yet reported its end (a cancelled one counts
        until its cancellation arrives; a dropped one does not)."""
        return key in self._latest

    def cancel(self, key: str) -> bool:
        """Ask the job of ``key`` to stop; its ``on_cancelled`` runs once it has. False if there
        was none, or it was already asked."""
        job = self._latest.get(key)
        if job is None or job.cancel_requested:
            return False
        job.cancel()
        return True

    def drop(self, key: str) -> bool:
        """Cancel the job of ``key`` and forget it: none of its callbacks run (the caller has
        moved on and says so itself). False if there was none."""
        job = self._latest.pop(key, None)
        if job is None:
            return False
        job.cancel()
        return True

    def close(self) -> None:
        """Stop reporting: the window these callbacks would update is going away. Jobs are asked
        to stop; whatever they still report is dropped."""
        self._closed = True
        for job in list(self._callbacks):
            job.cancel()
        self._latest.clear()

    @property
    def busy(self) -> bool:
        return bool(self._callbacks)

    def wait(self, msecs: int = 5000) -> bool:
        """Block until every job this runner started is over (other windows' jobs do not count)."""
        deadline = time.monotonic() + msecs / 1000
        return all(ended.wait(max(0.0, deadline - time.monotonic())) for ended in list(self._running))


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
