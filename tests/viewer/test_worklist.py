"""The worklist dock and File > Export, driven through the real widgets (pytest-qt, offscreen)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest

from engine.resources import DEMO_STUDIES

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

import pydicom  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402

from viewer.main_window import MainWindow  # noqa: E402
from viewer.settings import Settings  # noqa: E402

STUDY = DEMO_STUDIES
TIMEOUT = 30_000


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def window(qtbot, tmp_path, demo_bundle):
    win = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    win.worklist.output_root = tmp_path / "worklists"
    win.load_model(demo_bundle, "onnx-int8")
    qtbot.waitUntil(lambda: win.session.model is not None, timeout=TIMEOUT)
    return win


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "ward"
    src.mkdir()
    for name in ("demo_nodule.dcm", "demo_normal.dcm", "demo_effusion.dcm", "demo_multiframe.dcm", "demo_nodule.png"):
        shutil.copy(STUDY / name, src / name)
    (src / "truncated.dcm").write_bytes((STUDY / "demo_normal.dcm").read_bytes()[:2500])
    (src / "notes.txt").write_text("not an image\n")
    return src


def run_worklist(qtbot, window, folder):
    panel = window.worklist
    panel.run(folder)
    assert panel.running
    qtbot.waitUntil(lambda: not panel.running, timeout=TIMEOUT)
    return panel


def test_worklist_fills_flagged_first_lists_failures_and_writes_nothing_beside_sources(qtbot, window, folder):
    before = snapshot(folder)
    panel = run_worklist(qtbot, window, folder)
    rows = panel.visible_rows()
    assert len(rows) == 7  # five files, one of them with three frames
    flags = [r.flagged for r in rows]
    assert any(flags) and not all(flags)
    assert flags == sorted(flags, reverse=True)  # flagged first
    flagged = [r.confidence for r in rows if r.flagged]
    assert flagged == sorted(flagged)  # the least confident first
    tooltip = panel.status.toolTip()
    assert "truncated.dcm" in tooltip and "notes.txt" in tooltip
    assert "2 file(s) not analysed" in panel.status.text()
    assert snapshot(folder) == before
    # the table shows the patient IDs of the DICOM files
    texts = {panel.proxy.index(i, 0).data() for i in range(panel.proxy.rowCount())}
    assert "LANTERN-DEMO-1" in texts


def test_clicking_a_row_opens_that_image_in_the_side_by_side_view(qtbot, window, folder):
    panel = run_worklist(qtbot, window, folder)
    table = panel.table
    for row in (2, 0):
        window.tabs.setCurrentWidget(panel)  # back to the worklist, as a reader would go
        wanted = panel.visible_rows()[row]
        rect = table.visualRect(panel.proxy.index(row, 2))
        qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        qtbot.waitUntil(lambda: window.session.image is not None
                        and window.session.image.source.path == wanted.path
                        and window.session.image.source.frame == wanted.frame, timeout=TIMEOUT)
        assert window.tabs.currentIndex() == 0, "the row opens in the side-by-side reading view"
    assert window.session.files == [r.path for r in panel.visible_rows()]
    qtbot.waitUntil(lambda: window.session.analysis is not None, timeout=TIMEOUT)
    assert window.session.analysis.predicted_class == panel.visible_rows()[0].predicted_class


def test_filter_and_flagged_only_and_sorting(qtbot, window, folder):
    panel = run_worklist(qtbot, window, folder)
    qtbot.keyClicks(panel.filter, "effusion")
    rows = panel.visible_rows()
    assert rows and all("effusion" in (r.predicted_class + r.path.name) for r in rows)
    panel.filter.clear()
    panel.flagged_only.setChecked(True)
    assert panel.visible_rows() and all(r.flagged for r in panel.visible_rows())
    panel.flagged_only.setChecked(False)
    panel.table.sortByColumn(4, Qt.SortOrder.DescendingOrder)  # probability
    probabilities = [r.probability for r in panel.visible_rows()]
    assert probabilities == sorted(probabilities, reverse=True)


def test_opening_the_folder_again_reuses_finished_images(qtbot, window, folder):
    run_worklist(qtbot, window, folder)
    panel = run_worklist(qtbot, window, folder)
    assert "0 analysed now, 7 from before" in panel.status.text()


def test_a_running_worklist_can_be_cancelled(qtbot, window, tmp_path, monkeypatch):
    import engine.workflows.batch as batch_module

    big = tmp_path / "big"
    big.mkdir()
    for i in range(60):
        shutil.copy(STUDY / "demo_nodule.dcm", big / f"copy{i:02d}.dcm")
    chunk = batch_module.BatchOptions().chunk
    real_batch = batch_module.batch_steps
    first_chunk, release, ended = threading.Event(), threading.Event(), []

    def held_after_the_first_chunk(*args, **kwargs):
        """The real batch, held once its first chunk is analysed until the test releases it: the
        test knows the batch is running when it presses Cancel."""
        steps = real_batch(*args, **kwargs)
        how = "closed early"
        try:
            while True:
                try:
                    update = next(steps)
                except StopIteration as done:
                    how = "completed"
                    return done.value
                if update.step > 0 and not first_chunk.is_set():
                    first_chunk.set()
                    assert release.wait(30)
                yield update
        finally:
            steps.close()  # the real batch's own cleanup: it saves what is done
            ended.append(how)

    monkeypatch.setattr(batch_module, "batch_steps", held_after_the_first_chunk)
    panel = window.worklist
    window.tabs.setCurrentWidget(panel)  # where the reader watches it and finds its Cancel button
    try:
        panel.run(big)
        assert first_chunk.wait(TIMEOUT / 1000)
        assert panel.running and panel.cancel_button.isVisible()
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    finally:
        release.set()
    cancelled = "Cancelled. What was analysed is kept; open big again to continue."

    def what_the_reader_sees():
        return (panel.running, panel.cancel_button.isVisible(), panel.progress.isVisible(), panel.status.text(),
                window.status_text.text(), panel.model.rowCount())

    after_cancel = (False, False, False, cancelled, f"Worklist: {cancelled}", chunk)
    assert what_the_reader_sees() == after_cancel  # at once: the analysed images stay in the table
    assert window.session.runner.wait(TIMEOUT)
    qtbot.wait(200)  # whatever the stopped batch still sent has arrived
    assert ended == ["closed early"]  # stopped between chunks, not run to its end
    assert what_the_reader_sees() == after_cancel  # and nothing it sent after the cancel changed the view
    monkeypatch.undo()
    panel = run_worklist(qtbot, window, big)
    assert len(panel.visible_rows()) == 60
    assert f"{60 - chunk} analysed now, {chunk} from before" in panel.status.text()


def test_without_a_model_the_worklist_says_so(qtbot, tmp_path, folder):
    win = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(win)
    win.worklist.output_root = tmp_path / "worklists"
    win.worklist.run(folder)
    assert not win.worklist.running
    assert "model" in win.status_text.text().lower()


def export_via_menu(qtbot, window, monkeypatch, kind: str, target: Path) -> Path:
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.exporter.last_written = None
    window.actions_[f"export_{kind}"].trigger()
    qtbot.waitUntil(lambda: window.exporter.last_written is not None, timeout=TIMEOUT)
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []  # no temp files left
    return window.exporter.last_written


def test_exports_from_the_viewer_read_back_and_never_overwrite(qtbot, window, tmp_path, monkeypatch):
    window.open_paths([STUDY / "demo_nodule.dcm"])
    qtbot.waitUntil(lambda: window.session.analysis is not None and bool(window.strip.buttons), timeout=TIMEOUT)
    out = tmp_path / "exports"
    out.mkdir()
    dicom = export_via_menu(qtbot, window, monkeypatch, "dicom", out / "nodule.dcm")
    ds = pydicom.dcmread(dicom)
    source = pydicom.dcmread(STUDY / "demo_nodule.dcm", stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.PatientName == source.PatientName
    png = export_via_menu(qtbot, window, monkeypatch, "png", out / "side.png")
    again = export_via_menu(qtbot, window, monkeypatch, "png", out / "side.png")
    assert (png.name, again.name) == ("side.png", "side-2.png")
    from PySide6.QtGui import QImage

    picture = QImage(str(png))
    # The source's resolution (512 x 512 twice, and the gap), not the window's.
    from engine.exports.pictures import GAP_PX

    assert (picture.width(), picture.height()) == (2 * 512 + GAP_PX, 512)
    assert QImage(str(again)) == picture  # the same view exports the same picture
    result = json.loads(export_via_menu(qtbot, window, monkeypatch, "json", out / "r.json").read_text())
    assert result["predicted_class"] == window.session.analysis.predicted_class
    # The reader's window/level goes into the picture.
    center, width = window.window_cw
    window.set_window(center, width / 4)
    narrow = QImage(str(export_via_menu(qtbot, window, monkeypatch, "png", out / "side.png")))
    assert narrow.size() == picture.size() and narrow != picture
    window.set_window(center, width)
    window.actions_["export_anonymize"].trigger()
    hidden = QImage(str(export_via_menu(qtbot, window, monkeypatch, "png", out / "side.png")))
    assert hidden == picture  # no corner text in either: nothing to hide
    anonymous = export_via_menu(qtbot, window, monkeypatch, "dicom", out / "nodule.dcm")
    assert anonymous.name == "nodule-2.dcm"
    raw = anonymous.read_bytes()
    assert b"DEMO^NODULE" not in raw and b"LANTERN-DEMO-1" not in raw
    report = export_via_menu(qtbot, window, monkeypatch, "report", out / "report.html").read_text()
    assert "not for primary diagnosis" in report and "LANTERN-DEMO-1" not in report


def test_export_without_an_analysis_explains_why(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: pytest.fail("no dialog expected"))
    window.actions_["export_dicom"].trigger()
    assert "Nothing to export" in window.status_text.text()


def test_closing_the_window_stops_a_running_worklist(qtbot, window, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(60):
        shutil.copy(STUDY / "demo_normal.dcm", big / f"copy{i:02d}.dcm")
    window.worklist.run(big)
    window.close()
    assert not window.worklist.running
    assert window.session.runner.wait(TIMEOUT)



def test_images_outside_the_models_world_come_first_with_their_reasons(qtbot, window, folder):
    from viewer.worklist_table import OUTSIDE_COLUMN

    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", folder / "ct_slice.dcm")
    panel = run_worklist(qtbot, window, folder)
    rows = panel.visible_rows()
    assert rows[0].path.name == "ct_slice.dcm" and rows[0].outside
    assert not any(r.outside for r in rows[1:]), [r.outside_reasons for r in rows[1:]]
    assert panel.proxy.index(0, OUTSIDE_COLUMN).data().startswith("⚠ outside")
    tooltip = panel.proxy.index(0, 2).data(Qt.ItemDataRole.ToolTipRole)
    assert "this image is a CT slice" in tooltip
    assert all(panel.proxy.index(i, OUTSIDE_COLUMN).data() != "—" for i in range(len(rows)))  # every score shown
