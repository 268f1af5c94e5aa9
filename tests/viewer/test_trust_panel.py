"""The Trust panel, driven through its real widgets (pytest-qt, offscreen)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import Qt  # noqa: E402

from engine.trust.calibration import reliability_diagram  # noqa: E402
from engine.trust.faithfulness import score_analysis  # noqa: E402
from viewer.main_window import MainWindow  # noqa: E402
from viewer.settings import Settings  # noqa: E402

TIMEOUT = 60_000


def open_demo(qtbot, tmp_path, bundle, study) -> MainWindow:
    window = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    window.load_model(bundle, "onnx-int8")
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    window.open_paths([study])
    qtbot.waitUntil(lambda: window.session.analysis is not None and bool(window.strip.buttons), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: study.name in window.trust_panel.target_label.text())
    return window


@pytest.fixture
def nodule_window(qtbot, tmp_path, demo_bundle, demo_studies):
    return open_demo(qtbot, tmp_path, demo_bundle, demo_studies / "demo_nodule.dcm")


@pytest.fixture
def uncalibrated_window(qtbot, tmp_path, demo_bundle, demo_studies):
    """The demo model without the reliability diagram its model card carries."""
    import shutil

    copy = tmp_path / "uncalibrated"
    shutil.copytree(demo_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["model_card"]["reliability"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return open_demo(qtbot, tmp_path, copy, demo_studies / "demo_nodule.dcm")


def test_faithfulness_is_scored_in_the_background_for_the_shown_map(qtbot, nodule_window):
    window, panel = nodule_window, nodule_window.trust_panel
    analysis = window.session.analysis
    qtbot.waitUntil(lambda: "Grad-CAM map of 'nodule'" in panel.target_label.text())
    qtbot.mouseClick(panel.score_button, Qt.MouseButton.LeftButton)
    assert not panel.score_button.isEnabled()  # running on the worker
    qtbot.waitUntil(lambda: not panel.scoring, timeout=TIMEOUT)
    found = panel.results[("gradcam", analysis.predicted)]
    expected = score_analysis(analysis, window.session.model.backend, "gradcam", analysis.predicted)
    assert found["faithfulness"].deletion_auc == pytest.approx(expected.deletion_auc, abs=1e-6)
    assert found["faithfulness"].insertion_auc == pytest.approx(expected.insertion_auc, abs=1e-6)
    text = panel.faithfulness.summary.text()
    assert f"Deletion AUC {expected.deletion_auc:.3f}" in text and "random map" in text
    xs, ys = panel.faithfulness.deletion.getData()
    assert len(xs) == len(expected.fractions) and np.allclose(ys, expected.deletion_curve)
    # Another class has not been scored; coming back shows the stored score again.
    other = (analysis.predicted + 1) % len(analysis.classes)
    qtbot.mouseClick(window.strip.buttons[other], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Not scored yet" in panel.faithfulness.summary.text())
    assert f"map of '{analysis.classes[other]}'" in panel.target_label.text()
    qtbot.mouseClick(window.strip.buttons[analysis.predicted], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: f"Deletion AUC {expected.deletion_auc:.3f}" in panel.faithfulness.summary.text())


@pytest.mark.slow
def test_randomisation_check_shows_every_step_and_a_verdict(qtbot, nodule_window, tmp_path):
    pytest.importorskip("torch")
    panel = nodule_window.trust_panel
    qtbot.mouseClick(panel.sanity_button, Qt.MouseButton.LeftButton)
    assert panel.cancel_button.isVisibleTo(panel)
    qtbot.waitUntil(lambda: not panel.checking, timeout=TIMEOUT)
    result = panel.results[("gradcam", nodule_window.session.analysis.predicted)]["sanity"]
    assert len(panel.sanity.cells) == len(result.steps) + 1
    assert not result.barely_changes and "Depends on the model" in panel.sanity.verdict.text()
    assert not panel.cancel_button.isVisibleTo(panel)
    # Everything run so far goes into a report, and a second report never overwrites the first.
    first, second = panel.save_report(tmp_path), panel.save_report(tmp_path)
    assert first != second and first.name == "demo_nodule-trust.json"
    record = json.loads(first.read_text())
    assert record["checks"][0]["randomisation_check"]["barely_changes"] is False
    card = json.loads((nodule_window.session.model.bundle.folder / "manifest.json").read_text())["model_card"]
    assert record["calibration"]["calibrated"] is True
    assert record["calibration"]["ece"] == pytest.approx(card["reliability"]["ece"])


def test_randomisation_check_can_be_cancelled(qtbot, nodule_window):
    pytest.importorskip("torch")
    panel = nodule_window.trust_panel
    qtbot.mouseClick(panel.sanity_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.checking, timeout=TIMEOUT)
    assert "cancelled" in panel.sanity.verdict.text()
    assert panel.sanity_button.isEnabled()


def test_onnx_only_bundle_says_the_check_needs_pytorch(qtbot, tmp_path, demo_bundle, demo_studies):
    bundle = tmp_path / "onnx-only"
    bundle.mkdir()
    for name in ("model.int8.onnx", "head.onnx", "ood.safetensors"):  # what the package ships
        shutil.copy(demo_bundle / name, bundle / name)
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    del manifest["weights"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    window = open_demo(qtbot, tmp_path, bundle, demo_studies / "demo_effusion.dcm")
    panel = window.trust_panel
    qtbot.mouseClick(panel.sanity_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.checking, timeout=TIMEOUT)
    assert "needs PyTorch" in panel.sanity.verdict.text()
    # Faithfulness needs only forward passes: it works on the ONNX-only install.
    qtbot.mouseClick(panel.score_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.scoring, timeout=TIMEOUT)
    assert "Deletion AUC" in panel.faithfulness.summary.text()


def test_the_demo_model_shows_the_reliability_its_model_card_measured(nodule_window):
    panel, results = nodule_window.trust_panel, nodule_window.results
    card = nodule_window.session.model.bundle.model_card["reliability"]
    assert f"Expected calibration error {card['ece']:.3f}" in panel.reliability.summary.text()
    assert panel.reliability.plot.isVisibleTo(panel)
    assert not results.calibration_note.isVisibleTo(results)


def test_calibration_warning_and_an_evaluation_file(uncalibrated_window, tmp_path):
    panel = uncalibrated_window.trust_panel
    assert "never been calibrated" in panel.reliability.summary.text()
    assert not panel.reliability.plot.isVisibleTo(panel)
    diagram = reliability_diagram([0.95, 0.9, 0.7, 0.65, 0.3], [1, 1, 1, 0, 0], bins=5)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"reliability": {"before": diagram.to_dict(), "after": None}}))
    panel.load_evaluation(metrics)
    assert f"Expected calibration error {diagram.ece:.3f}" in panel.reliability.summary.text()
    assert panel.reliability.plot.isVisibleTo(panel)
    heights = panel.reliability.bars.opts["height"]
    assert np.allclose(heights, diagram.accuracy[diagram.counts > 0])
    broken = tmp_path / "notes.json"
    broken.write_text("{}")
    panel.load_evaluation(broken)
    assert "notes.json: holds no reliability diagram" in panel.status.text()


def test_class_cut_off_hides_the_map_with_a_note_and_is_remembered(qtbot, nodule_window, tmp_path):
    window = nodule_window
    analysis = window.session.analysis
    below = int(np.argmin(analysis.probabilities))  # far below the default cut-off of 0.5
    assert analysis.probabilities[below] < 0.5 <= analysis.probabilities[analysis.predicted]
    qtbot.mouseClick(window.strip.buttons[below], Qt.MouseButton.LeftButton)
    assert window.explained.overlay.isVisible()  # shown while the option is off
    qtbot.mouseClick(window.controls.hide_below_cutoff, Qt.MouseButton.LeftButton)
    assert window.controls.hide_below_cutoff.isChecked()
    assert window.explained.overlay.image is None and not window.explained.overlay.isVisible()
    assert "< cut-off 0.50" in window.explained.corner_labels["top_right"].text()
    window.tabs.setCurrentWidget(window.compare)  # the compare view is made when shown
    assert "< cut-off 0.50" in window.compare.viewports["gradcam"].corner_labels["top_right"].text()
    window.tabs.setCurrentIndex(0)
    # The predicted class is above its cut-off: its map stays.
    qtbot.mouseClick(window.strip.buttons[analysis.predicted], Qt.MouseButton.LeftButton)
    assert window.explained.overlay.isVisible() and window.explained.overlay.image is not None
    assert "cut-off" not in window.explained.corner_labels["top_right"].text()
    assert window.settings.get("overlay/hide_below_cutoff") is True


def test_gauges_mark_cut_offs_and_warn_that_the_model_was_never_calibrated(uncalibrated_window):
    results = uncalibrated_window.results
    xs, _ = results.cutoff_markers.getData()
    assert list(xs) == [0.5, 0.5, 0.5]
    assert results.calibration_note.isVisibleTo(results)
    assert "never been calibrated" in results.calibration_note.text()


def test_compare_view_shows_method_agreement(nodule_window):
    from engine.trust.similarity import method_agreement

    window = nodule_window
    analysis = window.session.analysis
    expected = method_agreement(analysis.maps, window.class_index)
    window.tabs.setCurrentWidget(window.compare)
    text = window.compare.agreement.text()
    assert f"Grad-CAM vs Grad-CAM++: {expected[('gradcam', 'gradcam++')]:+.2f}" in text
    assert len(expected) == 3 and text.count(" vs ") == 3
