"""Teaching mode: a window that shows each case's image alone, lets the learner pick a class
(and click where the finding is), then reveals the model's answer, its map, its uncertainty and
the truth; at the end the learner's score is set against the model's and exported as CSV.

File > Teaching session > Demo teaching set opens the set shipped in resources/teaching;
"Open labels file…" any folder with a labels CSV (engine/workflows/labels.py). No file name, patient or
date is shown anywhere in the window.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QMainWindow, QMenu,
                               QPushButton, QSizePolicy, QStackedWidget, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

import engine
from engine import DEMO_MODEL, TEACHING_LABELS
from engine.workflows.labels import read_labels
from viewer import theme
from viewer.display import METHOD_LABELS, METHODS, map_to_uint8, overlay_lut, overlay_step
from viewer.jobs import CallJob, user_message
from viewer.menus import menu_named
from viewer.presentation import Presentation
from viewer.results_panel import ResultsPanel
from viewer.teaching_session import TeachingSession
from viewer.viewport import Viewport

TEACHING_MODEL_JOB = "teaching:model"  # its key on the main window's job runner
TRUTH_COLOR = (80, 220, 120, 255)
MARK_COLOR = "#4fd0ff"


def outline_rgba(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """(H, W, 4) uint8: the mask's border in the truth colour, clear elsewhere."""
    m = mask.astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    edge = (cv2.dilate(m, kernel) - cv2.erode(m, kernel)) > 0
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[edge] = TRUTH_COLOR
    return rgba


def _big(text: str = "", size: int = 15, bold: bool = True) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(f"font-size: {size}pt;" + (" font-weight: bold;" if bold else ""))
    return label


class TeachingWindow(QMainWindow):
    def __init__(self, session: TeachingSession, settings=None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowFlag(Qt.WindowType.Window)
        self.setWindowTitle("Lantern teaching session")
        self.session = session
        self.settings = settings
        self.presentation = Presentation(self)
        self.viewport = Viewport()
        self.truth = pg.ImageItem()
        self.truth.setZValue(20)
        self.viewport.box.addItem(self.truth)
        self.mark = pg.ScatterPlotItem(size=22, symbol="+", pen=pg.mkPen(MARK_COLOR, width=3), brush=None)
        self.mark.setZValue(30)
        self.viewport.box.addItem(self.mark)
        self.viewport.view.scene().sigMouseClicked.connect(self._clicked)
        self.viewport.set_overlay_lut(overlay_lut("inferno", 0.2))
        self.viewport.set_overlay_opacity(0.5)

        self.pages = QStackedWidget()
        self.pages.addWidget(self._case_page())
        self.pages.addWidget(self._end_page())
        self.setCentralWidget(self.pages)
        self.resize(1280, 800)
        QShortcut(QKeySequence("F11"), self, self.presentation.toggle)

        session.caseShown.connect(self._show_case)
        session.caseFailed.connect(self._failed)
        session.setParent(self)
        session.analysisReady.connect(self._analysis_arrived)
        session.revealed.connect(self._show_reveal)
        session.finished.connect(self._show_end)

    # layout -------------------------------------------------------------------
    def _case_page(self) -> QWidget:
        side = QWidget()
        side.setMinimumWidth(440)
        side.setMaximumWidth(660)  # the image keeps most of a wide screen
        column = QVBoxLayout(side)
        self.case_label = _big("", 20)
        self.question = _big("What do you see?", 14, bold=False)
        column.addWidget(self.case_label)
        column.addWidget(self.question)
        self.class_group = QButtonGroup(self)
        self.class_group.setExclusive(True)
        row = QHBoxLayout()
        self.class_buttons: list[QPushButton] = []
        for i, name in enumerate(self.session.classes):
            button = QPushButton(name)
            button.setCheckable(True)
            button.setMinimumHeight(44)
            button.setStyleSheet("font-size: 13pt;")
            self.class_group.addButton(button, i)
            self.class_buttons.append(button)
            row.addWidget(button)
        self.class_group.idClicked.connect(self._picked)
        column.addLayout(row)
        self.hint = _big("Optional: click on the image where the finding is.", 11, bold=False)
        self.hint.setStyleSheet(f"font-size: 11pt; color: {theme.MUTED};")
        column.addWidget(self.hint)
        self.reveal_button = QPushButton("Reveal the answer")
        self.reveal_button.setMinimumHeight(44)
        self.reveal_button.clicked.connect(self._reveal)
        self.next_button = QPushButton("Next case ▶")
        self.next_button.setMinimumHeight(44)
        self.next_button.clicked.connect(self.session.next)
        column.addWidget(self.reveal_button)
        self.verdict = _big("", 14)
        column.addWidget(self.verdict)
        maps = QHBoxLayout()
        self.method_box = QComboBox()
        for key in METHODS:
            self.method_box.addItem(METHOD_LABELS[key], key)
        self.class_box = QComboBox()
        self.class_box.addItems(list(self.session.classes))
        self.method_box.currentIndexChanged.connect(lambda *_: self._show_map())
        self.class_box.currentIndexChanged.connect(lambda *_: self._show_map())
        self.map_label = QLabel("Map:")
        self.map_label.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        for w in (self.map_label, self.method_box, self.class_box):
            maps.addWidget(w)
        column.addLayout(maps)
        self.results = ResultsPanel()
        self.results.model_info.setVisible(False)  # the model's paths and notes are not for the class
        self.results.set_model(self.session.model.bundle, self.session.model.engine)
        column.addWidget(self.results)
        column.addStretch(1)
        column.addWidget(self.next_button)
        page = QWidget()
        layout = QHBoxLayout(page)
        layout.addWidget(self.viewport, 1)
        layout.addWidget(side)
        return page

    def _end_page(self) -> QWidget:
        page = QWidget()
        column = QVBoxLayout(page)
        self.end_title = _big("Session complete", 22)
        self.score_learner = _big("", 18)
        self.score_model = _big("", 18)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Case", "Truth", "You", "Model"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.export_button = QPushButton("Export answers as CSV…")
        self.export_button.clicked.connect(self._export_dialog)
        self.export_note = _big("", 11, bold=False)
        for w in (self.end_title, self.score_learner, self.score_model, self.table, self.export_button,
                  self.export_note):
            column.addWidget(w)
        return page

    # a case -------------------------------------------------------------------
    def _show_case(self, shown) -> None:
        self.pages.setCurrentIndex(0)
        self.case_label.setText(f"Case {shown.number} of {self.session.count}")
        self.viewport.set_image(shown.display, shown.display.levels(shown.source.window.center,
                                                                   shown.source.window.width))
        self.viewport.fit()
        self.viewport.set_overlay(None)
        self.viewport.set_overlay_visible(False)
        self.truth.clear()
        self.mark.setData([])
        self.class_group.setExclusive(False)
        for button in self.class_buttons:
            button.setChecked(False)
            button.setEnabled(True)
        self.class_group.setExclusive(True)
        self.verdict.setText("")
        self.results.clear("")
        for w in (self.results, self.map_label, self.method_box, self.class_box, self.next_button):
            w.setVisible(False)
        self.reveal_button.setVisible(True)
        self.hint.setVisible(True)
        self._update_reveal_button()

    def _failed(self, message: str) -> None:
        self.verdict.setText(f"⚠ {message}")
        self.next_button.setVisible(True)

    def _picked(self, index: int) -> None:
        self.session.pick(index)
        self._update_reveal_button()

    def _clicked(self, event) -> None:
        if self.session.shown is None or self.session.current.revealed:
            return
        if event.button() != Qt.MouseButton.LeftButton:
            return
        point = self.viewport.box.mapSceneToView(event.scenePos())
        row, col = int(point.y()), int(point.x())
        h, w = self.session.shown.source.shape
        if 0 <= row < h and 0 <= col < w:
            self.session.mark(row, col)
            self.mark.setData([col + 0.5], [row + 0.5])

    def _analysis_arrived(self, _analysis) -> None:
        self._update_reveal_button()

    def _update_reveal_button(self) -> None:
        picked = self.session.current.learner is not None if self.session.index >= 0 else False
        waiting = self.session.analysis is None
        self.reveal_button.setEnabled(picked)
        self.reveal_button.setText("Reveal the answer" + (" (the model is still thinking…)" if picked and waiting
                                                          else "" if picked else " (pick a class first)"))

    def _reveal(self) -> None:
        self.session.reveal()
        self._update_reveal_button()

    def _show_reveal(self, answer, analysis) -> None:
        classes = self.session.classes
        truth, learner = classes[answer.case.label], classes[answer.learner]
        model = classes[answer.model]
        lines = [f"Truth: {truth}",
                 f"You: {learner} {'✓' if answer.learner_correct else '✗'}",
                 f"Model: {model} ({answer.model_probability:.0%}) {'✓' if answer.model_correct else '✗'}"]
        if answer.click_on_lesion is not None:
            lines.append("Your mark is on the finding." if answer.click_on_lesion else "Your mark missed the finding.")
        self.verdict.setText("\n".join(lines))
        for button in self.class_buttons:
            button.setEnabled(False)
        self.reveal_button.setVisible(False)
        self.hint.setVisible(False)
        for w in (self.results, self.map_label, self.method_box, self.class_box, self.next_button):
            w.setVisible(True)
        self.results.show_analysis(analysis)
        self.class_box.setCurrentIndex(analysis.predicted)
        self._show_map()
        mask = self.session.shown.mask
        if mask is not None and mask.any():
            self.truth.setImage(outline_rgba(mask), autoLevels=False, levels=(0, 255))
        last = self.session.index + 1 == self.session.count
        self.next_button.setText("See the scores ▶" if last else "Next case ▶")

    def _show_map(self) -> None:
        analysis = self.session.analysis
        if analysis is None or not self.session.current.revealed:
            return
        maps = analysis.maps[self.method_box.currentData()]
        # Sampled like the main window's overlay: a teacher's own set may hold 2000 x 2000 images.
        index = self.class_box.currentIndex()
        self.viewport.set_overlay(map_to_uint8(maps.sampled_map(index, overlay_step(maps.shape)), 1.0))
        self.viewport.set_overlay_visible(True)

    # the end ------------------------------------------------------------------
    def _show_end(self) -> None:
        learner, model, done = self.session.scores()
        share = lambda n: f"{n / done:.0%}" if done else "–"  # noqa: E731
        self.score_learner.setText(f"Your score: {learner} of {done} ({share(learner)})")
        self.score_model.setText(f"The model's score: {model} of {done} ({share(model)})")
        classes = self.session.classes
        rows = [(n, a) for n, a in enumerate(self.session.answers, start=1) if a.revealed]
        self.table.setRowCount(len(rows))
        for r, (n, a) in enumerate(rows):
            cells = (str(n), classes[a.case.label], classes[a.learner] + (" ✓" if a.learner_correct else " ✗"),
                     classes[a.model] + (" ✓" if a.model_correct else " ✗"))
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.pages.setCurrentIndex(1)

    def export_csv(self, folder) -> Path:
        path = self.session.export_csv(folder)
        self.export_note.setText(f"Saved {path.name} in {path.parent}")
        return path

    def _export_dialog(self) -> None:
        start = self.settings.get("last_folder") if self.settings is not None else ""
        folder = QFileDialog.getExistingDirectory(self, "Export the answers to…", start)
        if folder:
            self.export_csv(folder)

    def closeEvent(self, event) -> None:
        self.presentation.set_active(False)
        self.session.stop()
        super().closeEvent(event)


# main-window wiring ---------------------------------------------------------------
def open_teaching(window, labels_csv: Path) -> None:
    """Open a teaching window for ``labels_csv`` with the main window's model (the demo model if
    none is loaded); problems go to the main window's banner."""
    def start(model) -> None:
        try:
            labelled = read_labels(labels_csv, model.bundle.classes)
        except engine.LanternError as exc:
            window.show_error(exc.message)
            return
        teaching = TeachingWindow(TeachingSession(labelled, model), window.settings, window)
        window.teaching_window = teaching
        teaching.show()
        teaching.session.start()

    if window.session.model is not None:
        start(window.session.model)
        return
    window.show_status("Loading the model for the teaching session…")
    # Background work: the reading view keeps its interactive threads. Asking again replaces it.
    job = CallJob[engine.LoadedModel](lambda: engine.load_model(DEMO_MODEL, window.settings.get("engine")),
                                      "loading the model for teaching", background=True)
    window.session.runner.start(job, key=TEACHING_MODEL_JOB, on_done=start,
                                on_failed=lambda exc: window.show_error(user_message(exc, job.what)))


def _choose_labels(window) -> None:
    path, _ = QFileDialog.getOpenFileName(window, "Open a labels file (file,class[,mask])",
                                          window.settings.get("last_folder"), "Labels (*.csv);;All files (*)")
    if path:
        open_teaching(window, Path(path))


def install(window) -> None:
    file_menu = menu_named(window, "&File")
    menu = QMenu("Teaching session", file_menu)
    quit_action = window.actions_.get("quit")
    if quit_action is not None:
        file_menu.insertMenu(quit_action, menu)
    else:
        file_menu.addMenu(menu)
    demo = menu.addAction("Demo teaching set")
    demo.triggered.connect(lambda *_: open_teaching(window, TEACHING_LABELS))
    other = menu.addAction("Open labels file…")
    other.triggered.connect(lambda *_: _choose_labels(window))
    window.actions_["teaching_demo"] = demo
    window.actions_["teaching_open"] = other
