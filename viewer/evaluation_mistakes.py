"""The Evaluate dialog's Mistakes tab: the misclassified cases and the correct ones the model was
unsure of (engine.workflows.evaluation_run's list), with a thumbnail, the true and predicted class,
the probability and the MC-dropout uncertainty. Clicking a case opens it in the side-by-side
reading view, with the other listed cases a step away (the session's file list)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize
from PySide6.QtGui import QColor, QIcon
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from engine.workflows.evaluation_outputs import thumbnail
from engine.workflows.evaluation_run import MISCLASSIFIED
from viewer import theme
from viewer.class_strip import rgb_pixmap
from viewer.jobs import CallJob

THUMBNAILS_JOB = "evaluation-thumbnails"  # a newer report's thumbnails replace an older one's
THUMB = 64
COLUMNS = ("Image", "Kind", "File", "True", "Predicted", "Probability", "Confidence", "Entropy", "Mutual inf.")


def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


class MistakesView(QWidget):
    def __init__(self, window, report: dict):
        super().__init__()
        self.window_ = window
        self.mistakes = report["mistakes"]
        wrong = sum(m["kind"] == MISCLASSIFIED for m in self.mistakes)
        note = QLabel(f"{wrong} misclassified, {len(self.mistakes) - wrong} correct but unsure. Listed: "
                      f"{report['mistakes_definition']}. Click a case to open it in the reading view.")
        note.setWordWrap(True)
        self.table = QTableWidget(len(self.mistakes), len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(THUMB + 6)
        self.table.setIconSize(QSize(THUMB, THUMB))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("File"), QHeaderView.ResizeMode.Stretch)
        header.resizeSection(0, THUMB + 12)
        for r, m in enumerate(self.mistakes):
            u = m["uncertainty"] or {}
            texts = ("", "misclassified" if m["kind"] == MISCLASSIFIED else "unsure", m["file"], m["true"],
                     m["predicted"], _fmt(m["probability"]), _fmt(u.get("confidence")),
                     _fmt(u.get("predictive_entropy")), _fmt(u.get("mutual_information"), "{:.2g}"))
            for c, text in enumerate(texts):
                item = QTableWidgetItem(text)
                item.setToolTip(m["path"])
                if c == 1:
                    item.setForeground(QColor(theme.DANGER if m["kind"] == MISCLASSIFIED else theme.WARNING))
                self.table.setItem(r, c, item)
        self.table.cellClicked.connect(lambda row, _column: self.open_case(row))
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addWidget(self.table, 1)
        self.thumbnails_ready = False
        if self.mistakes:
            # Reading the images is file work: on a worker, the table is usable meanwhile.
            paths = [m["path"] for m in self.mistakes]
            job = CallJob(lambda: [thumbnail(p, THUMB) for p in paths], "making thumbnails", background=True)
            window.session.runner.start(job, key=THUMBNAILS_JOB, on_done=self._thumbnails)

    def _thumbnails(self, pictures: list) -> None:
        for r, picture in enumerate(pictures):
            if picture is not None:
                self.table.item(r, 0).setIcon(QIcon(rgb_pixmap(picture)))
            else:
                self.table.item(r, 0).setText("not readable")
        self.thumbnails_ready = True

    def open_case(self, row: int) -> None:
        """The case in the side-by-side view; the other listed cases follow it in the file list."""
        if not 0 <= row < len(self.mistakes):
            return
        session = self.window_.session
        session.open_files([Path(m["path"]) for m in self.mistakes], row)
        self.window_.tabs.setCurrentIndex(0)  # the side-by-side reading view
        self.window_.raise_()
        self.window_.activateWindow()
