"""The uncertainty panel beside the worklist, driven through the real widgets (pytest-qt, offscreen):
filled when a worklist run finishes, the same figures as the engine's report, Export writes the
three files into the worklist's output folder, a new run clears it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.resources import DEMO_STUDIES

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

import pyqtgraph as pg  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from viewer.main_window import MainWindow  # noqa: E402
from viewer.settings import Settings  # noqa: E402
from viewer.worklist import output_folder  # noqa: E402

from tests.viewer.test_worklist import TIMEOUT, window  # noqa: E402,F401 (the worklist's window fixture)


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "ward"
    src.mkdir()
    for name in ("demo_nodule.dcm", "demo_normal.dcm", "demo_effusion.dcm", "demo_multiframe.dcm", "demo_nodule.png"):
        shutil.copy(DEMO_STUDIES / name, src / name)
    return src


def finished_run(qtbot, window, folder):
    panel = window.worklist
    panel.run(folder)
    qtbot.waitUntil(lambda: not panel.running and panel.uncertainty.report is not None, timeout=TIMEOUT)
    return panel


def bar_stack(plot) -> tuple[np.ndarray, int]:
    """The stacked bars of a histogram plot: total height per bin, and how many classes."""
    bars = [item for item in plot.items if isinstance(item, pg.BarGraphItem)]
    return sum(np.asarray(b.opts["height"], dtype=float) for b in bars), len(bars)


def test_panel_fills_when_the_worklist_finishes_and_matches_the_rows(qtbot, window, folder, tmp_path):
    window.tabs.setCurrentWidget(window.worklist)
    panel = finished_run(qtbot, window, folder)
    uncertainty = panel.uncertainty
    rows = panel.model.rows
    assert len(rows) == 7  # four DICOM/PNG singles and a three-frame file
    flagged = sum(r.flagged for r in rows)
    assert 0 < flagged < len(rows)  # the demo flags some, not all: the figures below can fail
    summary = uncertainty.report.summary
    assert summary["flagged"] == flagged and summary["images"] == 7
    assert f"{flagged} flagged at confidence below 0.85" in uncertainty.summary.text()
    # each histogram stacks one bar set per class, and the stacks count every image
    for measure in ("confidence", "predictive_entropy", "mutual_information"):
        totals, layers = bar_stack(uncertainty.plots[measure])
        assert layers == 3 and totals.sum() == 7, measure
    confidences = sorted(r.confidence for r in rows)
    totals, _ = bar_stack(uncertainty.plots["confidence"])
    edges = np.linspace(0, 1, len(totals) + 1)
    assert totals.tolist() == np.histogram(confidences, edges)[0].tolist()
    legend = uncertainty.plots["confidence"].legend
    assert [label.text for _, label in legend.items] == ["predicted normal", "predicted nodule", "predicted effusion"]
    # the threshold curve: count below each threshold, its marker on the batch's flagged count
    curve = next(item for item in uncertainty.plots["threshold"].listDataItems() if item.opts["symbol"] is None)
    xs, ys = curve.getData()
    assert ys[-1] == 7 and ys[0] == 0 and np.all(np.diff(ys) >= 0)
    assert ys[np.argmin(np.abs(xs - 0.85))] == flagged
    marker = next(item for item in uncertainty.plots["threshold"].listDataItems() if item.opts["symbol"] == "o")
    assert marker.getData()[1].tolist() == [flagged]

    assert panel.views.tabText(1) == f"Uncertainty ({flagged} flagged)"
    panel.views.setCurrentWidget(uncertainty)
    qtbot.waitUntil(uncertainty.isVisible)
    grab = tmp_path / "uncertainty-panel.png"
    assert panel.grab().save(str(grab))
    assert QImage(str(grab)).width() == panel.width()


def test_export_writes_the_three_files_into_the_worklists_output_folder(qtbot, window, folder, tmp_path):
    panel = finished_run(qtbot, window, folder)
    out = output_folder(window.worklist.output_root, folder)
    assert panel.uncertainty.out == out
    qtbot.mouseClick(panel.uncertainty.export_button, Qt.MouseButton.LeftButton)
    names = {"uncertainty-report.png", "flagged.csv", "flagged.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]  # no temp files
    with open(out / "flagged.csv", newline="") as f:
        table = list(csv.DictReader(f))
    flagged_rows = [r for r in panel.model.rows if r.flagged]
    assert sorted((t["file"], int(t["frame"])) for t in table) == sorted((str(r.path), r.frame) for r in flagged_rows)
    data = json.loads((out / "flagged.json").read_text())
    assert data["flagged"] == len(flagged_rows) == len(data["cases"])
    assert all(c["predictive_entropy"] is not None and c["mutual_information"] is not None for c in data["cases"])
    assert QImage(str(out / "uncertainty-report.png")).width() > 0
    assert "Uncertainty report written" in window.status_text.text()
    qtbot.mouseClick(panel.uncertainty.export_button, Qt.MouseButton.LeftButton)
    assert (out / "flagged-2.csv").is_file()  # a second export never overwrites the first


def test_a_new_run_clears_the_panel_until_it_finishes(qtbot, window, folder):
    panel = finished_run(qtbot, window, folder)
    panel.run(folder)
    assert panel.uncertainty.report is None and not panel.uncertainty.export_button.isEnabled()
    assert all(not plot.items for plot in panel.uncertainty.plots.values())
    assert panel.views.tabText(1) == "Uncertainty"
    qtbot.waitUntil(lambda: panel.uncertainty.report is not None, timeout=TIMEOUT)
    assert panel.uncertainty.export_button.isEnabled()
