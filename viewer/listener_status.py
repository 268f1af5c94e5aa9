"""The listener in the status bar ("Listening as LANTERN on 127.0.0.1:11112 — 12 received,
1 refused", "DICOM listener off", "DICOM listener failed: <reason>"), and the list of what it
refused: who sent it (AE title, address), which instance, and why.

Both are buttons, so the keyboard reaches them too: the status opens the DICOM nodes page, where
the listener is set up; "Refused…" opens the list.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel,
                               QTableWidget, QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from viewer.listener import FAILED, ON, DicomListener

REFUSAL_COLUMNS = ("Time", "Sender AE", "Address", "SOP Instance UID", "Reason")
STATUS_MAX_WIDTH = 720  # beside the window's own messages at 1366 px; the whole text is in the tooltip


class ListenerStatus(QWidget):
    settingsRequested = Signal()
    refusalsRequested = Signal()

    def __init__(self, listener: DicomListener, parent: QWidget | None = None):
        super().__init__(parent)
        self.listener = listener
        self.button = QToolButton()
        self.button.setObjectName("listenerStatus")
        self.button.setAutoRaise(True)  # reads as status text, still a button for mouse and keyboard
        self.button.clicked.connect(self.settingsRequested)
        self.refused_button = QToolButton()
        self.refused_button.setAutoRaise(True)
        self.refused_button.setText("Refused…")
        self.refused_button.setToolTip("What the listener refused, from whom and why")
        self.refused_button.clicked.connect(self.refusalsRequested)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        row.addWidget(self.button)
        row.addWidget(self.refused_button)
        listener.changed.connect(self.refresh)
        self.refresh()

    def text(self) -> str:
        return self.button.text()

    def refresh(self) -> None:
        full = self.listener.status_text()
        metrics = self.button.fontMetrics()
        self.button.setText(metrics.elidedText(full, Qt.TextElideMode.ElideRight, STATUS_MAX_WIDTH))
        self.button.setToolTip(full + "\nClick to set up the listener and the DICOM nodes.")
        colour = {ON: "", FAILED: "color: #ff8a80;"}.get(self.listener.state, "color: #9e9e9e;")
        self.button.setStyleSheet(colour)
        self.refused_button.setVisible(bool(self.listener.refusals))


class RefusalsDialog(QDialog):
    """The latest refusals, newest first; it follows the listener while it is open."""

    def __init__(self, listener: DicomListener, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Refused by the DICOM listener")
        self.listener = listener
        self.table = QTableWidget(0, len(REFUSAL_COLUMNS))
        self.table.setHorizontalHeaderLabels(REFUSAL_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(REFUSAL_COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        note = QLabel("A sender whose AE title or address is not on the listener's allow-list is refused before it "
                      "sends anything; an instance Lantern cannot analyse is refused on its own. The log has every one.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        self.resize(900, 360)
        listener.changed.connect(self.refresh)
        self.refresh()

    def rows(self) -> list[tuple[str, ...]]:
        return [self.table_row(event) for event in reversed(self.listener.refusals)]

    @staticmethod
    def table_row(event) -> tuple[str, ...]:
        when = event.when.replace("T", " ")[:19]
        what = event.sop_instance_uid or ("(whole association)" if event.kind == "rejected" else "(no UID)")
        status = f" (0x{event.status:04X})" if event.status is not None else ""
        return when, event.calling_ae, event.address, what, event.reason + status

    def refresh(self) -> None:
        rows = self.rows()
        self.table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(value)
                self.table.setItem(r, c, item)
        self.table.resizeRowsToContents()
