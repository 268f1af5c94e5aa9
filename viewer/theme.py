"""Dark reading-room theme: low surround luminance, readable type, one accent colour."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BACKGROUND = "#101214"
PANEL = "#1b1e22"
TEXT = "#dde1e6"
MUTED = "#9aa3ad"
ACCENT = "#4fa3e0"
WARNING = "#f0a030"
DANGER = "#e8584f"
OK = "#6cc070"

STYLE = f"""
QWidget {{ color: {TEXT}; }}
QMainWindow, QDockWidget, QTabWidget::pane {{ background: {PANEL}; }}
QDockWidget::title {{ background: #23272c; padding: 4px; }}
QToolBar {{ background: #23272c; border: none; spacing: 2px; }}
QToolButton:checked {{ background: #2f4a60; }}
QLabel#banner {{ background: #5a1f1c; color: #ffe3e0; padding: 6px; border-radius: 3px; }}
QLabel#outsideBanner {{ background: #5c3d00; color: #ffe9c2; padding: 6px; border-radius: 3px; font-weight: bold; }}
QLabel#flag {{ color: {WARNING}; font-weight: bold; }}
QLabel#demoNotice {{ background: #4a3a10; color: #ffe9b0; padding: 4px; border-radius: 3px; }}
QProgressBar {{ border: 1px solid #3a3f45; border-radius: 3px; text-align: center; }}
QProgressBar::chunk {{ background: {ACCENT}; }}
"""


def apply(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, PANEL), (QPalette.ColorRole.WindowText, TEXT),
        (QPalette.ColorRole.Base, BACKGROUND), (QPalette.ColorRole.AlternateBase, "#22262b"),
        (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, "#262a30"),
        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, ACCENT),
        (QPalette.ColorRole.HighlightedText, "#000000"), (QPalette.ColorRole.ToolTipBase, PANEL),
        (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.PlaceholderText, MUTED),
    ):
        palette.setColor(role, QColor(color))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(MUTED))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(MUTED))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSize(11)
    app.setFont(font)
    app.setStyleSheet(STYLE)
    pg.setConfigOptions(background=BACKGROUND, foreground=TEXT)
