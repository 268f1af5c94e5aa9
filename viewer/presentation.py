"""Presentation mode for a projector: full screen, large text, identifying text hidden.

A :class:`Presentation` belongs to one top-level window (the main window or a teaching window).
Turning it on enlarges every font in that window (the base size and each widget's own style
sheet size), goes full screen and, on the main window, hides identifying text, the toolbar, the
status line and every panel but the results and the class maps; turning it off puts back exactly what was there before.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication, QDockWidget, QToolBar, QWidget

from viewer.menus import menu_named

SCALE = 1.8
KEPT_DOCKS = ("Results", "Class maps and overlay")  # what a class needs to see; nothing names a file
_SIZE = re.compile(r"font-size:\s*(\d+(?:\.\d+)?)pt")


class Presentation:
    def __init__(self, window: QWidget, on_change=None):
        self.window = window
        self.on_change = on_change
        self.active = False
        self._restore: list = []

    def toggle(self) -> None:
        self.set_active(not self.active)

    def set_active(self, active: bool) -> None:
        if active == self.active:
            return
        if active:
            self._enter()
        else:
            self._leave()
        self.active = active
        if self.on_change is not None:
            self.on_change(active)

    def _enter(self) -> None:
        w = self.window
        restore = self._restore = []
        # Qt does not pass a parent's setFont() down through style sheets, so the larger size is a
        # style sheet rule; widgets that set their own size get theirs scaled.
        base = QApplication.instance().font().pointSizeF() * SCALE
        sheet = w.styleSheet()
        restore.append(lambda s=sheet: w.setStyleSheet(s))
        w.setStyleSheet(f"{sheet}\nQWidget {{ font-size: {base:.0f}pt; }}")
        for child in w.findChildren(QWidget):
            own = child.styleSheet()
            if _SIZE.search(own):
                restore.append(lambda c=child, s=own: c.setStyleSheet(s))
                child.setStyleSheet(_SIZE.sub(lambda m: f"font-size: {float(m.group(1)) * SCALE:.0f}pt", own))
        anonymize = getattr(w, "actions_", {}).get("anonymize")
        if anonymize is not None:
            restore.append(lambda was=anonymize.isChecked(): (anonymize.setChecked(was), w.apply_hide_identifying()))
            anonymize.setChecked(True)
            w.apply_hide_identifying()
        for bar in w.findChildren(QToolBar):
            restore.append(lambda b=bar, v=bar.isVisible(): b.setVisible(v))
            bar.setVisible(False)
        # Browsers, worklists and the status line name files and patients: not for a projector.
        for dock in w.findChildren(QDockWidget):
            if dock.objectName() not in KEPT_DOCKS:
                restore.append(lambda d=dock, v=dock.isVisible(): d.setVisible(v))
                dock.setVisible(False)
            elif dock.objectName() == "Results" and hasattr(w, "resizeDocks"):
                restore.append(lambda d=dock, width=dock.width(): w.resizeDocks([d], [width], Qt.Orientation.Horizontal))
                w.resizeDocks([dock], [int(dock.width() * SCALE)], Qt.Orientation.Horizontal)
        if hasattr(w, "statusBar"):
            bar = w.statusBar()
            restore.append(lambda v=bar.isVisible(): bar.setVisible(v))
            bar.setVisible(False)
        restore.append(lambda state=w.windowState(): w.setWindowState(state))
        w.setWindowState(w.windowState() | Qt.WindowState.WindowFullScreen)

    def _leave(self) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore = []


def install(window) -> None:
    """View > Presentation mode (F11) on the main window."""
    from PySide6.QtGui import QAction

    window.presentation = Presentation(window, lambda on: action.setChecked(on))
    action = QAction("Presentation mode", window)
    action.setCheckable(True)
    action.setShortcut(QKeySequence("F11"))
    action.setToolTip("Full screen, large text, identifying text hidden: for a projector (F11)")
    action.triggered.connect(lambda checked: window.presentation.set_active(bool(checked)))
    window.addAction(action)
    menu_named(window, "&View").addAction(action)
    window.actions_["presentation"] = action
