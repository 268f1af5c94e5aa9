"""The worklist: a folder or DICOMDIR triaged in the background (engine.workflows.batch), one row per image,
flagged (low-confidence) images first; selecting a row opens it in the side-by-side view. Beside the
table, in a tab of its own, the batch's uncertainty over all its images (viewer/uncertainty_panel.py).

The batch writes its results and resume record under Lantern's own data folder (one subfolder per
source folder), never beside the sources; opening the same folder again reuses what is done.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QStandardPaths, Qt
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QFileDialog, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QTableView,
                               QTabWidget, QVBoxLayout, QWidget)

from viewer import logs
from viewer.jobs import StepsJob, user_message
from viewer.menus import menu_named
from viewer.uncertainty_panel import UncertaintyPanel
from viewer.worklist_table import COLUMNS, FLAGGED_COLUMN, WorklistFilter, WorklistModel

if TYPE_CHECKING:
    from engine import Progress
    from engine.workflows.batch import BatchResult

BATCH_JOB = "worklist"  # its key on the window's job runner: a new run replaces the running one


def output_folder(root: Path, source: Path) -> Path:
    """Where the batch of ``source`` keeps its results: one stable subfolder per source folder."""
    digest = hashlib.sha256(str(source.resolve()).encode("utf-8")).hexdigest()[:16]
    return root / digest


def default_output_root() -> Path:
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(location) / "worklists"


class WorklistPanel(QWidget):
    def __init__(self, window, output_root: Path | None = None):
        super().__init__()
        self.window = window
        self.output_root = output_root or default_output_root()
        self.source: Path | None = None
        self.failures: tuple = ()
        self._live: list = []
        self.model = WorklistModel(self)
        self.proxy = WorklistFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(FLAGGED_COLUMN, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Image"), QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().currentRowChanged.connect(lambda current, _previous: self.open_row(current.row()))
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter: patient, study, image or class")
        self.filter.textChanged.connect(self.proxy.set_text)
        self.flagged_only = QCheckBox("Flagged only")
        self.flagged_only.toggled.connect(self.proxy.set_flagged_only)
        self.anonymous = QCheckBox("Anonymous IDs")
        self.anonymous.setToolTip("Show keyed-hash pseudonyms instead of patient IDs (takes effect on the next run)")
        self.open_button = QPushButton("Open folder…")
        self.open_button.clicked.connect(self.choose_folder)
        self.progress = QProgressBar()
        self.progress.setMinimumWidth(180)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("Open a folder or DICOMDIR to triage all of its images.")
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        for widget in (self.open_button, self.filter, self.flagged_only, self.anonymous, self.progress,
                       self.cancel_button):
            top.addWidget(widget)
        top.setStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(top)
        # Tabs, not a splitter: the table's columns already need the central area's whole width.
        self.uncertainty = UncertaintyPanel(window)
        self.views = QTabWidget()
        self.views.addTab(self.table, "Images")
        self.views.addTab(self.uncertainty, "Uncertainty")
        self.uncertainty.shown.connect(lambda text: self.views.setTabText(1, text))
        layout.addWidget(self.views, 1)
        layout.addWidget(self.status)

    # running -------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.window, "Open worklist folder",
                                                  self.window.settings.get("last_folder"))
        if folder:
            self.run(Path(folder))

    def run(self, source: Path, *, keep_rows: bool = False) -> None:
        """``keep_rows``: the same source again because files arrived (viewer/inbox_feed.py): the
        shown rows, and the reader's selection with them, stay; the batch reuses their results and
        only the new rows are appended."""
        import engine
        from engine.workflows.batch import BatchOptions, BatchResult, batch_steps

        model = self.window.session.model
        if model is None:
            self.window.show_error("Open a model bundle first: the worklist analyses with the loaded model.")
            return
        self.cancel()
        if not (keep_rows and self.source == Path(source)):
            self.model.set_rows([])
            self.uncertainty.clear()
        live: list = []  # rows as the batch makes them (appended on its thread, read here)
        self._live = live
        source = Path(source)
        logs.register_path(source)
        self.source = source
        out = output_folder(self.output_root, source)
        options = BatchOptions(anonymize=self.anonymous.isChecked())
        folder, engine_name = model.bundle.folder, model.engine
        # The batch opens its own engine: the reading session's analyses keep theirs, undisturbed.
        # Background work: opening and analysing images in the reading view goes first.
        job = StepsJob[BatchResult](
            lambda: batch_steps(source, out, engine.load_model(folder, engine_name), options, on_row=live.append),
            "triaging a folder", background=True)
        self.runner.start(job, key=BATCH_JOB, on_done=self._done, on_failed=self._failed, on_progress=self._progress)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.status.setText(f"Triaging {source.name}…")
        self.window.show_status(f"Worklist: triaging {source.name}…")

    @property
    def runner(self):
        return self.window.session.runner

    def cancel(self) -> None:
        """Stop the batch; the table keeps what it has analysed and nothing more arrives. The batch
        stops between two chunks and saves its record (engine.workflows.batch)."""
        if self.runner.drop(BATCH_JOB):
            self.model.append_rows(self._live[len(self.model.rows):])
            self._idle(f"Cancelled. What was analysed is kept; open {self.source.name} again to continue.")

    @property
    def running(self) -> bool:
        return self.runner.running(BATCH_JOB)

    def _idle(self, message: str) -> None:
        if self.cancel_button.hasFocus():
            # Hidden with the focus, the button would pass it on to the table, which then makes
            # its first row current, and that opens the row's image in the reading view.
            self.open_button.setFocus()
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.status.setText(message)
        self.window.show_status(f"Worklist: {message}")

    def _progress(self, progress: Progress) -> None:
        self.progress.setRange(0, progress.total)
        self.progress.setValue(progress.step)
        self.progress.setFormat("%v/%m")
        self.model.append_rows(self._live[len(self.model.rows):])
        self.status.setText(f"Triaging {self.source.name}: {progress.stage}")

    def _done(self, result: BatchResult) -> None:
        self.failures = result.failures
        self.model.append_rows(self._live[len(self.model.rows):])  # keeps the reader's selection
        if len(self.model.rows) != len(result.rows):
            self.model.set_rows(result.rows)
        flagged = sum(r.flagged for r in result.rows)
        message = (f"{len(result.rows)} image(s): {flagged} flagged, {result.analysed} analysed now, "
                   f"{result.reused} from before.")
        if result.failures:
            message += f" {len(result.failures)} file(s) not analysed (hover for reasons)."
        self.status.setToolTip("\n".join(f"{p.name}: {why}" for p, why in result.failures))
        self._idle(message)
        self.uncertainty.show_batch(result)

    def _failed(self, exc: BaseException) -> None:
        self._idle("Stopped.")
        self.window.show_error(user_message(exc, "triaging a folder"))

    # opening -------------------------------------------------------------------
    def visible_rows(self) -> list:
        return [self.model.rows[self.proxy.mapToSource(self.proxy.index(i, 0)).row()]
                for i in range(self.proxy.rowCount())]

    def open_row(self, proxy_row: int) -> None:
        rows = self.visible_rows()
        if not 0 <= proxy_row < len(rows):
            return
        session, row = self.window.session, rows[proxy_row]
        shown = session.files[session.index] if 0 <= session.index < len(session.files) else None
        if (shown, session.frame) == (row.path, row.frame):
            return  # the same row after a sort or filter: already on screen
        session.open_files([r.path for r in rows], proxy_row)
        if row.frame:
            session.show_index(proxy_row, row.frame)
        self.window.tabs.setCurrentIndex(0)  # the side-by-side reading view


class _CancelOnClose(QObject):
    """A running batch stops when the main window closes, rather than keeping the app alive."""

    def __init__(self, panel: WorklistPanel):
        super().__init__(panel)
        self.panel = panel

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Close:
            self.panel.cancel()
        return False


def install(window) -> None:
    panel = WorklistPanel(window)
    window.installEventFilter(_CancelOnClose(panel))
    # A tab beside Reading: the worklist's columns need the width only the central area has.
    window.tabs.addTab(panel, "Worklist")
    window.worklist = panel

    def open_folder() -> None:
        window.tabs.setCurrentWidget(panel)
        panel.choose_folder()

    from viewer.actions import _action

    action = _action(window, "Open worklist folder…", open_folder, "Ctrl+Shift+W",
                     tip="Triage every image of a folder or DICOMDIR into a worklist")
    file_menu = menu_named(window, "&File")
    recent = getattr(window, "recent_menu", None)
    file_menu.insertAction(recent.menuAction() if recent is not None else None, action)
    window.actions_["open_worklist"] = action
