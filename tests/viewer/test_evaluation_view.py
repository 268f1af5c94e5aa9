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
        "Per class", "ROC", "Reliability", "Confusion matrix", "Pointing game"]
    per_class = dialog.tabs.widget(0)
    for row, values in enumerate(report["metrics"]["per_class"].values()):
        assert per_class.item(row, 0).text() == f"{values['sensitivity']:.3f}"
        assert per_class.item(row, 4).text() == f"{values['auc']:.3f}"
    confusion = dialog.tabs.widget(3)
    matrix = report["metrics"]["confusion_matrix"]["rows_true_columns_predicted"]
    assert [[int(confusion.item(r, c).text()) for c in range(3)] for r in range(3)] == matrix
    curves = [item for item in dialog.roc.getPlotItem().listDataItems() if item.name()]
    assert len(curves) == 3 and all("AUC" in c.name() for c in curves)
    assert f"accuracy {report['metrics']['accuracy']:.3f}" in dialog.status.text()
    assert report["reliability"]["after"] is None  # the shipped demo has no temperature
    saved = dialog.save(tmp_path / "out")
    assert sorted(p.name for p in saved.iterdir()) == ["confusion.png", "metrics.json", "reliability.png", "roc.png"]
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
