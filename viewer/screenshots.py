"""`lantern --screenshots DIR`: the documentation pictures, rendered offscreen from the real
window after the analysis has finished."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication

from viewer.jobs import wait_until

log = logging.getLogger("lantern.screenshots")
SIZE = (1600, 1000)


def _grab(window, path: Path) -> None:
    app = QApplication.instance()
    for _ in range(5):  # let queued layout and repaint events settle
        app.processEvents()
    window.grab().save(str(path))
    print(f"wrote {path}")


def render_screenshots(out: Path, paths: list[Path], model: Path | None, engine_name: str = "auto") -> int:
    from viewer.about import install_about
    from viewer.main_window import MainWindow
    from viewer.settings import Settings

    app = QApplication.instance()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lantern-shots-"))
    window = MainWindow(Settings(work / "settings.ini"))
    install_about(window)  # the menu bar as `lantern` shows it (Help > About)
    window.resize(*SIZE)
    window.show()
    if model is None or not paths:
        print("screenshots need a model bundle and an image (the demo ones, or --model and paths)")
        return 2
    window.load_model(model, engine_name)
    if not wait_until(app, lambda: window.session.model is not None, 60_000):
        print(f"the model could not be loaded: {window.status_text.text()}")
        return 1
    window.open_paths(paths)
    if not wait_until(app, lambda: window.session.analysis is not None and bool(window.strip.buttons)):
        print(f"no analysis arrived: {window.status_text.text()}")
        return 1
    wait_until(app, lambda: window.studies.thumbnails_shown, 10_000)
    # Documentation shows a DICOM study (corner annotations, tags) when the folder has one.
    dicom = [i for i, f in enumerate(window.session.files) if f.suffix.lower() == ".dcm"]
    if dicom and window.session.files[window.session.index].suffix.lower() != ".dcm":
        nodule = [i for i in dicom if "nodule" in window.session.files[i].name]
        window.session.show_index((nodule or dicom)[0])
        wait_until(app, lambda: window.session.analysis is not None and bool(window.strip.buttons))
    _grab(window, out / "main-window.png")

    window.tabs.setCurrentWidget(window.compare)
    _grab(window, out / "compare-methods.png")
    window.tabs.setCurrentWidget(window.seen)
    _grab(window, out / "model-input.png")
    window.tabs.setCurrentIndex(0)

    broken = work / "damaged_study.dcm"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\xff" * 40)
    window.session.open_paths([broken])
    wait_until(app, window.banner.isVisible, 20_000)
    _grab(window, out / "error-state.png")
    window.close()
    return 0
