"""The Case tab: a multi-input model's images assigned to its inputs and explained pane by pane."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6")

from tests.conftest import make_multi_input_bundle  # noqa: E402
from tests.viewer.test_viewer import TIMEOUT, make_window, write_png  # noqa: E402


def write_radiograph(path: Path, view: str, seed: int) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.ViewPosition = "Case^Test", "ID-1", "DX", view
    ds.Rows, ds.Columns = 120, 100
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    pixels = (rng.random((120, 100)) * 800 + 400).astype(np.uint16)
    cv2.circle(pixels, (30 + 20 * seed, 60), 12, 3000, -1)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def two_view_bundle(tmp_path_factory):
    return make_multi_input_bundle(tmp_path_factory.mktemp("case") / "two-view", branches="separate")


def _case_ready(window):
    return lambda: window.case.analysis is not None


def test_a_case_is_assigned_by_view_position_and_explained_per_input(qtbot, tmp_path, two_view_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(two_view_bundle)
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    assert window.tabs.isTabVisible(window.tabs.indexOf(window.case))
    assert window.tabs.currentWidget() is window.case
    lateral = write_radiograph(tmp_path / "a_lateral.dcm", "LL", 1)
    frontal = write_radiograph(tmp_path / "b_frontal.dcm", "PA", 2)
    window.open_paths([lateral, frontal])
    qtbot.waitUntil(_case_ready(window), timeout=TIMEOUT)
    analysis = window.case.analysis
    assert [(v.name, v.source.name) for v in analysis.views] == [("PA", frontal.name), ("LAT", lateral.name)]
    pa, lat = window.case.panes
    assert "View Position" in pa.how.text() and "View Position" in lat.how.text()
    for pane in window.case.panes:
        assert pane.viewport.overlay.image is not None and pane.viewport.overlay.isVisible()
    # The results panel shows the case's prediction; the one-image analysis never ran.
    assert analysis.predicted_class in window.results.prediction.text()
    assert window.session.analysis is None
    # Opacity reaches the panes.
    window.controls.opacity.setValue(30)
    assert pa.viewport.overlay.opacity() == pytest.approx(0.30, abs=0.01)
    # Choosing another class redraws every pane's map.
    before = pa.viewport.overlay.image.copy()
    other = (analysis.predicted + 1) % len(analysis.classes)
    window.case.classes.setCurrentIndex(other)
    assert f"class: {analysis.classes[other]}" in pa.viewport.corner_labels["top_right"].text()
    assert not np.array_equal(before, pa.viewport.overlay.image) or before.max() == 0
    window.grab().save(str(tmp_path / "case.png"))


def test_the_reader_can_swap_the_images(qtbot, tmp_path, two_view_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(two_view_bundle)
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    first, second = write_png(tmp_path / "one.png", seed=1), write_png(tmp_path / "two.png", seed=2)
    window.open_paths([first, second])
    qtbot.waitUntil(_case_ready(window), timeout=TIMEOUT)
    pa, lat = window.case.panes
    assert "order" in pa.how.text()  # PNGs have no View Position: placed by order, to be checked
    assert [v.source.name for v in window.case.analysis.views] == ["one.png", "two.png"]
    old = window.case.analysis
    pa.chooser.setCurrentIndex(2)
    pa.chooser.activated.emit(2)
    lat.chooser.setCurrentIndex(1)
    lat.chooser.activated.emit(1)
    qtbot.waitUntil(lambda: window.case.analysis is not old
                    and [v.source.name for v in window.case.analysis.views] == ["two.png", "one.png"], timeout=TIMEOUT)
    assert lat.how.text() == "chosen by hand"


def test_a_case_missing_an_image_asks_for_one(qtbot, tmp_path, two_view_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(two_view_bundle)
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    window.open_paths([write_png(tmp_path / "only.png"), broken])
    qtbot.waitUntil(lambda: "Choose an image for every input" in window.case.status.text()
                    or "broken.dcm" in window.case.status.text(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: window.case.panes[1].chooser.count() == 2, timeout=TIMEOUT)
    assert window.case.analysis is None
    assert window.case.panes[1].image_index is None


def test_a_one_image_model_hides_the_case_tab(qtbot, tmp_path, tiny_bundle):
    window = make_window(qtbot, tmp_path)
    window.load_model(tiny_bundle)
    qtbot.waitUntil(lambda: window.session.model is not None, timeout=TIMEOUT)
    assert not window.tabs.isTabVisible(window.tabs.indexOf(window.case))
    assert window.case.panes == []
