"""Viewer building blocks without the main window: display mapping, jobs, logs, settings, CLI."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from engine import ImageLoadError, Progress  # noqa: E402
from viewer import logs  # noqa: E402
from viewer.app import parse_args  # noqa: E402
from viewer.display import (WINDOW_PRESETS, make_display_image, map_to_uint8,  # noqa: E402
                            overlay_lut)
from viewer.jobs import JobRunner, StepsJob, user_message  # noqa: E402
from viewer.session import Session  # noqa: E402
from viewer.settings import Settings  # noqa: E402
from viewer.viewport import Viewport  # noqa: E402


def test_presets_are_the_reading_room_ones():
    assert [(w, c) for _, w, c in WINDOW_PRESETS] == [(400, 40), (1500, -600), (150, 90), (2500, 480), (80, 40)]


def test_overlay_lut_threshold_and_contours_live_in_alpha():
    lut = overlay_lut("viridis", threshold=0.5)
    assert lut.shape == (256, 4) and lut.dtype == np.uint8
    assert lut[:127, 3].max() == 0 and lut[128:, 3].min() == 255
    contour = overlay_lut("viridis", threshold=0.0, contour=True)
    visible = np.flatnonzero(contour[:, 3])
    assert 0 < visible.size < 40
    assert any(abs(v / 255 - 0.6) < 0.02 for v in visible)
    jet = overlay_lut("jet")
    assert tuple(jet[255, :3]) == (128, 0, 0) and tuple(jet[0, :3]) == (0, 0, 128)


def test_display_image_keeps_integer_values_and_maps_levels():
    pixels = np.array([[-1024, 0], [1000, 3071]], dtype=np.float32)  # CT Hounsfield units
    display = make_display_image(pixels)
    assert display.data.dtype == np.uint16
    np.testing.assert_array_equal(display.data, [[0, 1024], [2024, 4095]])
    assert display.levels(40, 400) == (1024 + 40 - 200, 1024 + 40 + 200)
    floats = make_display_image(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))
    assert floats.data.max() == 65535 and floats.levels(0.5, 1.0) == pytest.approx((0, 65535))


def test_large_images_get_a_reduced_copy_shown_when_zoomed_out(qtbot):
    display = make_display_image(np.random.default_rng(0).integers(0, 4096, (2048, 2048)).astype(np.float32))
    assert display.reduced is not None and display.reduced.shape == (1024, 1024)
    viewport = Viewport()
    qtbot.addWidget(viewport)
    viewport.resize(600, 600)
    viewport.show()
    viewport.set_image(display, (0, 4095))
    qtbot.waitUntil(lambda: viewport.shows_reduced, timeout=2000)
    assert viewport.image.image.shape == (1024, 1024)
    viewport.box.scaleBy((0.2, 0.2))  # zoom in well past 1:2
    qtbot.waitUntil(lambda: not viewport.shows_reduced, timeout=2000)
    assert viewport.image.image.shape == (2048, 2048)
    assert viewport.image.mapRectToParent(viewport.image.boundingRect()).width() == pytest.approx(2048)


def test_map_to_uint8():
    np.testing.assert_array_equal(map_to_uint8(np.array([0.0, 0.5, 1.0, 2.0]), 1.0), [0, 128, 255, 255])


def test_generator_job_cancel_closes_the_generator(qtbot):
    runner = JobRunner()
    closed, done, cancelled = [], [], []

    def steps():
        try:
            for i in range(500):
                time.sleep(0.01)
                yield Progress("s", i, 500)
        finally:
            closed.append(True)
        return "finished"

    runner.start(StepsJob(steps, "test"), key="test", on_done=done.append, on_failed=lambda e: None,
                 on_progress=lambda p: None, on_cancelled=lambda: cancelled.append(True))
    time.sleep(0.05)
    assert runner.cancel("test")
    qtbot.waitUntil(lambda: cancelled == [True], timeout=5000)
    assert closed == [True] and done == []


def test_generator_job_reports_failures_readably(qtbot):
    runner = JobRunner()
    failed = []

    def steps():
        yield Progress("s", 0, 1)
        raise ImageLoadError("the file is empty", "scan.dcm")

    runner.start(StepsJob(steps, "test"), on_failed=lambda exc: failed.append(user_message(exc)))
    qtbot.waitUntil(lambda: bool(failed), timeout=5000)
    assert failed == ["scan.dcm: the file is empty"]
    # Anything else is no message for a reader: its type, and where the details are.
    unexpected = user_message(ValueError("x"), "analysing an image")
    assert unexpected.startswith("Unexpected error while analysing an image (ValueError)")
    assert "details are in the log" in unexpected


def test_log_keeps_tracebacks_without_file_names(qtbot, tmp_path):
    path = logs.setup_logging(tmp_path / "logs")
    try:
        bad = tmp_path / "DOE_JOHN_1970.dcm"
        bad.write_bytes(b"garbage that is no image at all")
        session = Session()
        failures = []
        session.imageFailed.connect(failures.append)
        session.open_paths([bad])
        qtbot.waitUntil(lambda: bool(failures), timeout=10_000)
        assert "DOE_JOHN_1970.dcm" in failures[0]  # the reader is told which file
        for handler in logging.getLogger("lantern").handlers:
            handler.flush()
        text = path.read_text()
        assert "Traceback" in text and logs.token(bad) in text
        assert "DOE_JOHN" not in text
    finally:
        for handler in list(logging.getLogger("lantern").handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == str(path):
                logging.getLogger("lantern").removeHandler(handler)
                handler.close()


def test_settings_file_round_trip(tmp_path):
    settings = Settings(tmp_path / "s.ini")
    settings.set("overlay/opacity", 0.3)
    settings.set("overlay/contour", True)
    for name in ("a.png", "b.png", "a.png"):
        settings.add_recent(tmp_path / name)
    settings.sync()
    again = Settings(tmp_path / "s.ini")
    assert again.get("overlay/opacity") == pytest.approx(0.3)
    assert again.get("overlay/contour") is True
    assert again.recent_files() == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_command_line():
    args = parse_args(["x.dcm", "folder", "--model", "m", "--engine", "onnx", "--bench", "--json"])
    assert [str(p) for p in args.paths] == ["x.dcm", "folder"]
    assert args.engine == "onnx" and args.bench and args.json
    with pytest.raises(SystemExit):
        parse_args(["--engine", "tensorflow"])


def test_calls_that_return_nothing_no_longer_exhaust_none(qapp):
    """PySide6 6.12 drops a reference to None on every call that returns nothing (setText,
    setEnabled, update...); the viewer compensates. Without it this loop aborts the interpreter
    ("none_dealloc"), as long test runs did at exit."""
    import sys

    from PySide6.QtWidgets import QLabel

    label = QLabel()
    for i in range(50_000):  # far more than None's natural reference count in a bare process
        label.setText("x")
        label.setEnabled(bool(i % 2))
    assert sys.getrefcount(None) > 1_000_000


def test_signal_emits_no_longer_exhaust_true():
    """PySide6 6.12's emit() drops a reference to True each call; the viewer compensates."""
    import sys

    from PySide6.QtCore import QObject, Signal

    class Pinger(QObject):
        ping = Signal(int)

    pinger = Pinger()
    pinger.ping.connect(lambda _v: None)
    for i in range(50_000):  # far more than True's natural reference count
        pinger.ping.emit(i)
    assert sys.getrefcount(True) > 1_000_000


def test_a_closed_runner_drops_late_results(qtbot):
    import threading

    from viewer.jobs import CallJob, JobRunner

    runner = JobRunner()
    release, got = threading.Event(), []
    runner.start(CallJob(lambda: release.wait(5) and "late", "waiting"), on_done=got.append, on_failed=got.append,
                 on_cancelled=lambda: got.append("cancelled"))
    runner.close()  # the window goes away while the job still runs
    release.set()
    assert runner.wait(5000)
    qtbot.wait(100)  # let any queued signal arrive
    assert got == []
    # A runner that stays open delivers.
    open_runner = JobRunner()
    open_runner.start(CallJob(lambda: "on time", "quick"), on_done=got.append, on_failed=got.append)
    qtbot.waitUntil(lambda: got == ["on time"], timeout=5000)
