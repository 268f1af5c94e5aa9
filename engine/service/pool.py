"""The worker threads that run analyses, and the admission count that keeps their queue bounded.

Every analysis request takes one place when it arrives (in the gate, before its body is read)
and gives it back when its response is done; there are ``workers + queue`` places. A request
that finds none gets 503 with Retry-After at once, so a burst costs the service nothing but the
refusals, and memory never holds more uploads than there are places.

Threads, not processes: the model is loaded once and onnxruntime (and the torch engine, under its
own lock) releases the GIL while it computes, so N threads share one copy of the weights.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
_SMOOTHING = 0.2  # weight of the newest job in the running mean of job times


class WorkerPool:
    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = workers, queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="lantern-service-worker")
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_job_s = 0.2  # until measured: about one full analysis of a radiograph

    @property
    def capacity(self) -> int:
        return self.workers + self.queue

    @property
    def admitted(self) -> int:
        return self._admitted

    def try_admit(self) -> bool:
        """Take a place if there is one."""
        with self._lock:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted = max(0, self._admitted - 1)

    def retry_after_s(self) -> int:
        """Whole seconds after which a place is likely free: the queue ahead, worked off by all
        workers at the mean job time (at least 1, as Retry-After counts in whole seconds)."""
        return max(1, math.ceil(self._mean_job_s * self.capacity / self.workers))

    async def run(self, job: Callable[..., T], *args) -> T:
        """``job(*args)`` on a worker thread; the event loop serves other requests meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, job, args)

    def _timed(self, job: Callable[..., T], args: tuple) -> T:
        started = time.perf_counter()
        try:
            return job(*args)
        finally:
            seconds = time.perf_counter() - started
            with self._lock:
                self._mean_job_s += _SMOOTHING * (seconds - self._mean_job_s)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
