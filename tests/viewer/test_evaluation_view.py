"""The Evaluate dialog, driven through its widgets: run, cancel, fit a temperature, save."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.resources import TEACHING_LABELS

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402

from engine.bundle import load_bundle  # noqa: E402
from viewer.main_window import MainWindow  # noqa: E402
from viewer.settings import Settings  # noqa: E402

TIMEOUT = 60_000
TEACHING_LABELS = TEACHING_LABELS


def open_dialog(qtbot, tmp_path, bundle: Path):
    window = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.show()
    window.load_model(bundle, "onnx-int8")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    window.actions_["evaluate"].trigger()
    return window, window.evaluate_dialog


def test_evaluate_shows_metrics_plots_and_saves_figures(qtbot, tmp_path, demo_bundle):
    window, dialog = open_dialog(qtbot, tmp_path, demo_bundle)
    dialog.labels_path.setText(str(TEACHING_LABELS))
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=TIMEOUT)
    report = dialog.report
    assert [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())] == [
        "Per class", "ROC", "Precision-recall", "Reliability", "Confusion matrix",
        f"Mistakes ({len(report['mistakes'])})", "Pointing game"]
    per_class = dialog.tabs.widget(0)
    for row, values in enumerate(report["metrics"]["per_class"].values()):
        assert per_class.item(row, 0).text() == f"{values['sensitivity']:.3f}"
        assert per_class.item(row, 4).text() == f"{values['auc']:.3f}"
        assert per_class.item(row, 5).text() == f"{values['average_precision']:.3f}"
    confusion = dialog.tabs.widget(4)
    matrix = report["metrics"]["confusion_matrix"]["rows_true_columns_predicted"]
    assert [[int(confusion.item(r, c).text()) for c in range(3)] for r in range(3)] == matrix
    curves = [item for item in dialog.roc.getPlotItem().listDataItems() if item.name()]
    assert len(curves) == 3 and all("AUC" in c.name() for c in curves)
    assert f"accuracy {report['metrics']['accuracy']:.3f}" in dialog.status.text()
    assert report["reliability"]["after"] is None  # the shipped demo has no temperature
    saved = dialog.save(tmp_path / "out")
    assert sorted(p.name for p in saved.iterdir()) == ["confusion.png", "metrics.json", "mistakes.csv", "mistakes.png",
                                                       "pr.png", "reliability.png", "roc.png"]
    assert json.loads((saved / "metrics.json").read_text())["metrics"]["cases"] == 14


def test_fit_temperature_stores_it_and_reopens_the_model(qtbot, tmp_path, demo_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    window, dialog = open_dialog(qtbot, tmp_path, bundle)
    dialog.labels_path.setText(str(TEACHING_LABELS))
    dialog.fit.setChecked(True)
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.session.model.bundle.temperature != 1.0, timeout=TIMEOUT)
    stored = load_bundle(bundle)
    assert stored.temperature == window.session.model.bundle.temperature
    assert stored.manifest["calibration"]["fitted_on"] == str(TEACHING_LABELS)
    rel = dialog.report["reliability"]
    assert rel["after"] is not None and rel["after"]["ece"] == pytest.approx(stored.manifest["calibration"]["ece_after"])
    assert "→" in dialog.status.text()
    assert (demo_bundle / "manifest.json").read_text().count('"temperature"') == 0  # the original is untouched


def test_cancel_and_bad_labels(qtbot, tmp_path, demo_bundle):
    window, dialog = open_dialog(qtbot, tmp_path, demo_bundle)
    dialog.labels_path.setText(str(tmp_path / "missing.csv"))
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert dialog.status.text().startswith("⚠ missing.csv: could not read the labels file")
    assert dialog.run_button.isEnabled()

    dialog.labels_path.setText(str(TEACHING_LABELS))
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert dialog.cancel_button.isEnabled() and not dialog.run_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.progress.value() >= 1, timeout=TIMEOUT)
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.run_button.isEnabled(), timeout=TIMEOUT)
    assert dialog.status.text() == "Evaluation cancelled." and dialog.report is None


def test_precision_recall_curves_and_mistakes_open_in_the_reading_view(qtbot, tmp_path, demo_bundle):
    from engine.exports.figures import pr_steps

    window, dialog = open_dialog(qtbot, tmp_path, demo_bundle)
    dialog.labels_path.setText(str(TEACHING_LABELS))
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.report is not None, timeout=TIMEOUT)
    report = dialog.report
    curves = {item.name(): item for item in dialog.pr.getPlotItem().listDataItems()}
    for name, pr in report["metrics"]["precision_recall"].items():
        curve = curves[f"{name}: AP {pr['average_precision']:.3f}"]
        xs, ys = curve.getData()
        assert (xs.tolist(), ys.tolist()) == pr_steps(pr["recall"], pr["precision"])
        # the area under the drawn steps is the average precision: picture and figure agree
        assert sum((xs[1:] - xs[:-1]) * ys[1:]) == pytest.approx(pr["average_precision"], abs=1e-5)
    dialog.tabs.setCurrentWidget(dialog.pr)
    dialog.grab().save(str(tmp_path / "pr-tab.png"))

    mistakes = report["mistakes"]
    kinds = [m["kind"] for m in mistakes]
    assert "misclassified" in kinds  # the demo model gets one of the teaching cases wrong
    assert kinds == sorted(kinds, key=lambda k: k != "misclassified")  # misclassified first
    assert all((m["true"] != m["predicted"]) == (m["kind"] == "misclassified") for m in mistakes)
    assert all(m["uncertainty"]["samples"] == 20 for m in mistakes)  # MC dropout, the bundle's default
    view = dialog.mistakes
    dialog.tabs.setCurrentWidget(view)
    table = view.table
    assert table.rowCount() == len(mistakes)
    for row, m in enumerate(mistakes):
        assert [table.item(row, c).text() for c in (2, 3, 4)] == [m["file"], m["true"], m["predicted"]]
        assert table.item(row, 6).text() == f"{m['uncertainty']['confidence']:.3f}"
    qtbot.waitUntil(lambda: view.thumbnails_ready, timeout=TIMEOUT)
    assert all(not table.item(r, 0).icon().isNull() for r in range(table.rowCount()))
    dialog.grab().save(str(tmp_path / "mistakes-tab.png"))

    row = len(mistakes) - 1  # not the first: the click picks the case, not the list's start
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(row, 2)).center())
    wanted = Path(mistakes[row]["path"])
    qtbot.waitUntil(lambda: window.session.image is not None and window.session.image.source.path == wanted,
                    timeout=TIMEOUT)
    assert window.tabs.currentIndex() == 0  # the side-by-side reading view
    assert window.session.files == [Path(m["path"]) for m in mistakes]  # the other mistakes a step away
