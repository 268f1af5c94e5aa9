"""Finding a main-window menu by its title, so that workflow modules add to File, View or
Analysis rather than each making a menu of its own."""

from __future__ import annotations

from PySide6.QtWidgets import QMenu


def menu_named(window, title: str) -> QMenu:
    """The menu bar's menu called ``title`` ("&" accelerators ignored), made if missing."""
    bar = window.menuBar()
    for action in bar.actions():
        menu = action.menu()
        if menu is not None and action.text().replace("&", "") == title.replace("&", ""):
            return menu
    return bar.addMenu(title)
