"""`lantern --bench`: display latency and GUI responsiveness on large images, headless.

Figures: time from an opacity change and a window change to the repainted viewport (target
< 16 ms, one frame at 60 Hz), the longest GUI-thread gap seen by a 5 ms QTimer heartbeat while
an analysis runs (target < 50 ms), and open-to-analysed-overlay time for a ~2000 px radiograph.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from engine.synthetic.demo_data import radiograph_dicom_bytes
from viewer.jobs import BACKGROUND_THREADS, INTERACTIVE_THREADS, wait_until

REPEATS = 20
TIMEOUT_MS = 120_000


def synthetic_radiograph(size: int, seed: int = 0) -> np.ndarray:
    """A 16-bit chest-like picture: body, two dark lungs, a bright spine, a nodule, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 9000 + 18000 * np.exp(-(((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.55) ** 2) ** 2)
    for cx in (0.32, 0.68):
        lung = ((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        image[lung] -= 11000
    image += 14000 * np.exp(-((x - 0.5) / 0.035) ** 2)
    image += 9000 * np.exp(-(((x - 0.62) ** 2 + (y - 0.42) ** 2) / 0.0009))
    image += rng.normal(0, 600, image.shape).astype(np.float32)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _timed_repaints(action, widgets) -> list[float]:
    times = []
    for i in range(REPEATS):
        start = time.perf_counter()
        action(i)
        for widget in widgets:
            widget.repaint()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _summary(times: list[float]) -> dict:
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def run_bench(as_json: bool = False, model: Path | None = None, engine_name: str = "auto") -> int:
    from viewer.main_window import MainWindow
    from viewer.settings import Settings

    app = QApplication.instance()
    work = Path(tempfile.mkdtemp(prefix="lantern-bench-"))
    big = work / "bench_2048_16bit.png"
    cv2.imwrite(str(big), synthetic_radiograph(2048))
    window = MainWindow(Settings(work / "settings.ini"))
    window.resize(1600, 1000)
    window.show()
    results: dict = {"image": "2048x2048 uint16", "platform": app.platformName(),
                     # Other work on the machine inflates every figure; record how busy it was.
                     "cpus": os.cpu_count(),
                     "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                     "job_threads": {"interactive": INTERACTIVE_THREADS, "background": BACKGROUND_THREADS}}

    model_ok = False
    if model is not None:
        window.load_model(model, engine_name)
        model_ok = wait_until(app, lambda: window.session.model is not None, 60_000)
    results["model"] = str(model) if model_ok else None

    window.open_paths([big])
    wait_until(app, lambda: window.session.image is not None)
    if model_ok:
        wait_until(app, lambda: window.session.analysis is not None)
    app.processEvents()

    viewports = [window.original.view.viewport(), window.explained.view.viewport()]
    controls = window.controls
    results["opacity_change_repaint"] = _summary(_timed_repaints(
        lambda i: controls.opacity.setValue(30 + (i % 2) * 40), [window.explained.view.viewport()]))
    center, width = window.window_cw
    results["window_change_repaint"] = _summary(_timed_repaints(
        lambda i: window.set_window(center + (i % 5) * 300, width * (0.6 + 0.1 * (i % 4))), viewports))

    if model_ok:
        gaps: list[float] = []
        last = [time.perf_counter()]

        def beat():
            now = time.perf_counter()
            gaps.append((now - last[0]) * 1000)
            last[0] = now

        heart = QTimer()
        heart.setInterval(5)
        heart.timeout.connect(beat)
        window.session.analysis = None
        heart.start()
        window.session.analyse()
        wait_until(app, lambda: window.session.analysis is not None)
        heart.stop()
        results["gui_stall_during_analysis"] = {
            "max_gap_ms": round(max(gaps), 2), "heartbeats": len(gaps), "interval_ms": 5}

        # The case: an uncompressed DICOM radiograph of about 2000 x 2000 pixels.
        # Five different files, one after the other, as a reader steps through a study: one
        # opening alone says more about the machine's mood than about Lantern.
        opened = []
        for seed in range(1, 6):
            radiograph = work / f"radiograph_2000_{seed}.dcm"
            radiograph.write_bytes(radiograph_dicom_bytes(synthetic_radiograph(2000, seed=seed)))
            start = time.perf_counter()
            window.open_paths([radiograph])
            shown = wait_until(app, lambda: window.session.analysis is not None
                               and window.session.analysis.source == radiograph
                               and window.explained.overlay.isVisible())
            window.explained.view.viewport().repaint()
            if shown:
                opened.append((time.perf_counter() - start) * 1000)
        results["open_to_analysed_overlay_ms"] = _summary(opened) | {"opened": len(opened)} if opened else None
        results["engine"] = window.session.model.engine
    else:
        results["note"] = "no model bundle (pass --model): analysis figures skipped"

    window.close()
    if as_json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:32s} {value}")
    return 0
