"""Per-class map strip: one thumbnail per class with its probability; a click picks the class
whose map the overlay shows."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QToolButton, QWidget

THUMB = 96


def rgb_pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())  # copy: the QImage must not outlive the array


class ClassStrip(QWidget):
    classSelected = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.buttons: list[QToolButton] = []
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        self.group.idClicked.connect(self.classSelected)
        self.layout_ = QHBoxLayout(self)
        self.layout_.setContentsMargins(4, 4, 4, 4)
        self.layout_.addStretch(1)

    def set_classes(self, classes, probabilities, thumbnails, selected: int) -> None:
        for button in self.buttons:
            self.group.removeButton(button)
            button.deleteLater()
        self.buttons = []
        for i, (name, p, thumb) in enumerate(zip(classes, probabilities, thumbnails)):
            button = QToolButton()
            button.setObjectName(f"thumb_{name}")
            button.setCheckable(True)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            button.setIcon(QIcon(rgb_pixmap(thumb)))
            button.setIconSize(QSize(THUMB, THUMB))
            button.setText(f"{name}\n{float(p):.1%}")
            button.setToolTip(f"Show the map for '{name}'")
            self.group.addButton(button, i)
            self.layout_.insertWidget(i, button)
            self.buttons.append(button)
        self.select(selected)

    def update_thumbnails(self, thumbnails) -> None:
        for button, thumb in zip(self.buttons, thumbnails):
            button.setIcon(QIcon(rgb_pixmap(thumb)))

    def select(self, index: int) -> None:
        if 0 <= index < len(self.buttons):
            self.buttons[index].setChecked(True)

    def clear(self) -> None:
        self.set_classes([], [], [], -1)
