"""Secondary panels: the methods compared side by side, what the model saw, the DICOM tags."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from viewer import theme
from viewer.display import METHOD_LABELS, METHODS, DisplayImage
from viewer.viewport import Viewport, link

# Tag groups/elements that identify a person or place; hidden in teaching mode.
IDENTIFYING_PREFIXES = ("(0010,", "(0008,0080)", "(0008,0081)", "(0008,0090)", "(0008,1050)",
                        "(0008,1070)", "(0032,1032)", "(0008,0050)", "(0020,0010)")
AGREEMENT_LOW = 0.5  # below this rank correlation two methods order the image differently


class CompareView(QWidget):
    """Grad-CAM, Grad-CAM++ and Layer-CAM for the shown class, in step with each other."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewports = {m: Viewport(METHOD_LABELS[m]) for m in METHODS}
        self.agreement = QLabel()
        self.agreement.setWordWrap(True)
        self.agreement.setToolTip("Spearman rank correlation between two methods' maps of the shown class, on the "
                                  "model's grid: 1 = same order of importance, 0 = unrelated, < 0 = opposite")
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        layout = QHBoxLayout()
        layout.setSpacing(2)
        for viewport in self.viewports.values():
            viewport.set_overlay_visible(True)
            layout.addWidget(viewport)
        column.addLayout(layout, 1)
        column.addWidget(self.agreement)
        first, *rest = self.viewports.values()
        link(first, *rest)

    def set_image(self, display: DisplayImage | None, levels) -> None:
        for viewport in self.viewports.values():
            viewport.set_image(display, levels)

    def set_levels(self, levels) -> None:
        for viewport in self.viewports.values():
            viewport.set_levels(levels)

    def set_invert(self, invert: bool) -> None:
        for viewport in self.viewports.values():
            viewport.set_invert(invert)

    def set_maps(self, maps: dict[str, np.ndarray | None], class_name: str, hidden: str = "") -> None:
        for method, viewport in self.viewports.items():
            viewport.set_overlay(maps.get(method))
            missing = "" if maps.get(method) is not None or hidden else " (not computed)"
            note = f"\n⚠ {hidden}" if hidden else ""
            viewport.set_corner("top_right", f"{METHOD_LABELS[method]}{missing}\nclass: {class_name}{note}")

    def set_agreement(self, pairs: dict[tuple[str, str], float], class_name: str) -> None:
        """How alike the methods' maps of the shown class are; low agreement is marked, since
        then at most one of them can be showing the model's evidence faithfully."""
        if not pairs:
            self.agreement.setText("")
            return
        parts = [f"{METHOD_LABELS.get(a, a)} vs {METHOD_LABELS.get(b, b)}: {rho:+.2f}" for (a, b), rho in pairs.items()]
        low = min(pairs.values()) < AGREEMENT_LOW
        self.agreement.setText(f"Method agreement for '{class_name}' (rank correlation): " + " · ".join(parts)
                               + ("  ⚠ the methods disagree: compare before trusting any one of them" if low else ""))
        self.agreement.setStyleSheet(f"color: {theme.WARNING};" if low else "")

    def set_style(self, lut, opacity: float) -> None:
        for viewport in self.viewports.values():
            viewport.set_overlay_lut(lut)
            viewport.set_overlay_opacity(opacity)


class SeenPanel(QWidget):
    """The model's input after resizing and intensity scaling: what the classifier saw."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewport = Viewport("What the model saw")
        self.caption = QLabel("Run an analysis to see the model's input.")
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.viewport, 1)
        layout.addWidget(self.caption)

    def show_seen(self, seen: np.ndarray | None, caption: str = "") -> None:
        if seen is None:
            self.viewport.set_image(None)
            self.caption.setText(caption or "Run an analysis to see the model's input.")
            return
        data = np.clip(np.asarray(seen, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        self.viewport.set_image(DisplayImage(data, 0.0, 1.0, data.ndim == 3), (0, 255))
        self.caption.setText(caption)

    def show_grid(self, grid: np.ndarray | None, lut, opacity: float, visible: bool) -> None:
        """The map on the model's own feature grid, stretched over the input it came from:
        how coarse the evidence really is, before any smoothing onto the source image."""
        overlay = self.viewport.overlay
        image = self.viewport.image.image
        if grid is None or image is None:
            overlay.clear()
            self.viewport.set_overlay_visible(False)
            return
        top = float(grid.max())
        data = np.clip(grid * (255.0 / top if top > 0 else 0.0) + 0.5, 0, 255).astype(np.uint8)
        h, w = image.shape[:2]
        overlay.setImage(data, levels=(0, 255), autoLevels=False, rect=QRectF(0, 0, w, h))
        self.viewport.set_overlay_lut(lut)
        self.viewport.set_overlay_opacity(opacity)
        self.viewport.set_overlay_visible(visible)


class TagBrowser(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search tags (name, number or value)")
        self.search.setClearButtonEnabled(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Tag", "Name", "VR", "Value"])
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.search)
        layout.addWidget(self.tree)
        self._tags: tuple = ()
        self.hide_identifying = False
        self.search.textChanged.connect(self._refill)

    def set_tags(self, tags) -> None:
        self._tags = tuple(tags or ())
        self._refill()

    def set_hide_identifying(self, hide: bool) -> None:
        self.hide_identifying = hide
        self._refill()

    def _refill(self) -> None:
        needle = self.search.text().strip().lower()
        self.tree.clear()
        rows = []
        for tag in self._tags:
            if self.hide_identifying and tag.tag.startswith(IDENTIFYING_PREFIXES):
                continue
            text = f"{tag.tag} {tag.keyword} {tag.value}".lower()
            if needle and needle not in text:
                continue
            rows.append(QTreeWidgetItem([tag.tag, tag.keyword, tag.vr, tag.value]))
        self.tree.addTopLevelItems(rows)
        for column in range(3):
            self.tree.resizeColumnToContents(column)

    def visible_rows(self) -> int:
        return self.tree.topLevelItemCount()
