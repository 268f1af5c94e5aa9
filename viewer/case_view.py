"""The Case tab: a multi-input model's images side by side, one pane per input, each with its own
map of the chosen class on the case's common scale.

The reader assigns the open images to the model's inputs: Lantern proposes an assignment (by
DICOM View Position where the bundle names positions, by order otherwise, and says which) and
each pane's chooser changes it. A case is analysed as soon as every input has an image, as the
Reading tab analyses an image as soon as it opens.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

import engine
from engine import METHOD_NAMES
from viewer.display import make_display_image, map_to_uint8, overlay_step
from viewer.jobs import CallJob, StepsJob, user_message
from viewer.viewport import Viewport

log = logging.getLogger("lantern.case")
CASE_IMAGES_JOB, CASE_JOB = "case-images", "case"
MAX_CASE_FILES = 24  # the images a case is chosen from: the first ones of the open list
NO_IMAGE = "(choose an image)"
HOW = {engine.BY_VIEW_POSITION: "matched by its View Position", engine.BY_ORDER: "placed by list order: check it",
       "hand": "chosen by hand"}


def _load_all(paths: list[Path]) -> list[tuple[Path, object]]:
    """Each file's SourceImage, or the plain-words reason it could not be read."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, engine.load_image(path)))
        except engine.LanternError as exc:
            loaded.append((path, exc.reason))
    return loaded


class CasePane(QWidget):
    """One model input: its name, the image chosen for it, and that image with its map."""

    chosen = Signal()

    def __init__(self, named, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = named.name
        takes = f" (View Position {', '.join(named.view_positions)})" if named.view_positions else ""
        self.header = QLabel(f"<b>{named.name}</b>{takes}")
        self.chooser = QComboBox()
        self.chooser.setObjectName(f"case_input_{named.name}")
        self.how = QLabel()
        self.how.setObjectName("hint")
        self.viewport = Viewport(named.name)
        self.viewport.set_overlay_visible(True)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.header)
        column.addWidget(self.chooser)
        column.addWidget(self.how)
        column.addWidget(self.viewport, 1)
        self.chooser.activated.connect(self._chosen_by_hand)

    def _chosen_by_hand(self, *_):
        self.how.setText(HOW["hand"])
        self.chosen.emit()

    def offer(self, names: list[str], index: int | None, how: str) -> None:
        self.chooser.clear()
        self.chooser.addItems([NO_IMAGE, *names])
        self.chooser.setCurrentIndex(0 if index is None else index + 1)
        self.how.setText(HOW.get(how, "no image left to place: choose one"))

    @property
    def image_index(self) -> int | None:
        return None if self.chooser.currentIndex() <= 0 else self.chooser.currentIndex() - 1


class CaseView(QWidget):
    analysisReady = Signal(object)  # engine.Analysis of the case
    message = Signal(str)  # for the status bar

    def __init__(self, session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.panes: list[CasePane] = []
        self.images: list[tuple[Path, object]] = []  # (path, SourceImage or reason)
        self.analysis = None
        self.class_index = 0
        self.method = METHOD_NAMES[0]
        self._style = None
        self.note = QLabel("This tab is for models that take several images of one case "
                           "(e.g. PA and lateral). The model open now takes one image.")
        self.note.setWordWrap(True)
        self.classes = QComboBox()
        self.classes.setObjectName("case_class")
        self.classes.currentIndexChanged.connect(self._class_chosen)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.grid = QGridLayout()
        top = QHBoxLayout()
        top.addWidget(QLabel("Class:"))
        top.addWidget(self.classes)
        top.addWidget(self.status, 1)
        column = QVBoxLayout(self)
        column.setContentsMargins(2, 2, 2, 2)
        column.addWidget(self.note)
        column.addLayout(top)
        column.addLayout(self.grid, 1)

    # model and files --------------------------------------------------------
    def set_model(self, model) -> None:
        self.session.runner.drop(CASE_JOB)
        for pane in self.panes:
            pane.setParent(None)
            pane.deleteLater()
        self.panes, self.analysis = [], None
        multi = model is not None and model.bundle.multi_input
        self.note.setVisible(not multi)
        if not multi:
            return
        inputs = model.bundle.inputs
        columns = len(inputs) if len(inputs) <= 3 else 2  # four maps of one eye: two rows of two
        for n, named in enumerate(inputs):
            pane = CasePane(named)
            pane.chosen.connect(self.analyse)
            self.grid.addWidget(pane, n // columns, n % columns)
            self.panes.append(pane)
        self.classes.blockSignals(True)
        self.classes.clear()
        self.classes.addItems(list(model.bundle.classes))
        self.classes.blockSignals(False)
        self._propose()

    def set_files(self, files: list[Path]) -> None:
        """The open file list changed: read the first images (their View Positions decide the
        proposal), off the GUI thread."""
        paths = list(files[:MAX_CASE_FILES])
        job = CallJob[list](lambda: _load_all(paths), "reading the images of a case")
        self.session.runner.start(job, key=CASE_IMAGES_JOB, on_done=self._images_read,
                                  on_failed=lambda exc: self._say(user_message(exc, job.what)))

    def _images_read(self, images: list) -> None:
        self.images = images
        unreadable = [f"{p.name}: {r}" for p, r in images if isinstance(r, str)]
        if unreadable:
            self._say("Not usable in a case: " + "; ".join(unreadable))
        self._propose()

    def _usable(self) -> list[tuple[Path, object]]:
        return [(p, s) for p, s in self.images if not isinstance(s, str)]

    def _propose(self) -> None:
        model = self.session.model
        if not self.panes or model is None:
            return
        usable = self._usable()
        positions = [s.metadata.view_position for _, s in usable]
        names = [f"{p.name}" + (f" ({v})" if v else "") for (p, _), v in zip(usable, positions)]
        for pane, proposal in zip(self.panes, engine.propose_inputs(model.bundle, positions)):
            pane.offer(names, proposal.image, proposal.how)
        self.analyse()

    # analysis -----------------------------------------------------------------
    def case(self) -> dict | None:
        usable = self._usable()
        chosen = {pane.name: pane.image_index for pane in self.panes}
        if not self.panes or any(i is None for i in chosen.values()):
            return None
        return {name: usable[i][1] for name, i in chosen.items()}

    def analyse(self) -> None:
        model, case = self.session.model, self.case()
        self.session.runner.drop(CASE_JOB)
        if model is None or case is None:
            if self.panes:
                self._say("Choose an image for every input to analyse the case.")
            return
        for pane in self.panes:
            source = case[pane.name]
            display = make_display_image(source.pixels)
            pane.viewport.set_image(display, display.levels(source.window.center, source.window.width))
            pane.viewport.set_overlay(None)
        options = engine.AnalysisOptions(methods=METHOD_NAMES, mc_samples=self.session.mc_samples)
        job = StepsJob[engine.Analysis](lambda: engine.analysis_steps(case, model, options), "analysing a case")
        self.session.runner.start(job, key=CASE_JOB, on_done=self._analysed,
                                  on_failed=lambda exc: self._say(user_message(exc, job.what)))
        self._say("Analysing the case…")

    def cancel(self) -> bool:
        return self.session.runner.drop(CASE_JOB)

    def _analysed(self, analysis) -> None:
        self.analysis = analysis
        self.classes.blockSignals(True)
        self.classes.setCurrentIndex(analysis.predicted)
        self.classes.blockSignals(False)
        self.class_index = analysis.predicted
        self.show_maps()
        files = ", ".join(f"{v.name} = {v.source.name}" for v in analysis.views)
        self._say(f"Case ({files}): {analysis.predicted_class} "
                  f"({analysis.probabilities[analysis.predicted]:.0%}, {analysis.engine})")
        self.analysisReady.emit(analysis)

    def set_method(self, method: str) -> None:
        self.method = method if method in METHOD_NAMES else METHOD_NAMES[0]
        self.show_maps()

    def _class_chosen(self, index: int) -> None:
        self.class_index = max(0, index)
        self.show_maps()

    def show_maps(self) -> None:
        if self.analysis is None:
            return
        name = self.analysis.classes[self.class_index]
        for pane, view in zip(self.panes, self.analysis.views):
            maps = view.maps[self.method]
            step = overlay_step(maps.shape)
            pane.viewport.set_overlay(map_to_uint8(maps.sampled_map(self.class_index, step), 1.0))
            share = maps.image_peak(self.class_index) / max(
                max(v.maps[self.method].image_peak(self.class_index) for v in self.analysis.views), 1e-12)
            pane.viewport.set_corner("top_right", f"{pane.name}: {view.source.name}\nclass: {name}\n"
                                                  f"peak {share:.0%} of the case's")
        self._apply_style()

    def set_style(self, lut: np.ndarray, opacity: float) -> None:
        self._style = (lut, opacity)
        self._apply_style()

    def _apply_style(self) -> None:
        if self._style is None:
            return
        lut, opacity = self._style
        for pane in self.panes:
            pane.viewport.set_overlay_lut(lut)
            pane.viewport.set_overlay_opacity(opacity)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.message.emit(text)
