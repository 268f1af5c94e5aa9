"""Study browser: studies -> series -> images from engine.studies.scan_studies, with
thumbnails made in the background after the tree is shown.

The scan (the reader waits for it) is interactive work; the thumbnails are background work that
a new scan cancels. Both run under keys of the session's runner: the latest folder wins."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

import engine
from engine import Progress, Steps
from viewer import logs
from viewer.class_strip import rgb_pixmap
from viewer.display import thumbnail
from viewer.jobs import CallJob, StepsJob, user_message

log = logging.getLogger("lantern.studies")
PATH_ROLE = Qt.ItemDataRole.UserRole
THUMB = 40
MAX_THUMBNAILS = 200
SCAN_JOB, THUMBNAILS_JOB = "studies:scan", "studies:thumbnails"


def scan(paths) -> tuple[list, list]:
    from engine import scan_studies

    studies, skipped = [], []
    for path in paths:
        result = scan_studies(path)
        studies.extend(result.studies)
        skipped.extend(result.skipped)
        # Damaged or unreadable files are not listed either: the reader sees them with their reason.
        skipped.extend((failure.path, failure.reason) for failure in result.failed)
    return studies, skipped


def thumbnail_steps(paths: list[Path]) -> Steps[dict[Path, np.ndarray]]:
    """One step per file, so that a new folder stops the old folder's thumbnails at once."""
    thumbs = {}
    todo = paths[:MAX_THUMBNAILS]
    for n, path in enumerate(todo):
        yield Progress("making thumbnails", n, len(todo))
        try:
            source = engine.load_image(path)
        except engine.ImageLoadError as exc:
            log.info("no thumbnail: %s", exc)  # the reader sees the error when opening it
            continue
        w = source.window
        thumbs[path] = thumbnail(source.pixels, (w.low, w.high), None, np.zeros((256, 4), np.uint8), 0.0, THUMB)
    return thumbs


SKIPPED_IN_TOOLTIP = 15


def skipped_lines(skipped, hide_names: bool) -> list[str]:
    """One line per skipped file with the loader's plain-words reason (names hidden in teaching)."""
    return [f"{'file ' + str(n) if hide_names else Path(path).name}: {reason}"
            for n, (path, reason) in enumerate(skipped, 1)]


class SkippedFilesDialog(QDialog):
    """Which files a folder scan skipped, and why: a reader who expected an image there can see."""

    def __init__(self, lines: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"{len(lines)} files skipped")
        self.text = QPlainTextEdit("\n".join(lines))
        self.text.setReadOnly(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("These files were not listed as images:"))
        layout.addWidget(self.text, 1)
        layout.addWidget(buttons)
        self.resize(620, 360)


class StudyPanel(QWidget):
    def __init__(self, session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(QSize(THUMB, THUMB))
        self.info = QLabel("Open a folder to browse its studies.")
        self.info.setWordWrap(True)
        self.info.linkActivated.connect(lambda _link: self.show_skipped())
        self.skipped: list[tuple[Path, str]] = []
        self.skipped_dialog: SkippedFilesDialog | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.info)
        self.hide_identifying = False
        self._studies: list = []
        self._items: dict[Path, QTreeWidgetItem] = {}
        self._open_first = None
        self._opening = False
        self.thumbnails_shown = False  # for tools that render the window (screenshots, self-test)
        self._waiting: list = []  # (signal, slot) connections that start the thumbnails later
        self._deferred = None  # the thumbnails start, once the delay is over
        self._delay = QTimer(self, singleShot=True, interval=250)
        self._delay.timeout.connect(self._start_deferred)
        self.tree.itemActivated.connect(self._open_item)
        self.tree.itemClicked.connect(self._open_item)

    def scan(self, paths, open_first: bool = False, opening: bool = False) -> None:
        """Fill the tree; with ``open_first`` the first image of the first study is opened
        once the scan is in (a folder's order is the studies', not the file names').
        ``opening``: the caller is opening one of them itself (thumbnails wait for it)."""
        paths = [Path(p) for p in paths]
        for path in paths:
            logs.register_path(path)  # folder names can carry patient names too
        self.info.setText("Scanning…")
        self._open_first = paths if open_first else None
        self._opening = open_first or opening
        self.thumbnails_shown = False
        self._stop_waiting()
        self.session.runner.drop(THUMBNAILS_JOB)  # the last folder's, no longer wanted
        self.session.runner.start(CallJob[tuple[list, list]](lambda: scan(paths), "scanning studies"), key=SCAN_JOB,
                                  on_done=self._scanned, on_failed=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.info.setText(f"Could not scan: {user_message(exc, 'scanning studies')}")
        if self._open_first:
            self.session.open_paths(self._open_first)

    def _scanned(self, result: tuple[list, list]) -> None:  # studies, skipped files
        self._studies, skipped = result
        self.skipped = list(skipped)
        self.refill()
        n_images = len(self._items)
        note = f"{len(self._studies)} studies, {n_images} images"
        if skipped:
            note += f"; <a href='skipped'>{len(skipped)} files skipped</a> (not images or damaged: which and why)"
            lines = skipped_lines(skipped, self.hide_identifying)
            more = len(lines) - SKIPPED_IN_TOOLTIP
            self.info.setToolTip("\n".join(lines[:SKIPPED_IN_TOOLTIP]) + (f"\n… and {more} more" if more > 0 else ""))
        else:
            self.info.setToolTip("")
        self.info.setText(note)
        if self.session.image is not None:
            self.highlight(self.session.image.source.path)
        paths = list(self._items)
        for path in paths:
            logs.register_path(path)
        if self._open_first is not None:
            if paths:
                self.session.open_files(paths)
            else:
                self.session.open_paths(self._open_first)  # reports what is wrong with them
        self._after_first_image(lambda: self.session.runner.start(
            StepsJob[dict[Path, np.ndarray]](lambda: thumbnail_steps(paths), "making thumbnails", background=True),
            key=THUMBNAILS_JOB, on_done=self._thumbnails, on_failed=self._thumbnails_failed))

    def _after_first_image(self, start) -> None:
        """Run ``start`` once the image being opened is on screen (and analysed, when a model is
        there): thumbnails decode every file of the folder, and even on their own background
        thread they would slow the one image the reader is waiting for (two cores, one GIL)."""
        s = self.session
        self._stop_waiting()
        if not self._opening:
            start()
            return

        def go(*_) -> None:
            self._stop_waiting()
            self._deferred = start
            # A moment later still: the decoder holds Python's GIL much of the time, and the
            # window should paint the result before the thumbnails start.
            self._delay.start()

        self._waiting = [(s.analysisState, lambda state: go() if state != "running" else None),
                         (s.imageReady, lambda _image: go() if s.model is None else None),
                         (s.imageFailed, go)]
        for signal, slot in self._waiting:
            signal.connect(slot)

    def _stop_waiting(self) -> None:
        """Forget a deferred thumbnails start: a newer folder's replaces it."""
        for signal, slot in self._waiting:
            signal.disconnect(slot)
        self._waiting, self._deferred = [], None
        self._delay.stop()

    def _start_deferred(self) -> None:
        start, self._deferred = self._deferred, None
        if start is not None:
            start()

    def _thumbnails_failed(self, exc: BaseException) -> None:
        self.info.setText(f"{self.info.text()}; thumbnails unavailable: {user_message(exc, 'making thumbnails')}")

    def show_skipped(self) -> None:
        if not self.skipped:
            return
        self.skipped_dialog = SkippedFilesDialog(skipped_lines(self.skipped, self.hide_identifying), self)
        self.skipped_dialog.show()

    def set_hide_identifying(self, hide: bool) -> None:
        self.hide_identifying = hide
        self.refill()

    def refill(self) -> None:
        self.tree.clear()
        self._items = {}
        for study in self._studies:
            who = "" if self.hide_identifying or not study.patient_name else f"{study.patient_name} · "
            when = study.study_date if not self.hide_identifying else ""
            top = QTreeWidgetItem([f"{who}{when} {study.description}".strip() or "Study"])
            self.tree.addTopLevelItem(top)
            for series in study.series:
                label = f"{series.modality} {series.description}".strip() or "Series"
                node = QTreeWidgetItem([f"{label} ({len(series.images)})"])
                top.addChild(node)
                for ref in series.images:
                    frames = f" [{ref.frames} frames]" if ref.frames > 1 else ""
                    item = QTreeWidgetItem([f"{ref.path.name}{frames}"])
                    item.setData(0, PATH_ROLE, str(ref.path))
                    node.addChild(item)
                    self._items[ref.path] = item
            top.setExpanded(True)
            for i in range(top.childCount()):
                top.child(i).setExpanded(True)

    def _thumbnails(self, thumbs: dict[Path, np.ndarray]) -> None:
        self.thumbnails_shown = True
        for path, rgb in thumbs.items():
            item = self._items.get(path)
            if item is not None:
                icon = QIcon(rgb_pixmap(rgb))
                item.setIcon(0, icon)

    def highlight(self, path: Path) -> None:
        item = self._items.get(Path(path))
        if item is not None:
            self.tree.setCurrentItem(item)  # no itemClicked/itemActivated: nothing reopens

    def image_paths(self) -> list[Path]:
        return list(self._items)

    def _open_item(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        raw = item.data(0, PATH_ROLE)
        if not raw:
            return
        path = Path(raw)
        files = self.image_paths()
        if self.session.files != files:
            self.session.files = files
        if self.session.files and path in self.session.files:
            index = self.session.files.index(path)
            if index != self.session.index:
                self.session.show_index(index)
