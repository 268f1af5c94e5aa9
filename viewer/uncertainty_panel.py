"""Beside the worklist: the batch's uncertainty, dataset-wide (engine.workflows.uncertainty_report),
drawn with pyqtgraph: confidence, predictive entropy and mutual information as histograms stacked
by predicted class, and the flagged count against the threshold. It is redrawn when a worklist run
finishes; Export writes the report's figure, flagged.csv and flagged.json into the worklist's
output folder, as ``lantern-engine batch`` does."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.exports.figures import nice_ceiling
from engine.workflows.uncertainty_report import UncertaintyReport, uncertainty_report, write_uncertainty_report
from viewer import theme
from viewer.evaluation_view import COLORS
from viewer.jobs import CallJob, user_message

if TYPE_CHECKING:
    from engine.workflows.batch import BatchResult

REPORT_JOB = "uncertainty-report"  # a newer worklist run's report replaces an older one's
WAITING = "The batch's uncertainty appears here when a worklist run finishes."


class UncertaintyPanel(QWidget):
    shown = Signal(str)  # a short title for the tab that holds the panel: "Uncertainty (2 flagged)"

    def __init__(self, window):
        super().__init__()
        self.window_ = window
        self.report: UncertaintyReport | None = None
        self.out: Path | None = None
        self.summary = QLabel(WAITING)
        self.summary.setWordWrap(True)
        self.export_button = QPushButton("Export report")
        self.export_button.setToolTip("Write uncertainty-report.png, flagged.csv and flagged.json into the "
                                      "worklist's output folder")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        self.graphs = pg.GraphicsLayoutWidget()
        self.plots: dict[str, pg.PlotItem] = {}
        for n, key in enumerate(("confidence", "predictive_entropy", "mutual_information", "threshold")):
            plot = self.graphs.addPlot(row=n // 2, col=n % 2)
            plot.setMouseEnabled(False, False)
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("left", "flagged images" if key == "threshold" else "images")
            plot.getAxis("bottom").enableAutoSIPrefix(False)  # "x0.001" would clash with the label
            self.plots[key] = plot
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        layout.addWidget(self.graphs, 1)

    # filling -------------------------------------------------------------------
    def clear(self, message: str = WAITING) -> None:
        self.window_.session.runner.drop(REPORT_JOB)
        self.report, self.out = None, None
        for plot in self.plots.values():
            plot.clear()
        self.summary.setText(message)
        self.export_button.setEnabled(False)
        self.shown.emit("Uncertainty")

    def show_batch(self, result: BatchResult) -> None:
        """Read the batch's results on a worker (one small file per image), then draw."""
        if not result.rows:
            self.clear("No image was analysed: nothing to summarize.")
            return
        out, rows = result.out, result.rows
        self.summary.setText(f"Summarizing the uncertainty of {len(rows)} image(s)…")
        job = CallJob[UncertaintyReport](lambda: uncertainty_report(out, rows), "summarizing the uncertainty",
                                         background=True)
        self.window_.session.runner.start(job, key=REPORT_JOB, on_done=lambda report: self.show_report(report, out),
                                          on_failed=lambda exc: self.clear(f"⚠ {user_message(exc, job.what)}"))

    def show_report(self, report: UncertaintyReport, out: Path) -> None:
        self.report, self.out = report, Path(out)
        s = report.summary
        by_class = ", ".join(f"{c} {n}" for c, n in s["flagged_by_class"].items())
        missing = s["images"] - s["with_uncertainty"]
        self.summary.setText(f"{s['images']} image(s): {s['flagged']} flagged at confidence below "
                             f"{s['threshold']:.2f} ({by_class})."
                             + (f" {missing} without an MC-dropout estimate." if missing else ""))
        for measure, histogram in s["histograms"].items():
            self._histogram(self.plots[measure], histogram, s["classes"], legend=measure == "confidence")
        self._threshold_curve(self.plots["threshold"], s)
        self.export_button.setEnabled(True)
        self.shown.emit(f"Uncertainty ({s['flagged']} flagged)")

    def _histogram(self, plot: pg.PlotItem, histogram: dict, classes: list[str], legend: bool) -> None:
        plot.clear()
        if legend:
            (plot.legend or plot.addLegend(offset=(10, 10))).clear()  # clear() leaves a legend's entries
        plot.setTitle(histogram["title"])
        plot.setLabel("bottom", histogram["label"])
        edges = np.asarray(histogram["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        bottom = np.zeros(len(centres))
        for n, name in enumerate(classes):  # stacked, one colour per predicted class (as the PNG)
            counts = np.asarray(histogram["counts"][name], dtype=float)
            color = COLORS[n % len(COLORS)]
            bars = pg.BarGraphItem(x=centres, height=counts, y0=bottom, width=width * 0.95, brush=color,
                                   pen=pg.mkPen(theme.BACKGROUND))
            plot.addItem(bars)
            if legend:
                plot.legend.addItem(bars, f"predicted {name}")
            bottom = bottom + counts
        plot.setXRange(edges[0], edges[-1], padding=0.02)
        plot.setYRange(0, nice_ceiling(bottom.max()), padding=0.02)

    def _threshold_curve(self, plot: pg.PlotItem, s: dict) -> None:
        plot.clear()
        plot.setTitle("Flagged images against the threshold")
        plot.setLabel("bottom", "flag when confidence is below")
        curve = s["threshold_curve"]
        plot.plot(curve["thresholds"], curve["flagged"], pen=pg.mkPen(COLORS[0], width=3))
        plot.addItem(pg.InfiniteLine(s["threshold"], angle=90,
                                     pen=pg.mkPen(theme.MUTED, style=pg.QtCore.Qt.PenStyle.DashLine)))
        plot.plot([s["threshold"]], [s["flagged"]], pen=None, symbol="o", symbolSize=11, symbolBrush=COLORS[1])
        label = pg.TextItem(f"{s['flagged']} of {s['images']} flagged at {s['threshold']:.2f}", color=theme.TEXT,
                            anchor=(0, 0))
        label.setPos(0.02, nice_ceiling(max(curve["flagged"][-1], 1)))
        plot.addItem(label)
        plot.setXRange(0, 1, padding=0.02)
        plot.setYRange(0, nice_ceiling(max(curve["flagged"][-1], 1)), padding=0.02)

    # exporting -----------------------------------------------------------------
    def export(self) -> list[Path]:
        """The same three files ``lantern-engine batch`` writes, in the worklist's output folder
        (fresh names: an earlier export stays)."""
        if self.report is None or self.out is None:
            return []
        try:
            written = write_uncertainty_report(self.report, self.out)
        except OSError as exc:
            self.window_.show_error(user_message(exc, "writing the uncertainty report"))
            return []
        message = f"Uncertainty report written to {self.out}: {', '.join(p.name for p in written)}"
        self.summary.setToolTip(message)
        self.window_.show_status(message)
        return written
