"""The viewer's main window, driven through its real widgets (pytest-qt, offscreen)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QEvent, QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine import Progress  # noqa: E402
from viewer.main_window import MainWindow  # noqa: E402
from viewer.session import Session  # noqa: E402
from viewer.settings import Settings  # noqa: E402

TIMEOUT = 20_000


def write_png(path: Path, seed: int = 0, size: int = 160) -> Path:
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size)) * 1500 + 500).astype(np.uint16)
    cv2.circle(image, (size // 3, size // 2), size // 8, 4000, -1)
    cv2.rectangle(image, (size // 2, size // 5), (size - 10, size // 3), 3000, -1)
    cv2.imwrite(str(path), image)
    return path


def write_dicom(path: Path, patient="Doe^Jane", frames: int = 1) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = patient, "ID-4711", "20240301", "CT"
    ds.Rows = ds.Columns = 96
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    pixels = np.full((frames, 96, 96), 1024, np.uint16)
    for i in range(frames):
        cv2.circle(pixels[i], (48, 48), 10 + 5 * i, 1400, -1)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_window(qtbot, tmp_path, session=None) -> MainWindow:
    window = MainWindow(Settings(tmp_path / "settings.ini"), session)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    return window


def wait_for_analysis(qtbot, window):
    qtbot.waitUntil(lambda: window.session.analysis is not None and bool(window.strip.buttons), timeout=TIMEOUT)
    return window.session.analysis


@pytest.fixture
def analysed(qtbot, tmp_path, tiny_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(tiny_bundle)
    window.open_paths([write_png(tmp_path / "chest.png")])
    wait_for_analysis(qtbot, window)
    return window


def test_analysis_reaches_results_strip_and_gauges(analysed):
    a = analysed.session.analysis
    results = analysed.results
    assert results.prediction.text().startswith(f"Predicted: {a.predicted_class}")
    for label, name, p in zip(results.class_labels, a.classes, a.probabilities):
        assert f"{name}: {p:.3f}" in label.text()
    np.testing.assert_allclose(results.bars.opts["width"], a.probabilities, rtol=1e-6)
    assert [b.text().split("\n")[0] for b in analysed.strip.buttons] == list(a.classes)
    for button, p in zip(analysed.strip.buttons, a.probabilities):
        assert button.text().endswith(f"{float(p):.1%}")
    u = a.uncertainty
    assert results.confidence.value == pytest.approx(u.confidence)
    assert results.mutual_info.value == pytest.approx(u.mutual_information)
    assert results.confidence.marker.value() == pytest.approx(u.threshold)
    assert results.flag.isVisibleTo(results) == u.flagged
    assert "tiny-test-model" in results.model_info.text() and "torch" in results.model_info.text()
    assert not results.demo_notice.isVisibleTo(results)
    assert analysed.explained.overlay.isVisible()
    assert analysed.seen.viewport.image.image.shape[:2] == a.model_input.seen.shape[:2]
    grid = a.maps["gradcam"].grid[a.predicted]
    assert analysed.seen.viewport.overlay.image.shape == grid.shape


def test_clicking_a_class_thumbnail_changes_the_overlay(qtbot, analysed):
    a = analysed.session.analysis
    shown = analysed.class_index
    before = analysed.explained.overlay.image.copy()
    maps = a.maps["gradcam"].normalized
    others = [i for i in range(len(a.classes)) if not np.allclose(maps[i], maps[shown], atol=1 / 255)]
    if not others:
        analysed.controls.method.setCurrentIndex(analysed.controls.method.findData("layercam"))
        before = analysed.explained.overlay.image.copy()
        maps = a.maps["layercam"].normalized
        others = [i for i in range(len(a.classes)) if not np.allclose(maps[i], maps[shown], atol=1 / 255)]
    assert others, "the test model gives every class the same map"
    qtbot.mouseClick(analysed.strip.buttons[others[0]], Qt.MouseButton.LeftButton)
    after = analysed.explained.overlay.image
    assert analysed.class_index == others[0]
    assert not np.array_equal(before, after)
    assert analysed.strip.buttons[others[0]].isChecked()


def test_method_and_compare_view(analysed):
    a = analysed.session.analysis
    compare = analysed.compare.viewports
    assert set(compare) == {"gradcam", "gradcam++", "layercam"}
    assert all(v.overlay.image is None for v in compare.values())  # made when the tab is shown
    analysed.tabs.setCurrentWidget(analysed.compare)
    idx = analysed.class_index
    for method, viewport in compare.items():
        expected = np.clip(a.maps[method].normalized[idx] * 255 + 0.5, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(viewport.overlay.image, expected)
    analysed.controls.method.setCurrentIndex(analysed.controls.method.findData("gradcam++"))
    np.testing.assert_array_equal(analysed.explained.overlay.image, compare["gradcam++"].overlay.image)


def test_opacity_slider_and_keys_change_overlay_opacity(qtbot, analysed):
    analysed.controls.opacity.setValue(80)
    assert analysed.explained.overlay.opacity() == pytest.approx(0.8)
    qtbot.keyClick(analysed, Qt.Key.Key_BracketLeft)
    assert analysed.explained.overlay.opacity() == pytest.approx(0.7)
    qtbot.keyClick(analysed, Qt.Key.Key_O)
    assert not analysed.explained.overlay.isVisible()
    qtbot.keyClick(analysed, Qt.Key.Key_O)
    assert analysed.explained.overlay.isVisible()


def test_threshold_and_contour_change_the_lut_alpha_only(analysed):
    data_before = analysed.explained.overlay.image
    analysed.controls.threshold.setValue(50)
    lut = analysed.explained.overlay.lut
    assert lut[:120, 3].max() == 0 and lut[140:, 3].min() == 255
    analysed.controls.contour.setChecked(True)
    assert 0 < (analysed.explained.overlay.lut[:, 3] > 0).sum() < 40
    assert analysed.explained.overlay.image is data_before


def _span(viewport) -> float:
    (x0, x1), _ = viewport.box.viewRange()
    return x1 - x0


def _center(viewport) -> float:
    (x0, x1), _ = viewport.box.viewRange()
    return (x0 + x1) / 2


def test_zooming_one_viewport_moves_the_other(qtbot, analysed):
    # pyqtgraph links views by screen pixels, so a one-pixel width difference between the two
    # viewports shows up as a tiny range difference: compare spans and centres, not raw ranges.
    before = _span(analysed.explained)
    analysed.original.box.scaleBy((0.5, 0.5))
    qtbot.waitUntil(lambda: _span(analysed.explained) < 0.75 * before, timeout=2000)
    assert _span(analysed.explained) == pytest.approx(_span(analysed.original), rel=0.01)
    assert _center(analysed.explained) == pytest.approx(_center(analysed.original), rel=0.01)


def _drag(widget, button, start: QPointF, delta: QPointF, steps: int = 6) -> None:
    def send(kind, pos, buttons, which):
        event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), which, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)

    send(QEvent.Type.MouseButtonPress, start, button, button)
    for i in range(1, steps + 1):
        send(QEvent.Type.MouseMove, start + delta * (i / steps), button, Qt.MouseButton.NoButton)
    send(QEvent.Type.MouseButtonRelease, start + delta, Qt.MouseButton.NoButton, button)


def _double_click(widget, pos: QPointF) -> None:
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    # The order a real double click arrives in; pyqtgraph dispatches clicks on release.
    for kind, buttons in ((QEvent.Type.MouseButtonPress, left), (QEvent.Type.MouseButtonRelease, none),
                          (QEvent.Type.MouseButtonDblClick, left), (QEvent.Type.MouseButtonRelease, none)):
        event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), left, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)


def test_left_drag_changes_window_levels_in_both_viewports(qtbot, analysed):
    before = tuple(analysed.original.image.levels)
    view = analysed.original.view.viewport()
    center = QPointF(view.width() / 2, view.height() / 2)
    _drag(view, Qt.MouseButton.LeftButton, center, QPointF(80, 40))
    after = tuple(analysed.original.image.levels)
    assert after != before
    assert tuple(analysed.explained.image.levels) == after
    assert "W " in analysed.original.corner_labels["bottom_left"].text()


def test_right_drag_zooms_and_keys_set_presets(qtbot, analysed):
    range_before = analysed.original.box.viewRange()
    view = analysed.explained.view.viewport()
    _drag(view, Qt.MouseButton.RightButton, QPointF(view.width() / 2, view.height() / 2), QPointF(0, -60))
    assert analysed.original.box.viewRange() != range_before
    qtbot.keyClick(analysed, Qt.Key.Key_9)  # full range (a PNG: the HU presets are CT's)
    low, high = analysed.session.image.display.value_range
    assert analysed.window_cw == pytest.approx(((low + high) / 2, high - low))
    qtbot.keyClick(analysed, Qt.Key.Key_Space)
    src = analysed.session.image.source.window
    assert analysed.window_cw == (src.center, src.width)
    qtbot.keyClick(analysed, Qt.Key.Key_V)
    assert not analysed.original.isVisible() and analysed.explained.isVisible()


def slow_steps(record):
    def factory(image, model, options):
        try:
            for step in range(200):
                time.sleep(0.02)
                yield Progress("slow", step, 200)
        finally:
            record.append("closed")
        raise AssertionError("the slow analysis should have been cancelled")
    return factory


def test_cancel_stops_a_running_analysis(qtbot, tmp_path, tiny_bundle):
    record: list[str] = []
    session = Session(steps_factory=slow_steps(record))
    window = make_window(qtbot, tmp_path, session)
    session.load_model(tiny_bundle)
    window.open_paths([write_png(tmp_path / "a.png")])
    qtbot.waitUntil(lambda: window.cancel_button.isVisible() and window.progress.value() > 2, timeout=TIMEOUT)
    with qtbot.assertNotEmitted(session.analysisReady, wait=800):
        qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: record == ["closed"], timeout=5000)
    assert window.results.prediction.text() == "Analysis cancelled"
    assert not window.cancel_button.isVisible()
    assert session.analysis is None


def test_results_for_a_left_image_are_dropped(qtbot, tmp_path, tiny_bundle):
    """The first image's analysis is held until the reader has moved on to the second image and
    seen its analysis; released then, it finishes last. Its result must never be shown."""
    import threading

    import engine

    first, second = write_png(tmp_path / "first.png", 1), write_png(tmp_path / "second.png", 2)
    held, release, returned = threading.Event(), threading.Event(), threading.Event()

    def first_is_held(image, model, options):
        result = yield from engine.analysis_steps(image, model, options)
        if image.path == first:  # computed, and held back after its last step: it cannot be stopped now
            held.set()
            try:
                assert release.wait(30)
            finally:
                returned.set()
        return result

    session = Session(steps_factory=first_is_held)
    window = make_window(qtbot, tmp_path, session)
    window.load_model(tiny_bundle)
    qtbot.waitUntil(lambda: session.model is not None, timeout=TIMEOUT)
    shown: list[Path] = []  # every analysis the window is given to display
    session.analysisReady.connect(lambda analysis: shown.append(analysis.source))
    window.open_paths([first, second])
    qtbot.waitUntil(lambda: session.image is not None and session.image.source.path == first, timeout=TIMEOUT)
    assert held.wait(TIMEOUT / 1000)
    try:
        session.step(1)  # the reader moves on while the first analysis is still running
        analysis = wait_for_analysis(qtbot, window)
        assert analysis.source == second
    finally:
        release.set()
    assert returned.wait(TIMEOUT / 1000)
    qtbot.wait(300)  # whatever the first job sent after its release has arrived by now
    assert first not in shown
    assert shown == [second]
    assert session.analysis.source == second and session.image.source.path == second
    assert window.status_text.text().startswith(f"second.png: {analysis.predicted_class}")


def test_corrupt_file_shows_message_and_window_keeps_working(qtbot, tmp_path, tiny_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(tiny_bundle)
    bad = tmp_path / "broken_scan.dcm"
    bad.write_bytes(b"DICM? no, just some bytes that are not an image" * 3)
    window.open_paths([bad])
    qtbot.waitUntil(window.banner.isVisible, timeout=TIMEOUT)
    assert "broken_scan.dcm" in window.banner.text()
    assert "broken_scan.dcm" in window.status_text.text()
    window.open_paths([write_png(tmp_path / "good.png")])
    analysis = wait_for_analysis(qtbot, window)
    assert analysis.source.name == "good.png"
    assert not window.banner.isVisible()


def test_no_uncertainty_shows_the_note_and_demo_notice(qtbot, tmp_path, tiny_bundle):
    from tests.conftest import make_bundle

    demo = make_bundle(tmp_path / "demo", synthetic_demo=True)
    window = make_window(qtbot, tmp_path, Session(mc_samples=0))
    window.load_model(demo)
    window.open_paths([write_png(tmp_path / "c.png")])
    analysis = wait_for_analysis(qtbot, window)
    assert analysis.uncertainty is None
    results = window.results
    assert results.note.isVisibleTo(results) and results.note.text() == analysis.uncertainty_note
    assert not results.confidence.isVisibleTo(results)
    assert results.demo_notice.isVisibleTo(results)
    assert results.demo_notice.text() == "Synthetic demo model: not for diagnosis"


def test_dicom_tags_search_and_teaching_mode(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    window.open_paths([write_dicom(tmp_path / "ct.dcm")])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert "Doe^Jane" in window.original.corner_labels["top_left"].text()
    all_rows = window.tags.visible_rows()
    window.tags.search.setText("PatientName")
    assert window.tags.visible_rows() == 1
    window.tags.search.setText("")
    qtbot.keyClick(window, Qt.Key.Key_H)
    assert "Doe^Jane" not in window.original.corner_labels["top_left"].text()
    assert window.tags.visible_rows() < all_rows
    window.tags.search.setText("PatientName")
    assert window.tags.visible_rows() == 0
    qtbot.waitUntil(lambda: window.studies.tree.topLevelItemCount() == 1, timeout=TIMEOUT)
    assert "Doe^Jane" not in window.studies.tree.topLevelItem(0).text(0)


def test_settings_survive_a_restart(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    window.controls.opacity.setValue(35)
    window.controls.colormap.setCurrentText("cividis")
    window.controls.method.setCurrentIndex(window.controls.method.findData("layercam"))
    window.close()
    again = make_window(qtbot, tmp_path)
    assert again.controls.opacity.value() == 35
    assert again.controls.colormap.currentText() == "cividis"
    assert again.controls.method_key() == "layercam"
    assert again.explained.overlay.opacity() == pytest.approx(0.35)


def test_opening_a_folder_shows_its_studies_and_steps_through_them(qtbot, tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    write_png(folder / "one.png", 1)
    write_png(folder / "two.png", 2)
    (folder / "notes.txt").write_text("not an image")
    window = make_window(qtbot, tmp_path)
    window.open_paths([folder])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert window.studies.image_paths() == [folder / "one.png", folder / "two.png"]
    assert window.session.image.source.path == folder / "one.png"
    qtbot.keyClick(window, Qt.Key.Key_Right)
    qtbot.waitUntil(lambda: window.session.image.source.path == folder / "two.png", timeout=TIMEOUT)
    assert "Image 2/2" in window.original.corner_labels["bottom_right"].text()
    assert window.settings.recent_files()[0] == str(folder / "two.png")


def test_engine_choice_is_remembered_and_reopens_the_model(qtbot, analysed):
    first = analysed.session.model
    analysed.actions_["engine_torch"].trigger()
    qtbot.waitUntil(lambda: analysed.session.model is not first and analysed.session.analysis is not None,
                    timeout=TIMEOUT)
    assert analysed.settings.get("engine") == "torch"
    assert analysed.session.model.engine == "torch"


def test_middle_drag_pans_and_double_click_fits(qtbot, analysed):
    view = analysed.original.view.viewport()
    fitted = analysed.original.box.viewRange()
    _drag(view, Qt.MouseButton.MiddleButton, QPointF(view.width() / 2, view.height() / 2), QPointF(60, 0))
    panned = analysed.original.box.viewRange()
    assert panned[0][0] < fitted[0][0] - 10  # dragging right shows more of the left side
    assert _center(analysed.explained) == pytest.approx(_center(analysed.original), abs=1.0)
    _double_click(view, QPointF(view.width() / 2, view.height() / 2))
    (x0, x1), (y0, y1) = analysed.original.box.viewRange()
    h, w = analysed.session.image.display.data.shape[:2]
    assert x0 <= 0.5 and x1 >= w - 0.5 and y0 <= 0.5 and y1 >= h - 0.5  # the whole image fits again
    assert _center(analysed.original) == pytest.approx(w / 2, abs=1.0)


def test_absolute_scale_uses_one_range_for_all_classes(analysed):
    a = analysed.session.analysis
    analysed.controls.absolute.setChecked(True)
    absolute = a.maps["gradcam"].absolute
    assert analysed.controls.colorbar.range[1] == pytest.approx(float(absolute.max()))
    expected = np.clip(absolute[analysed.class_index] * (255.0 / absolute.max()) + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(analysed.explained.overlay.image, expected)
    analysed.controls.normalized.setChecked(True)
    assert analysed.controls.colorbar.range == (0.0, 1.0)


def test_wheel_and_arrows_step_through_frames(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    window.open_paths([write_dicom(tmp_path / "cine.dcm", frames=3)])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert window.session.image.source.n_frames == 3
    first = window.original.image.image.copy()
    view = window.original.view.viewport()
    pos = QPointF(view.width() / 2, view.height() / 2)
    wheel = QWheelEvent(pos, view.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view, wheel)  # one notch towards the reader: next frame
    qtbot.waitUntil(lambda: window.session.image.source.frame == 1, timeout=TIMEOUT)
    assert "Frame 2/3" in window.original.corner_labels["bottom_right"].text()
    assert not np.array_equal(first, window.original.image.image)
    qtbot.keyClick(window, Qt.Key.Key_Down)
    qtbot.waitUntil(lambda: window.session.image.source.frame == 2, timeout=TIMEOUT)


def test_next_image_leaves_a_multi_frame_file_in_one_press(qtbot, tmp_path):
    cine = write_dicom(tmp_path / "cine.dcm", frames=3)
    other = write_png(tmp_path / "other.png")
    window = make_window(qtbot, tmp_path)
    window.session.open_files([cine, other])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    qtbot.keyClick(window, Qt.Key.Key_Down)  # next frame
    qtbot.waitUntil(lambda: window.session.image.source.frame == 1, timeout=TIMEOUT)
    qtbot.keyClick(window, Qt.Key.Key_Right)  # next image: the PNG, not frame 3
    qtbot.waitUntil(lambda: window.session.image.source.path == other, timeout=TIMEOUT)
    qtbot.keyClick(window, Qt.Key.Key_Down)  # a PNG has no next frame: nothing happens
    qtbot.wait(100)
    assert window.session.image.source.path == other and window.session.index == 1


def test_unavailable_engine_is_reported_and_the_old_one_kept(qtbot, analysed):
    first = analysed.session.model
    analysed.actions_["engine_onnx-int8"].trigger()  # the tiny bundle has no ONNX file
    qtbot.waitUntil(analysed.banner.isVisible, timeout=TIMEOUT)
    assert "still using tiny-test-model on torch" in analysed.banner.text()
    assert analysed.session.model is first
    assert analysed.settings.get("engine") == "auto"
    assert analysed.actions_["engine_auto"].isChecked()


def test_a_folder_that_is_no_model_bundle_is_reported(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    (tmp_path / "not_a_model").mkdir()
    window.load_model(tmp_path / "not_a_model")
    qtbot.waitUntil(window.banner.isVisible, timeout=TIMEOUT)
    assert "not_a_model" in window.banner.text() and "manifest.json" in window.banner.text()


def test_dropping_files_opens_them(qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    window = make_window(qtbot, tmp_path)
    dropped = write_png(tmp_path / "dropped.png")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert window.session.image.source.path == dropped
    assert window.recent_menu.actions()[0].text() == "dropped.png"


def test_colour_images_display_invert_and_analyse(qtbot, tmp_path, tiny_bundle):
    rgb = np.zeros((120, 140, 3), np.uint8)
    rgb[..., 0] = 200
    cv2.circle(rgb, (70, 60), 25, (30, 220, 90), -1)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), rgb)
    window = make_window(qtbot, tmp_path)
    window.load_model(tiny_bundle)
    window.open_paths([path])
    analysis = wait_for_analysis(qtbot, window)
    assert window.original.image.image.shape == (120, 140, 3)
    assert analysis.maps["gradcam"].normalized.shape[1:] == (120, 140)
    qtbot.keyClick(window, Qt.Key.Key_I)
    assert window.invert and window.original.image.lut[0] == 255
    window.grab()  # paints the inverted colour image without raising


def test_an_analysis_that_beats_its_image_to_the_screen_waits_for_it(qtbot, tmp_path, tiny_bundle, monkeypatch):
    """Analysis and display preparation run side by side; the result is shown only with its image."""
    import threading

    import engine
    import viewer.session as session_module

    analysed = threading.Event()
    real_display = session_module._displayable

    def analysis_then_signal(image, model, options):
        result = yield from engine.analysis_steps(image, model, options)
        analysed.set()
        return result

    def display_after_the_analysis(source, index, count):
        assert analysed.wait(30), "the analysis should run while the display image is prepared"
        time.sleep(0.2)  # let the finished analysis reach the GUI thread first
        return real_display(source, index, count)

    monkeypatch.setattr(session_module, "_displayable", display_after_the_analysis)
    window = make_window(qtbot, tmp_path, Session(steps_factory=analysis_then_signal))
    window.load_model(tiny_bundle)
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    order: list[str] = []
    window.session.imageReady.connect(lambda *_: order.append("image"))
    window.session.analysisReady.connect(lambda *_: order.append("analysis"))
    path = write_png(tmp_path / "slow.png", 3)
    window.open_paths([path])
    analysis = wait_for_analysis(qtbot, window)
    assert order == ["image", "analysis"]
    assert analysis.source == path and window.session.image.source.path == path
    assert window.explained.overlay.isVisible()


def test_class_thumbnails_follow_the_window_once_a_drag_settles(qtbot, analysed):
    before = [b.icon().pixmap(64, 64).toImage() for b in analysed.strip.buttons]
    center, width = analysed.window_cw
    analysed.set_window(center + width * 0.4, width * 0.3)
    qtbot.wait(400)
    after = [b.icon().pixmap(64, 64).toImage() for b in analysed.strip.buttons]
    assert all(a != b for a, b in zip(after, before))


def test_an_image_outside_the_models_world_gets_a_banner_and_a_gauge(qtbot, tmp_path, demo_bundle):
    import pydicom

    window = make_window(qtbot, tmp_path)
    window.load_model(demo_bundle, "onnx-int8")
    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    window.open_paths([ct])
    wait_for_analysis(qtbot, window)
    assert window.outside_banner.isVisible()
    assert "this image is a CT slice" in window.outside_banner.text()
    assert "features lie far" in window.outside_banner.text()
    assert window.results.ood.isVisible() and "outside" in window.results.ood.label.text()
    window.grab().save(str(tmp_path / "outside.png"))
    # A phantom radiograph of the model's own kind: no banner, the gauge below its threshold.
    window.open_paths([write_dicom_radiograph(tmp_path / "chest.dcm")])
    qtbot.waitUntil(lambda: window.session.analysis is not None
                    and window.session.analysis.source.name == "chest.dcm", timeout=TIMEOUT)
    assert not window.outside_banner.isVisible()
    assert window.results.ood.value < window.session.analysis.input_check.threshold


def test_a_model_without_statistics_says_it_has_no_check(analysed):
    assert not analysed.results.ood.isVisible()
    assert "no out-of-distribution check" in analysed.results.ood_note.text()


def write_dicom_radiograph(path: Path) -> Path:
    import shutil

    from engine import DEMO_STUDIES

    shutil.copy(DEMO_STUDIES / "demo_normal.dcm", path)
    return path


@pytest.mark.parametrize("name, full_range", [("demo_nodule.png", 255.0), ("demo_nodule_16bit.png", None)])
def test_a_window_drag_moves_by_the_images_own_range(qtbot, tmp_path, name, full_range):
    """100 px of drag change the width by about a tenth of the image's value range (not by 6400
    units on an 8-bit PNG, as a fixed 16-bit step did); Shift makes the step ten times finer."""
    from unittest import mock

    from engine import DEMO_STUDIES

    window = make_window(qtbot, tmp_path)
    window.open_paths([DEMO_STUDIES / name])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    low, high = window.session.image.display.value_range
    if full_range is not None:
        assert (low, high) == (0.0, full_range)
    span = high - low
    center, width = window.window_cw
    view = window.original.view.viewport()
    _drag(view, Qt.MouseButton.LeftButton, QPointF(view.width() / 2, view.height() / 2), QPointF(100, 0))
    new_center, new_width = window.window_cw
    assert new_center == pytest.approx(center)
    assert new_width - width == pytest.approx(100 * span / 1000, rel=0.05)
    with mock.patch.object(QApplication, "keyboardModifiers", return_value=Qt.KeyboardModifier.ShiftModifier):
        window.drag_window(100.0, 0.0)
    assert window.window_cw[1] - new_width == pytest.approx(10 * span / 1000, rel=0.05)


def test_skipped_files_are_listed_with_their_reasons(qtbot, tmp_path):
    import pydicom

    folder = tmp_path / "study"
    folder.mkdir()
    write_png(folder / "one.png", 1)
    (folder / "notes.txt").write_text("not an image")
    data = Path(pydicom.__file__).parent / "data" / "test_files"
    (folder / "plan.dcm").write_bytes((data / "rtplan.dcm").read_bytes())
    (folder / "seg.dcm").write_bytes((data / "liver_1frame.dcm").read_bytes())
    window = make_window(qtbot, tmp_path)
    window.open_paths([folder])
    qtbot.waitUntil(lambda: "skipped" in window.studies.info.text(), timeout=TIMEOUT)
    assert "3 files skipped" in window.studies.info.text()
    tip = window.studies.info.toolTip()
    assert "plan.dcm: this DICOM file holds an RT Plan" in tip and "seg.dcm: this DICOM file holds a segmentation" in tip
    assert "notes.txt" in tip
    window.studies.info.linkActivated.emit("skipped")  # what a click on the link sends
    dialog = window.studies.skipped_dialog
    assert dialog.isVisible() and dialog.text.toPlainText().count("\n") == 2
    dialog.grab().save(str(tmp_path / "skipped.png"))


def test_hounsfield_presets_are_offered_for_ct_only(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    window.open_paths([write_png(tmp_path / "chest.png")])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert not window.actions_["preset_1"].isEnabled()
    before = window.window_cw
    qtbot.keyClick(window, Qt.Key.Key_1)
    assert window.window_cw == before  # no soft-tissue HU window on a PNG
    qtbot.keyClick(window, Qt.Key.Key_9)
    low, high = window.session.image.display.value_range
    assert window.window_cw == pytest.approx(((low + high) / 2, high - low))
    window.open_paths([write_dicom(tmp_path / "ct.dcm")])
    qtbot.waitUntil(lambda: window.session.image.source.path.name == "ct.dcm", timeout=TIMEOUT)
    assert window.actions_["preset_1"].isEnabled()
    qtbot.keyClick(window, Qt.Key.Key_1)
    assert window.window_cw == (40.0, 400.0)


def test_a_small_screen_gives_the_images_the_room(qtbot, tmp_path):
    """1366 x 768 (a teaching laptop, a projector): the browser starts hidden and comes back from
    the View menu or when a folder is opened; each image pane gets well over 400 px."""
    window = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.resize(1366, 768)
    window.show()
    window.open_paths([write_png(tmp_path / "chest.png")])
    qtbot.waitUntil(lambda: window.session.image is not None, timeout=TIMEOUT)
    assert not window.browser_dock.isVisible()
    assert window.original.width() >= 440 and window.explained.width() >= 440
    window.grab().save(str(tmp_path / "small-screen.png"))
    window.actions_["browser"].trigger()
    assert window.browser_dock.isVisible()
    window.actions_["browser"].trigger()
    folder = tmp_path / "folder"
    folder.mkdir()
    write_png(folder / "one.png")
    window.open_paths([folder])
    assert window.browser_dock.isVisible()
