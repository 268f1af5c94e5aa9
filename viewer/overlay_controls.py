"""Overlay controls: method, opacity, colormap with a numbered colorbar, scale, threshold,
filled or contour display."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QFormLayout, QHBoxLayout,
                               QRadioButton, QSlider, QWidget)

from viewer.display import COLORMAPS, METHOD_LABELS


class ColorBar(pg.PlotWidget):
    """The overlay's LUT drawn as a vertical bar with its value axis."""

    def __init__(self):
        super().__init__()
        self.setFixedWidth(78)
        self.setMinimumHeight(140)
        self.getPlotItem().setContentsMargins(0, 10, 4, 10)  # room for the end labels
        self.setMenuEnabled(False)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.hideAxis("bottom")
        self.item = pg.ImageItem(np.linspace(0, 255, 256).astype(np.uint8)[:, None])
        self.item.setLevels((0, 255))
        self.addItem(self.item)
        self.set_range(0.0, 1.0)

    def set_lut(self, lut: np.ndarray) -> None:
        opaque = lut.copy()
        opaque[:, 3] = np.maximum(opaque[:, 3], 40)  # transparent entries still show, dimmed
        self.item.setLookupTable(opaque)

    def set_range(self, low: float, high: float) -> None:
        high = high if high > low else low + 1.0
        self.item.setRect(0, low, 1, high - low)
        self.setXRange(0, 1, padding=0)
        self.setYRange(low, high, padding=0)
        self.range = (low, high)


class OverlayControls(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.method = QComboBox()
        for key, label in METHOD_LABELS.items():
            self.method.addItem(label, key)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setObjectName("opacitySlider")
        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 95)
        self.normalized = QRadioButton("Per image")
        self.absolute = QRadioButton("Absolute")
        self.normalized.setToolTip("Each class map scaled to its own peak (0..1)")
        self.absolute.setToolTip("The method's own units, one scale for all classes of this image")
        scale_group = QButtonGroup(self)
        scale_group.addButton(self.normalized)
        scale_group.addButton(self.absolute)
        self.normalized.setChecked(True)
        self.contour = QCheckBox("Contours")
        self.hide_below_cutoff = QCheckBox("Hide below cut-off")
        self.hide_below_cutoff.setToolTip("Do not show the map of a class whose probability is below its cut-off "
                                          "(the model does not claim that finding)")
        self.colorbar = ColorBar()

        scale_row = QHBoxLayout()
        scale_row.addWidget(self.normalized)
        scale_row.addWidget(self.absolute)
        form = QFormLayout()
        form.addRow("Method", self.method)
        form.addRow("Opacity", self.opacity)
        form.addRow("Colormap", self.colormap)
        form.addRow("Threshold", self.threshold)
        form.addRow("Scale", scale_row)
        display_row = QHBoxLayout()
        display_row.addWidget(self.contour)
        display_row.addWidget(self.hide_below_cutoff)
        form.addRow("Display", display_row)
        self.setMinimumWidth(420)
        layout = QHBoxLayout(self)
        layout.addLayout(form, 1)
        layout.addWidget(self.colorbar)
        for signal in (self.method.currentIndexChanged, self.opacity.valueChanged,
                       self.colormap.currentIndexChanged, self.threshold.valueChanged,
                       self.normalized.toggled, self.contour.toggled, self.hide_below_cutoff.toggled):
            signal.connect(self.changed)

    # values --------------------------------------------------------------
    def method_key(self) -> str:
        return self.method.currentData()

    def opacity_value(self) -> float:
        return self.opacity.value() / 100.0

    def threshold_value(self) -> float:
        return self.threshold.value() / 100.0

    def scale(self) -> str:
        return "normalized" if self.normalized.isChecked() else "absolute"

    def set_values(self, *, method: str, opacity: float, colormap: str, threshold: float,
                   scale: str, contour: bool) -> None:
        index = self.method.findData(method)
        self.method.setCurrentIndex(max(index, 0))
        self.opacity.setValue(round(opacity * 100))
        self.colormap.setCurrentIndex(max(self.colormap.findText(colormap), 0))
        self.threshold.setValue(round(threshold * 100))
        (self.absolute if scale == "absolute" else self.normalized).setChecked(True)
        self.contour.setChecked(bool(contour))
