"""Results: class probabilities with their MC-dropout spread, uncertainty gauges, model facts."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine.trust.calibration import calibration_status
from engine import LanternError
from viewer import theme

DEMO_NOTICE = "Synthetic demo model: not for diagnosis"


def _small_plot(height: int) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setFixedHeight(height)
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(False, False)
    plot.hideButtons()
    plot.getPlotItem().setContentsMargins(4, 0, 8, 0)
    return plot


class Gauge(QWidget):
    """A labelled horizontal bar on a fixed scale, optionally with a threshold marker."""

    def __init__(self, title: str, maximum: float, marker: bool = False):
        super().__init__()
        self.maximum = maximum
        self.label = QLabel(title)
        self.label.setWordWrap(True)
        self.plot = _small_plot(38)
        self.plot.hideAxis("left")
        self.plot.setXRange(0, maximum, padding=0)
        self.plot.setYRange(-0.5, 0.5, padding=0)
        self.bar = pg.BarGraphItem(x0=[0], y=[0], height=[0.7], width=[0], brush=theme.ACCENT)
        self.plot.addItem(self.bar)
        self.marker = None
        if marker:
            self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen(theme.WARNING, width=3))
            self.plot.addItem(self.marker)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(0)
        layout.addWidget(self.label)
        layout.addWidget(self.plot)
        self.title = title
        self.value = 0.0

    def set_maximum(self, maximum: float) -> None:
        self.maximum = maximum
        self.plot.setXRange(0, maximum, padding=0)

    def set_value(self, value: float, text: str, color: str = theme.ACCENT, marker: float | None = None):
        self.value = float(value)
        self.bar.setOpts(width=[float(value)], brush=color)
        self.label.setText(f"{self.title}: {text}")
        if self.marker is not None and marker is not None:
            self.marker.setValue(marker)


class ResultsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.prediction = QLabel("No analysis yet")
        self.prediction.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.prediction.setWordWrap(True)
        self.class_labels: list[QLabel] = []
        self.class_box = QVBoxLayout()
        self.class_box.setSpacing(1)
        self.probability_plot = _small_plot(120)
        self.probability_plot.setXRange(0, 1, padding=0.02)
        self.bars = pg.BarGraphItem(x0=[], y=[], height=[], width=[], brush=theme.ACCENT)
        self.errors = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), pen=pg.mkPen("#ffffff", width=2), beam=0.25)
        self.probability_plot.addItem(self.bars)
        self.probability_plot.addItem(self.errors)
        # Each class's operating point (the bundle's cut-off) on its bar.
        self.cutoff_markers = pg.ScatterPlotItem(symbol="|", size=22, pen=pg.mkPen(theme.WARNING, width=3))
        self.probability_plot.addItem(self.cutoff_markers)
        self.cutoffs: list[float] = []
        self.calibration_note = QLabel()
        self.calibration_note.setObjectName("flag")
        self.calibration_note.setWordWrap(True)
        self.calibration_note.setVisible(False)

        self.confidence = Gauge("Confidence", 1.0, marker=True)
        self.entropy = Gauge("Predictive entropy", 1.0)
        self.mutual_info = Gauge("Mutual information", 1.0)
        # Distance of the image's features from those the model was fitted on (engine/ood.py).
        self.ood = Gauge("Out-of-distribution score", 1.0, marker=True)
        self.ood.setObjectName("oodGauge")
        self.ood_note = QLabel()
        self.ood_note.setWordWrap(True)
        self.ood_note.setStyleSheet(f"color: {theme.MUTED};")
        self.flag = QLabel()
        self.flag.setObjectName("flag")
        self.flag.setWordWrap(True)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet(f"color: {theme.MUTED};")
        self.demo_notice = QLabel(DEMO_NOTICE)
        self.demo_notice.setObjectName("demoNotice")
        self.demo_notice.setVisible(False)
        self.model_info = QLabel("No model loaded")
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.PlainText)

        layout = QVBoxLayout(self)
        layout.addWidget(self.demo_notice)
        layout.addWidget(self.prediction)
        layout.addLayout(self.class_box)
        layout.addWidget(self.probability_plot)
        for widget in (self.confidence, self.flag, self.calibration_note, self.entropy, self.mutual_info, self.note,
                       self.ood, self.ood_note):
            layout.addWidget(widget)
        layout.addWidget(self.model_info)
        layout.addStretch(1)
        self.clear()

    def clear(self, message: str = "No analysis yet") -> None:
        self.prediction.setText(message)
        for label in self.class_labels:
            label.setText("")
        self.bars.setOpts(x0=[], y=[], height=[], width=[])
        self.cutoff_markers.setData(x=[], y=[])
        self.errors.setData(x=np.zeros(0), y=np.zeros(0), left=np.zeros(0), right=np.zeros(0))
        for gauge in (self.confidence, self.entropy, self.mutual_info, self.ood):
            gauge.setVisible(False)
        self.ood_note.setVisible(False)
        self.probability_plot.setVisible(False)  # empty axes say nothing
        self.flag.setVisible(False)
        self.note.setVisible(False)

    def set_model(self, bundle, engine: str) -> None:
        self.demo_notice.setVisible(bool(bundle.synthetic_demo))
        lines = [f"Model: {bundle.name} {bundle.version}", f"Engine: {engine}"]
        if bundle.intended_use:
            lines.append(f"Intended use: {bundle.intended_use}")
        self.model_info.setText("\n".join(lines))
        self.cutoffs = [bundle.cutoff(i) for i in range(bundle.num_classes)]
        try:
            warning = calibration_status(bundle).warning
        except LanternError as exc:
            warning = exc.message
        self.calibration_note.setText(f"⚠ {warning}" if warning else "")
        self.calibration_note.setVisible(bool(warning))

    def _ensure_labels(self, n: int) -> None:
        while len(self.class_labels) < n:
            label = QLabel()
            label.setObjectName(f"class_{len(self.class_labels)}")
            self.class_box.addWidget(label)
            self.class_labels.append(label)
        for i, label in enumerate(self.class_labels):
            label.setVisible(i < n)

    def show_analysis(self, analysis) -> None:
        classes = list(analysis.classes)
        probs = np.asarray(analysis.probabilities, dtype=float)
        u = analysis.uncertainty
        std = np.asarray(u.std_probabilities, dtype=float) if u is not None else np.zeros_like(probs)
        n = len(classes)
        self.prediction.setText(f"Predicted: {analysis.predicted_class} ({probs[analysis.predicted]:.0%})")
        self._ensure_labels(n)
        for i, (name, p) in enumerate(zip(classes, probs)):
            spread = f" ± {std[i]:.3f}" if u is not None else ""
            marker = "▶ " if i == analysis.predicted else "   "
            self.class_labels[i].setText(f"{marker}{name}: {p:.3f}{spread}")
        ys = np.arange(n)[::-1].astype(float)  # first class on top
        colors = [theme.ACCENT if i == analysis.predicted else "#5d6b78" for i in range(n)]
        self.bars.setOpts(x0=np.zeros(n), y=ys, height=np.full(n, 0.6), width=probs, brushes=colors)
        self.errors.setData(x=probs, y=ys, left=std, right=std, beam=0.25)
        if len(self.cutoffs) == n:
            self.cutoff_markers.setData(x=self.cutoffs, y=ys)
            self.cutoff_markers.setToolTip("Cut-offs: " + ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, self.cutoffs)))
        self.probability_plot.setVisible(True)
        self.probability_plot.setFixedHeight(30 + 26 * n)
        self.probability_plot.setYRange(-0.6, n - 0.4, padding=0)
        self.probability_plot.getAxis("left").setTicks([[(float(y), c) for y, c in zip(ys, classes)]])
        self._show_uncertainty(analysis, n)
        self._show_input_check(analysis.input_check)

    def _show_input_check(self, check) -> None:
        if check.score is None:
            self.ood.setVisible(False)
            self.ood_note.setText(check.note)
            self.ood_note.setVisible(True)
            return
        self.ood.set_maximum(max(2.0 * check.threshold, 1.1 * check.score))
        outside = check.score_outside
        self.ood.set_value(check.score, f"{check.score:.1f} (threshold {check.threshold:.1f}"
                                        f"{': outside' if outside else ''})",
                           theme.WARNING if outside else theme.ACCENT, marker=check.threshold)
        self.ood.setToolTip(f"Mahalanobis distance of this image's features from those of the images the model "
                            f"was fitted on; {100 - (check.percentile or 0):.1f}% of those lie above the threshold.")
        self.ood.setVisible(True)
        self.ood_note.setVisible(False)

    def _show_uncertainty(self, analysis, n: int) -> None:
        u = analysis.uncertainty
        gauges = (self.confidence, self.entropy, self.mutual_info)
        if u is None:
            for gauge in gauges:
                gauge.setVisible(False)
            self.flag.setVisible(False)
            self.note.setText(analysis.uncertainty_note or "No uncertainty estimate for this analysis.")
            self.note.setVisible(True)
            return
        self.note.setVisible(False)
        top = math.log(n)
        for gauge in gauges:
            gauge.setVisible(True)
        self.entropy.set_maximum(top)
        self.mutual_info.set_maximum(top)
        flagged = bool(u.flagged)
        self.confidence.set_value(
            u.confidence, f"{u.confidence:.2f} (threshold {u.threshold:.2f})",
            theme.WARNING if flagged else theme.OK, marker=u.threshold)
        self.entropy.set_value(u.predictive_entropy, f"{u.predictive_entropy:.3f} nats (max {top:.2f})")
        self.mutual_info.set_value(u.mutual_information, f"{u.mutual_information:.3f} nats ({u.samples} MC samples)")
        self.flag.setVisible(flagged)
        if flagged:
            self.flag.setText(
                f"⚠ Low confidence: {u.confidence:.2f} is below the {u.threshold:.2f} threshold. "
                "Treat this result with caution.")
