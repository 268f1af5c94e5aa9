"""One image viewport: a pyqtgraph ViewBox with the image, an optional explanation overlay and
corner annotations, driven by reading-room mouse conventions (OHIF / Weasis):
left drag window/level, middle drag pan, right drag zoom, wheel next image, double click fit.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QWidget

from viewer.display import DisplayImage, gray_lut

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

_ZOOM_PER_PIXEL = 0.01


class ReadingViewBox(pg.ViewBox):
    """A ViewBox whose mouse buttons mean what radiologists expect, not pyqtgraph's defaults."""

    windowDragged = Signal(float, float)  # screen dx, dy in pixels
    wheelStepped = Signal(int)  # +1 next, -1 previous
    fitRequested = Signal()

    def __init__(self):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)

    def mouseDragEvent(self, ev, axis=None):
        button = ev.button()
        if button == Qt.MouseButton.LeftButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.windowDragged.emit(float(delta.x()), float(delta.y()))
        elif button == Qt.MouseButton.MiddleButton:
            ev.accept()
            self.translateBy(self.mapToView(ev.lastPos()) - self.mapToView(ev.pos()))
            self.sigRangeChangedManually.emit(self.state["mouseEnabled"])
        elif button == Qt.MouseButton.RightButton:
            ev.accept()
            dy = ev.screenPos().y() - ev.lastScreenPos().y()
            factor = math.exp(dy * _ZOOM_PER_PIXEL)  # drag down = zoom out, as in Weasis
            self.scaleBy((factor, factor), self.mapToView(ev.buttonDownPos()))
            self.sigRangeChangedManually.emit(self.state["mouseEnabled"])
        else:
            ev.ignore()

    def mouseClickEvent(self, ev):
        if ev.double():
            ev.accept()
            self.fitRequested.emit()
        else:
            ev.ignore()

    def wheelEvent(self, ev, axis=None):
        ev.accept()
        self.wheelStepped.emit(-1 if ev.delta() > 0 else 1)


class Viewport(QWidget):
    """The image (window/level via levels + LUT) with the overlay as a second ImageItem."""

    def __init__(self, title: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.view = pg.GraphicsView()
        self.box = ReadingViewBox()
        self.view.setCentralItem(self.box)
        self.image = pg.ImageItem()
        self.overlay = pg.ImageItem()
        self.overlay.setZValue(10)
        self.overlay.setVisible(False)
        self.box.addItem(self.image)
        self.box.addItem(self.overlay)
        self._shape: tuple[int, int] | None = None
        # Until the reader zooms or pans, the image keeps fitting the viewport as it resizes.
        self._auto_fit = True
        self._display: DisplayImage | None = None
        self._level: str | None = None
        self.box.sigRangeChangedManually.connect(self._stop_auto_fit)
        self.box.sigRangeChanged.connect(lambda *_: self._show_level())
        self.box.sigResized.connect(self._resized)

        corners = QWidget()
        corners.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        # Long annotations must not widen the viewport (both viewports stay the same size).
        corners.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        corners.setStyleSheet("background: transparent; color: #e8e0a0;")
        grid = QGridLayout(corners)
        grid.setContentsMargins(8, 6, 8, 6)
        self.corner_labels: dict[str, QLabel] = {}
        for name, row, col, align in (
            ("top_left", 0, 0, Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft),
            ("top_right", 0, 1, Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight),
            ("bottom_left", 1, 0, Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignLeft),
            ("bottom_right", 1, 1, Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignRight),
        ):
            label = QLabel()
            label.setAlignment(align)
            # A dim backing keeps the text legible over bright parts of the image.
            label.setStyleSheet("background: rgba(0, 0, 0, 120); padding: 1px 3px; font-size: 10pt;")
            label.setObjectName(f"corner_{name}")
            label.setVisible(False)
            grid.addWidget(label, row, col, align)
            self.corner_labels[name] = label
        if title:
            self.set_corner("top_right", title)
        self.title = title

        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        # Same cell: the annotations float over the image without taking space from it.
        layout.addWidget(self.view, 0, 0)
        layout.addWidget(corners, 0, 0)
        self.box.fitRequested.connect(self.fit)

    # image -----------------------------------------------------------------
    def set_image(self, display: DisplayImage | None, levels: tuple[float, float] | None = None):
        self._display = display
        self._level = None
        if display is None:
            self.image.clear()
            self.overlay.clear()
            self._shape = None
            return
        levels = levels or (0.0, 255.0 if display.is_color else 65535.0)
        self.image.setLookupTable(gray_lut(False))
        self._show_level(levels)
        new_shape = display.data.shape[:2]
        if new_shape != self._shape:
            self._shape = new_shape
            self.fit()

    def _show_level(self, levels=None) -> None:
        """Full resolution when zoomed in, the reduced copy when it has enough pixels."""
        display = self._display
        if display is None:
            return
        level = "full"
        if display.reduced is not None:
            factor = display.data.shape[1] / display.reduced.shape[1]
            level = "reduced" if self.zoom() * factor <= 1.0 else "full"
        if level == self._level:
            return
        self._level = level
        h, w = display.data.shape[:2]
        data = display.reduced if level == "reduced" else display.data
        self.image.setImage(data, levels=levels if levels is not None else self.image.levels,
                            autoLevels=False, rect=QRectF(0, 0, w, h))

    @property
    def shows_reduced(self) -> bool:
        return self._level == "reduced"

    def set_levels(self, levels: tuple[float, float]) -> None:
        self.image.setLevels(levels)

    def set_invert(self, invert: bool) -> None:
        self.image.setLookupTable(gray_lut(invert))

    def fit(self) -> None:
        self._auto_fit = True
        if self._shape is not None:
            h, w = self._shape
            self.box.setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def _stop_auto_fit(self, *_):
        self._auto_fit = False

    def _resized(self, *_) -> None:
        if self._auto_fit:
            self.fit()

    # overlay ---------------------------------------------------------------
    def set_overlay(self, data: np.ndarray | None) -> None:
        if data is None:
            self.overlay.clear()
            return
        # The map may be sampled coarser than the image (a smooth map gains nothing from 4
        # million pixels): stretch it over the whole image.
        h, w = self._shape or data.shape[:2]
        self.overlay.setImage(data, levels=(0, 255), autoLevels=False, rect=QRectF(0, 0, w, h))

    def set_overlay_lut(self, lut: np.ndarray) -> None:
        self.overlay.setLookupTable(lut)

    def set_overlay_opacity(self, opacity: float) -> None:
        self.overlay.setOpacity(opacity)

    def set_overlay_visible(self, visible: bool) -> None:
        self.overlay.setVisible(visible)

    # annotations -----------------------------------------------------------
    def set_corner(self, corner: str, text: str) -> None:
        label = self.corner_labels[corner]
        label.setText(text)
        label.setVisible(bool(text))  # an empty label would still show its dark backing

    def zoom(self) -> float:
        """Screen pixels per image pixel."""
        (x0, x1), _ = self.box.viewRange()
        width = self.box.width()
        return width / (x1 - x0) if x1 > x0 else 1.0


def link(primary: Viewport, *others: Viewport) -> None:
    """Zoom and pan move together: linked ViewBoxes share one range."""
    for other in others:
        other.box.setXLink(primary.box)
        other.box.setYLink(primary.box)
