"""The Trust panel's three displays: faithfulness curves, the randomisation strip, and the
reliability diagram. Plain widgets fed with engine results; no jobs, no session."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from viewer import theme
from viewer.class_strip import rgb_pixmap
from viewer.display import map_to_uint8, thumbnail, thumbnail_step

SANITY_THUMB = 84
SANITY_COLUMNS = 3


def _plot(height: int, x_label: str, y_label: str) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setFixedHeight(height)
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(False, False)
    plot.hideButtons()
    plot.setXRange(0, 1, padding=0.02)
    plot.setYRange(0, 1, padding=0.05)
    plot.setLabel("bottom", x_label)
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.15)
    return plot


def _note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    return label


def section(title: str, question: str, *widgets) -> QGroupBox:
    box = QGroupBox(title)  # a short title: a group box is never narrower than its title
    column = QVBoxLayout(box)
    asked = QLabel(question)
    asked.setWordWrap(True)
    asked.setStyleSheet("font-style: italic;")
    column.addWidget(asked)
    for widget in widgets:
        if isinstance(widget, QWidget):
            column.addWidget(widget)
        else:
            column.addLayout(widget)
    return box


class FaithfulnessView(QWidget):
    """Deletion (falling) and insertion (rising) curves of the class probability, the map's
    AUCs, and a random map's AUCs on the same image as the bar to clear."""

    def __init__(self):
        super().__init__()
        self.summary = _note("Not scored yet.")
        self.plot = _plot(150, "fraction removed / revealed", "probability")
        self.deletion = self.plot.plot([], [], pen=pg.mkPen(theme.DANGER, width=2))
        self.insertion = self.plot.plot([], [], pen=pg.mkPen(theme.OK, width=2))
        dashed = Qt.PenStyle.DashLine
        self.chance_deletion = self.plot.plot([], [], pen=pg.mkPen(theme.DANGER, width=1, style=dashed))
        self.chance_insertion = self.plot.plot([], [], pen=pg.mkPen(theme.OK, width=1, style=dashed))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.plot)

    def clear(self, text: str = "Not scored yet.") -> None:
        self.summary.setText(text)
        for curve in (self.deletion, self.insertion, self.chance_deletion, self.chance_insertion):
            curve.setData([], [])

    def show_score(self, score, chance) -> None:
        self.deletion.setData(score.fractions, score.deletion_curve)
        self.insertion.setData(score.fractions, score.insertion_curve)
        self.chance_deletion.setData(chance.fractions, chance.deletion_curve)
        self.chance_insertion.setData(chance.fractions, chance.insertion_curve)
        better = score.deletion_auc < chance.deletion_auc and score.insertion_auc > chance.insertion_auc
        verdict = ("better than a random map on both curves" if better else
                   "NOT better than a random map on both curves: treat this map with caution")
        self.summary.setText(
            f"Deletion AUC {score.deletion_auc:.3f} (red, lower is better; random map {chance.deletion_auc:.3f})\n"
            f"Insertion AUC {score.insertion_auc:.3f} (green, higher is better; random map "
            f"{chance.insertion_auc:.3f})\n{'✓' if better else '⚠'} {verdict}. Dashed: the random map.")
        self.summary.setStyleSheet("" if better else f"color: {theme.WARNING};")


class SanityView(QWidget):
    """The trained map, then the map after each randomisation step, with its similarity."""

    def __init__(self):
        super().__init__()
        self.verdict = _note("Not checked yet.")
        self.grid = QGridLayout()
        self.grid.setSpacing(3)
        self.cells: list[QLabel] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.verdict)
        layout.addLayout(self.grid)

    def clear(self, text: str = "Not checked yet.") -> None:
        self.verdict.setText(text)
        self.verdict.setStyleSheet("")
        for cell in self.cells:
            self.grid.removeWidget(cell)
            cell.deleteLater()
        self.cells = []

    def _cell(self, seen: np.ndarray, saliency: np.ndarray, lut, caption: str) -> QLabel:
        step = thumbnail_step(seen.shape, SANITY_THUMB)
        sampled = saliency[::step, ::step]
        heat = map_to_uint8(sampled, float(saliency.max()))
        rgb = thumbnail(seen, (0.0, 1.0), heat, lut, 0.55, SANITY_THUMB)
        label = QLabel()
        label.setPixmap(rgb_pixmap(rgb))
        label.setToolTip(caption)
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(label)
        text = QLabel(caption)
        text.setStyleSheet("font-size: 8pt;")
        column.addWidget(text)
        return box

    def show_result(self, result, seen: np.ndarray, lut) -> None:
        self.clear()
        cells = [self._cell(seen, result.trained, lut, "trained\nmodel\n")]
        for step in result.steps:
            caption = f"{step.layers}\nρ {step.spearman:+.2f}\nSSIM {step.ssim:.2f}"
            cells.append(self._cell(seen, step.saliency, lut, caption))
        for i, cell in enumerate(cells):
            self.grid.addWidget(cell, i // SANITY_COLUMNS, i % SANITY_COLUMNS)
        self.cells = cells
        final = result.steps[-1]
        if result.barely_changes:
            self.verdict.setText(
                f"⚠ Barely changes: with every layer randomised the map still correlates ρ = "
                f"{final.spearman:.2f} (≥ {result.threshold:.2f}) with the trained map. It shows the "
                f"image more than the model: do not read it as the model's evidence.")
            self.verdict.setStyleSheet(f"color: {theme.WARNING}; font-weight: bold;")
        else:
            self.verdict.setText(
                f"✓ Depends on the model: with every layer randomised the map's rank correlation with "
                f"the trained map falls to {final.spearman:.2f} (marked below {result.threshold:.2f}).")
            self.verdict.setStyleSheet(f"color: {theme.OK};")


class ReliabilityView(QWidget):
    """Accuracy against confidence per bin, with the diagonal a calibrated model follows."""

    def __init__(self):
        super().__init__()
        self.summary = _note("No model loaded.")
        self.plot = _plot(160, "confidence", "accuracy")
        self.plot.plot([0, 1], [0, 1], pen=pg.mkPen(theme.MUTED, style=Qt.PenStyle.DashLine))
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.1, brush=theme.ACCENT)
        self.plot.addItem(self.bars)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.plot)

    def show_status(self, status) -> None:
        self.show_diagram(status.diagram, status.ece, status.source, status.warning)

    def show_diagram(self, diagram, ece: float | None, source: str, warning: str = "") -> None:
        if warning:
            self.summary.setText(f"⚠ {warning}")
            self.summary.setStyleSheet(f"color: {theme.WARNING}; font-weight: bold;")
        else:
            ece_text = f"Expected calibration error {ece:.3f}" if ece is not None else "ECE not recorded"
            self.summary.setText(f"{ece_text}: {source}.")
            self.summary.setStyleSheet("")
        if diagram is None:
            self.bars.setOpts(x=[], height=[], width=0.1)
            self.plot.setVisible(False)
            return
        filled = diagram.counts > 0
        centres = (diagram.edges[:-1] + diagram.edges[1:]) / 2
        self.bars.setOpts(x=centres[filled], height=diagram.accuracy[filled],
                          width=float(np.diff(diagram.edges).min()) * 0.9)
        self.plot.setVisible(True)
