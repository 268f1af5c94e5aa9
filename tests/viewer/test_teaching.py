"""Teaching mode and presentation mode, driven through their real widgets (pytest-qt, offscreen)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.resources import TEACHING_SET

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtWidgets import QDockWidget, QLabel, QPushButton, QToolBar  # noqa: E402

import engine  # noqa: E402
from engine.workflows.labels import read_labels  # noqa: E402
from viewer.main_window import MainWindow  # noqa: E402
from viewer.settings import Settings  # noqa: E402
from viewer.teaching import TeachingWindow  # noqa: E402
from viewer.teaching_session import TeachingSession  # noqa: E402

TIMEOUT = 30_000
TEACHING = TEACHING_SET


@pytest.fixture(scope="module")
def demo_model(demo_bundle):
    return engine.load_model(demo_bundle, "onnx-int8")


def three_cases(folder: Path) -> Path:
    """A copy of the demo set cut to three cases: an effusion, a normal, a nodule (in that order)."""
    shutil.copytree(TEACHING, folder)
    rows = (folder / "labels.csv").read_text().splitlines()
    picked = [next(r for r in rows[1:] if f",{c}," in r) for c in ("effusion", "normal", "nodule")]
    (folder / "labels.csv").write_text("\n".join([rows[0], *picked]) + "\n")
    return folder / "labels.csv"


def visible_texts(widget) -> str:
    texts = [widget.windowTitle()]
    for label in widget.findChildren(QLabel):
        if label.isVisible():
            texts.append(label.text())
    for button in widget.findChildren(QPushButton):
        if button.isVisible():
            texts.append(button.text())
    return "\n".join(texts)


def click_image(qtbot, window: TeachingWindow, row: int, col: int) -> None:
    viewport = window.viewport
    scene = viewport.box.mapViewToScene(QPointF(col + 0.5, row + 0.5))
    at = viewport.view.mapFromScene(scene)
    qtbot.mouseClick(viewport.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(at.x(), at.y()))


def answer(qtbot, window: TeachingWindow, class_index: int) -> None:
    session = window.session
    qtbot.waitUntil(lambda: session.shown is not None and window.case_label.text().startswith(
        f"Case {session.index + 1} "), timeout=TIMEOUT)
    assert not window.reveal_button.isEnabled()  # nothing picked yet
    qtbot.mouseClick(window.class_buttons[class_index], Qt.MouseButton.LeftButton)
    assert window.reveal_button.isEnabled()
    qtbot.mouseClick(window.reveal_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: session.current.revealed, timeout=TIMEOUT)


def test_a_session_pick_mark_reveal_score_and_export(qtbot, tmp_path, demo_model):
    labelled = read_labels(three_cases(tmp_path / "set"), demo_model.bundle.classes)
    session = TeachingSession(labelled, demo_model, mc_samples=5)
    window = TeachingWindow(session)
    qtbot.addWidget(window)
    window.resize(1300, 850)
    window.show()
    session.start()
    qtbot.waitUntil(lambda: session.shown is not None and session.analysis is not None, timeout=TIMEOUT)

    # Before the reveal: the image only, no answer, no map, no truth, and no identifying text.
    assert window.case_label.text() == "Case 1 of 3"
    assert not window.viewport.overlay.isVisible() and window.truth.image is None
    assert not window.results.isVisible() and window.verdict.text() == ""
    shown = visible_texts(window)
    assert "case0" not in shown and "case1" not in shown and ".png" not in shown and "effusion" in shown

    # The learner clicks on the lesion (through the real image view) and picks "effusion".
    mask = session.shown.mask
    rows, cols = np.nonzero(mask)
    row, col = int(np.median(rows)), int(cols[np.argmin(np.abs(rows - np.median(rows)))])
    click_image(qtbot, window, row, col)
    assert session.current.click is not None
    assert abs(session.current.click[0] - row) <= 1 and abs(session.current.click[1] - col) <= 1
    answer(qtbot, window, labelled.classes.index("effusion"))

    # The reveal: truth, the learner's verdict, the model's answer with its map and uncertainty.
    analysis = session.analysis
    verdict = window.verdict.text()
    assert "Truth: effusion" in verdict and "You: effusion ✓" in verdict
    assert f"Model: {analysis.predicted_class}" in verdict and "Your mark is on the finding." in verdict
    assert window.viewport.overlay.isVisible() and window.viewport.overlay.image is not None
    assert window.truth.image is not None and window.truth.image.shape[:2] == mask.shape
    assert window.results.isVisible() and window.results.prediction.text().startswith("Predicted:")
    assert not any(b.isEnabled() for b in window.class_buttons)  # no changing the answer afterwards
    # Switching the map to another class redraws the overlay.
    before = window.viewport.overlay.image.copy()
    window.class_box.setCurrentIndex((analysis.predicted + 1) % 3)
    assert not np.array_equal(before, window.viewport.overlay.image)

    qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)
    answer(qtbot, window, labelled.classes.index("nodule"))  # case 2 is normal: wrong
    assert "You: nodule ✗" in window.verdict.text()
    qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)
    answer(qtbot, window, labelled.classes.index("nodule"))  # case 3 is a nodule: right
    assert window.next_button.text() == "See the scores ▶"
    qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)

    # The end: the learner's 2 of 3 against the model's own count.
    assert window.pages.currentIndex() == 1
    model_right = sum(a.model == a.case.label for a in session.answers)
    assert session.scores() == (2, model_right, 3)
    assert window.score_learner.text() == "Your score: 2 of 3 (67%)"
    assert window.score_model.text().startswith(f"The model's score: {model_right} of 3")
    assert window.table.rowCount() == 3 and window.table.item(1, 2).text() == "nodule ✗"

    first = window.export_csv(tmp_path / "exports")
    second = window.export_csv(tmp_path / "exports")
    assert first.name == "teaching-set.csv" and second.name == "teaching-set-2.csv"  # never overwritten
    text = first.read_text()
    assert ".png" not in text  # cases by number and labels line, not by file
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["case"] for r in rows] == ["1", "2", "3"] and [r["labels_line"] for r in rows] == ["2", "3", "4"]
    assert [r["truth"] for r in rows] == ["effusion", "normal", "nodule"]
    assert [r["learner"] for r in rows] == ["effusion", "nodule", "nodule"]
    assert [r["learner_correct"] for r in rows] == ["1", "0", "1"]
    assert rows[0]["mark_on_lesion"] == "1" and rows[1]["learner_mark_row"] == ""
    assert [r["model"] for r in rows] == [labelled.classes[a.model] for a in session.answers]
    assert all(0.0 <= float(r["model_confidence"]) <= 1.0 for r in rows)


def test_reveal_waits_for_the_model_and_needs_a_pick(qtbot, tmp_path, demo_model):
    labelled = read_labels(three_cases(tmp_path / "set"), demo_model.bundle.classes)
    session = TeachingSession(labelled, demo_model, mc_samples=0)
    window = TeachingWindow(session)
    qtbot.addWidget(window)
    window.show()
    session.start()
    qtbot.waitUntil(lambda: session.shown is not None, timeout=TIMEOUT)
    assert session.reveal() is False  # nothing picked
    session.pick(0)
    session.mark(10_000, -5)  # clamped onto the image
    h, w = session.shown.source.shape
    assert session.current.click == (h - 1, 0)
    with qtbot.waitSignal(session.revealed, timeout=TIMEOUT):
        assert session.reveal() is True  # revealed now, or as soon as the analysis arrives
    assert session.current.revealed and session.current.model is not None
    assert session.current.confidence is None  # MC dropout off: no confidence to report


def test_bad_case_is_reported_and_the_session_goes_on(qtbot, tmp_path, demo_model):
    csv_path = three_cases(tmp_path / "set")
    first = csv_path.read_text().splitlines()[1].split(",")[0]
    (tmp_path / "set" / first).write_bytes(b"not an image at all")
    session = TeachingSession(read_labels(csv_path, demo_model.bundle.classes), demo_model, mc_samples=0)
    window = TeachingWindow(session)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(session.caseFailed, timeout=TIMEOUT):
        session.start()
    assert window.verdict.text().startswith("⚠ Case 1:") and window.next_button.isVisible()
    qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.case_label.text() == "Case 2 of 3", timeout=TIMEOUT)


def make_window(qtbot, tmp_path) -> MainWindow:
    window = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    return window


def test_demo_teaching_set_is_one_menu_click_away(qtbot, tmp_path, demo_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(demo_bundle, "onnx-int8")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    window.actions_["teaching_demo"].trigger()
    qtbot.waitUntil(lambda: getattr(window, "teaching_window", None) is not None, timeout=TIMEOUT)
    teaching = window.teaching_window
    qtbot.waitUntil(lambda: teaching.case_label.text() == "Case 1 of 14", timeout=TIMEOUT)
    assert teaching.isVisible()
    teaching.close()


def test_a_labels_file_with_an_unknown_class_shows_a_clear_error(qtbot, tmp_path, demo_bundle):
    from viewer.teaching import open_teaching

    window = make_window(qtbot, tmp_path)
    window.load_model(demo_bundle, "onnx-int8")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    csv_path = three_cases(tmp_path / "set")
    csv_path.write_text(csv_path.read_text().replace(",nodule,", ",pneumothorax,"))
    open_teaching(window, csv_path)
    assert window.banner.isVisible()
    assert "labels.csv: line 4: unknown class 'pneumothorax'" in window.banner.text()
    assert getattr(window, "teaching_window", None) is None


def test_presentation_mode_full_screen_large_text_identifying_text_hidden(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    label = window.results.prediction
    size_before = label.font().pointSizeF()
    toolbar = window.findChild(QToolBar)
    assert toolbar.isVisible() and not window.hide_identifying
    window.actions_["presentation"].trigger()
    assert window.presentation.active and window.actions_["presentation"].isChecked()
    assert window.isFullScreen()
    assert window.hide_identifying and window.actions_["anonymize"].isChecked()
    assert not toolbar.isVisible() and not window.statusBar().isVisible()  # the status line names files
    browser = next(d for d in window.findChildren(QDockWidget) if d.objectName() == "Browser")
    assert not browser.isVisible()
    assert label.font().pointSizeF() >= 1.5 * size_before
    assert window.status_text.font().pointSizeF() >= 1.5 * 11
    window.actions_["presentation"].trigger()
    assert not window.presentation.active and not window.isFullScreen()
    assert not window.hide_identifying and not window.actions_["anonymize"].isChecked()
    assert toolbar.isVisible() and label.font().pointSizeF() == size_before
    assert window.statusBar().isVisible() and browser.isVisible()
