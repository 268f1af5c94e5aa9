"""How many threads the engines compute on: the cores this process may use, lowered by LANTERN_THREADS."""

from __future__ import annotations

import logging
import os

import pytest

from engine.backends.base import THREADS_VARIABLE, thread_count


@pytest.fixture
def cores(monkeypatch) -> int:
    """Pretend the process may run on 4 cores, whatever this machine has."""
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 4)
    return 4


def test_uses_the_cores_the_process_may_run_on(cores):
    assert thread_count() == cores


def test_uses_the_affinity_not_the_machine(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert thread_count() == 1


def test_the_variable_lowers_it(cores, monkeypatch):
    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert thread_count() == 3
    monkeypatch.setenv(THREADS_VARIABLE, " 1 ")
    assert thread_count() == 1


def test_never_above_the_cores(cores, monkeypatch):
    monkeypatch.setenv(THREADS_VARIABLE, "64")
    assert thread_count() == cores


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_an_invalid_value_is_ignored_with_a_warning(cores, monkeypatch, caplog, value):
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with caplog.at_level(logging.WARNING, logger="engine.backends.base"):
        assert thread_count() == cores
    assert THREADS_VARIABLE in caplog.text and repr(value) in caplog.text


def test_an_empty_value_means_unset(cores, monkeypatch, caplog):
    monkeypatch.setenv(THREADS_VARIABLE, "")
    with caplog.at_level(logging.WARNING):
        assert thread_count() == cores
    assert not caplog.text


def test_onnx_sessions_use_it(cores, monkeypatch):
    pytest.importorskip("onnxruntime")
    from engine.backends.onnx_backend import session_options

    monkeypatch.setenv(THREADS_VARIABLE, "2")
    assert session_options().intra_op_num_threads == 2
