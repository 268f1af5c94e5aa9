"""viewer.jobs: typed results and errors, latest-request-wins per key, two thread pools, and
cooperative cancellation. Every slow job here waits on a threading.Event the test sets, so the
test knows what is running when it acts."""

from __future__ import annotations

import logging
import threading

import pytest

pytest.importorskip("PySide6")

from engine import ImageLoadError, Progress  # noqa: E402
from viewer.jobs import CallJob, JobRunner, StepsJob, user_message  # noqa: E402

TIMEOUT = 5000


class Heard:
    """Every callback a job's caller receives, in order."""

    def __init__(self):
        self.events: list[tuple] = []

    def callbacks(self, name: str) -> dict:
        return {"on_done": lambda result: self.events.append((name, "done", result)),
                "on_failed": lambda exc: self.events.append((name, "failed", exc)),
                "on_progress": lambda progress: self.events.append((name, "progress", progress)),
                "on_cancelled": lambda: self.events.append((name, "cancelled"))}

    def of(self, name: str) -> list[tuple]:
        return [e for e in self.events if e[0] == name]


def settle(qtbot, *jobs) -> None:
    """Wait until the jobs' run() is over, then let their queued signals arrive."""
    for job in jobs:
        assert job.wait(TIMEOUT / 1000)
    qtbot.wait(100)


def test_results_and_progress_arrive_as_the_types_they_are(qtbot):
    runner, heard = JobRunner(), Heard()

    def steps():
        yield Progress("reading", 0, 2)
        yield Progress("thinking", 1, 2)
        return {"answer": 42}

    job = runner.start(StepsJob[dict](steps, "typed steps"), **heard.callbacks("steps"))
    qtbot.waitUntil(lambda: any(e[1] == "done" for e in heard.events), timeout=TIMEOUT)
    assert heard.events == [("steps", "progress", Progress("reading", 0, 2)),
                            ("steps", "progress", Progress("thinking", 1, 2)),
                            ("steps", "done", {"answer": 42})]
    assert job.what == "typed steps" and not runner.busy


def test_a_lantern_error_reaches_the_caller_as_itself_with_its_plain_words(qtbot):
    runner, heard = JobRunner(), Heard()
    error = ImageLoadError("the file ends before its pixel data", "/data/ward 3/scan.dcm")

    def fail():
        raise error

    runner.start(CallJob[int](fail, "opening an image"), **heard.callbacks("load"))
    qtbot.waitUntil(lambda: bool(heard.events), timeout=TIMEOUT)
    assert heard.events == [("load", "failed", error)]
    assert heard.events[0][2] is error  # the exception itself, not a text made from it
    assert user_message(error) == "scan.dcm: the file ends before its pixel data"


def test_an_unexpected_error_is_logged_with_its_traceback_and_shown_briefly(qtbot, caplog):
    caplog.set_level(logging.INFO, logger="lantern.jobs")
    runner, heard = JobRunner(), Heard()

    def broken():
        raise RuntimeError("index 7 is out of bounds for axis 0")

    runner.start(CallJob[int](broken, "making the overlay"), **heard.callbacks("overlay"))
    qtbot.waitUntil(lambda: bool(heard.events), timeout=TIMEOUT)
    [(_, kind, exc)] = heard.events
    assert kind == "failed" and isinstance(exc, RuntimeError)
    [record] = [r for r in caplog.records if r.name == "lantern.jobs"]
    assert record.levelno == logging.ERROR and "making the overlay" in record.getMessage()
    assert record.exc_info[1] is exc
    assert "Traceback" in caplog.text and "in broken" in caplog.text
    shown = user_message(exc, "making the overlay")
    assert shown == "Unexpected error while making the overlay (RuntimeError); the details are in the log."


@pytest.mark.parametrize("ending", ["result", "error", "progress and cancellation"])
def test_the_latest_job_of_a_key_wins_even_when_the_older_one_ends_last(qtbot, ending):
    runner, heard = JobRunner(), Heard()
    entered, release = threading.Event(), threading.Event()

    def slow_call():
        entered.set()
        assert release.wait(10)
        if ending == "error":
            raise ImageLoadError("too late to matter", "first.png")
        return "first"

    def slow_steps():
        yield Progress("first step", 0, 2)
        entered.set()
        assert release.wait(10)
        yield Progress("second step", 1, 2)  # reported after the newer job started
        return "first"

    first = StepsJob(slow_steps, "first") if ending.startswith("progress") else CallJob(slow_call, "first")
    runner.start(first, key="analysis", **heard.callbacks("first"))
    assert entered.wait(10)
    qtbot.wait(50)  # the first progress, sent before the newer job, may arrive: it was current then
    before = list(heard.of("first"))
    second = runner.start(CallJob(lambda: "second", "second"), key="analysis", **heard.callbacks("second"))
    qtbot.waitUntil(lambda: heard.of("second") == [("second", "done", "second")], timeout=TIMEOUT)
    assert not first.ended  # the older job is still running: it ends last
    release.set()
    settle(qtbot, first, second)
    assert heard.of("first") == before  # nothing new from the replaced job: no result, progress, error or cancellation
    assert all(e[1] == "progress" for e in before)
    assert not runner.running("analysis") and not runner.busy


def test_a_blocked_background_job_does_not_delay_interactive_work(qtbot):
    runner = JobRunner()
    assert runner.interactive is not runner.background
    release = threading.Event()
    # As many blocked jobs as the background pool has threads: were both kinds of work on one
    # pool, it would now be full and the interactive job would wait.
    blockers, started = [], []
    try:
        for n in range(runner.background.maxThreadCount()):
            entered = threading.Event()
            started.append(entered)
            job = CallJob(lambda e=entered: (e.set(), release.wait(30)), f"blocker {n}", background=True)
            blockers.append(runner.start(job))
        assert all(e.wait(10) for e in started), "the background pool should run the blockers"
        quick: list = []
        runner.start(CallJob(lambda: "opened", "opening an image"), on_done=quick.append)
        qtbot.waitUntil(lambda: quick == ["opened"], timeout=TIMEOUT)
        assert not any(job.ended for job in blockers)  # the background work is still blocked
    finally:
        release.set()
    settle(qtbot, *blockers)


def stoppable(entered: threading.Event, go: threading.Event, record: list, block_in_last_step: bool):
    """Steps that wait for the test between step 1 and step 2 (or inside the last step)."""
    def steps():
        finished = False
        try:
            yield Progress("one", 0, 3)
            if not block_in_last_step:
                entered.set()
                assert go.wait(10)
            yield Progress("two", 1, 3)
            if block_in_last_step:
                entered.set()
                assert go.wait(10)
            finished = True
            return "all done"
        finally:
            record.append("completed" if finished else "closed early")
    return steps


def test_cancel_closes_a_running_generator_between_steps_and_reports_cancelled(qtbot):
    runner, heard = JobRunner(), Heard()
    entered, go, record = threading.Event(), threading.Event(), []
    job = runner.start(StepsJob(stoppable(entered, go, record, False), "three steps"), key="check",
                       **heard.callbacks("check"))
    assert entered.wait(10)
    assert runner.cancel("check") and runner.running("check")  # running until it has stopped
    assert not runner.cancel("check")  # asked once is enough
    go.set()
    qtbot.waitUntil(lambda: ("check", "cancelled") in heard.events, timeout=TIMEOUT)
    settle(qtbot, job)
    assert record == ["closed early"]  # its finally ran: closed between steps, not run to the end
    assert [e[1] for e in heard.events if e[1] != "progress"] == ["cancelled"]  # never finished
    assert ("check", "progress", Progress("two", 1, 3)) not in heard.events  # nothing after the cancel
    assert not runner.running("check")


def test_a_job_cancelled_in_its_last_step_reports_cancelled_never_its_result(qtbot):
    runner, heard = JobRunner(), Heard()
    entered, go, record = threading.Event(), threading.Event(), []
    job = runner.start(StepsJob(stoppable(entered, go, record, True), "three steps"), key="check",
                       **heard.callbacks("check"))
    assert entered.wait(10)
    runner.cancel("check")
    go.set()  # the work completes after all
    settle(qtbot, job)
    assert record == ["completed"]
    assert heard.events[-1] == ("check", "cancelled")
    assert not [e for e in heard.events if e[1] == "done"]


def test_a_dropped_job_is_never_heard_from(qtbot):
    runner, heard = JobRunner(), Heard()
    entered, go, record = threading.Event(), threading.Event(), []
    job = runner.start(StepsJob(stoppable(entered, go, record, False), "three steps"), key="batch",
                       **heard.callbacks("batch"))
    assert entered.wait(10)
    heard.events.clear()
    assert runner.drop("batch") and not runner.running("batch")
    go.set()
    settle(qtbot, job)
    assert record == ["closed early"] and heard.events == []
    assert runner.wait(TIMEOUT)


def test_a_job_that_ends_after_its_window_is_gone_says_nothing(caplog):
    """Closing Lantern while a job runs deletes the signals' C++ side; the job's end must not
    print 'Signal source has been deleted' tracebacks."""
    import logging

    import shiboken6

    from viewer.jobs import CallJob

    job = CallJob(lambda: 42, "a late job")
    shiboken6.delete(job.signals)
    with caplog.at_level(logging.DEBUG, logger="lantern.jobs"):
        job.run()  # on this thread, as a pool would
    assert job.ended
    assert "ended after its window closed" in caplog.text
