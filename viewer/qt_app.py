"""The one QApplication, and Qt's offscreen platform where there is no display."""

from __future__ import annotations

import os
import sys


def headless_if_needed() -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def make_app():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("Lantern")
    app.setApplicationName("Lantern")
    from viewer.gui_gc import collect_on_gui_thread

    collect_on_gui_thread(app)  # never on a worker thread: see gui_gc
    return app
