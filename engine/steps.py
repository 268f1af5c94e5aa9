"""Long work in Lantern is a generator of steps: it yields :class:`Progress` between steps and
returns its result. The viewer's jobs drive one on a worker thread (and can stop it between
steps); :func:`run_to_end` drives one where nobody needs to stop it (the command line, a batch,
a test)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    stage: str
    step: int
    total: int

    @property
    def fraction(self) -> float:
        return self.step / self.total


Steps = Generator[Progress, None, T]


def run_to_end(steps: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run ``steps`` to its end and return its result, passing each progress to ``on_progress``."""
    while True:
        try:
            update = next(steps)
        except StopIteration as done:
            return done.value
        if on_progress is not None:
            on_progress(update)
