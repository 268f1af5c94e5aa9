"""A teaching session's state, without widgets: which case is shown, what the learner answered,
what the model said, and the scores. Images load and analyses run on the JobRunner, one case at a
time (the latest case wins); the analysis starts as soon as a case is shown, so that the answer
is usually ready at reveal.

Identifying text never leaves this module: cases are "Case n of N", and the export names a case
by its number and its line in the labels CSV, never by file, patient or date.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

import engine
from engine import DEFAULT_SAMPLES, METHOD_NAMES, unused_path, write_bytes_atomic
from engine.workflows.evaluation import pointing_hit, pointing_tolerance
from engine.workflows.labels import LabelledCase, LabelledSet
from viewer.display import DisplayImage, make_display_image
from viewer.jobs import CallJob, JobRunner, StepsJob, user_message

CASE_JOB = "case"  # the shown case's loading, then its analysis: a new case replaces both


@dataclass(frozen=True)
class ShownCase:
    number: int  # from 1
    source: "engine.SourceImage"
    display: DisplayImage
    mask: np.ndarray | None  # bool (H, W) truth, or None


@dataclass
class Answer:
    case: LabelledCase
    learner: int | None = None
    click: tuple[int, int] | None = None  # (row, col) on the image
    click_on_lesion: bool | None = None
    model: int | None = None
    model_probability: float | None = None
    confidence: float | None = None
    flagged: bool | None = None
    revealed: bool = False

    @property
    def learner_correct(self) -> bool:
        return self.learner is not None and self.learner == self.case.label

    @property
    def model_correct(self) -> bool:
        return self.model is not None and self.model == self.case.label


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return round(value, 4) if isinstance(value, float) else value


def _load_case(number: int, case: LabelledCase) -> ShownCase:
    source = engine.load_image(case.path)
    mask = case.load_mask(source.shape) if case.mask is not None else None
    return ShownCase(number, source, make_display_image(source.pixels), mask)


class TeachingSession(QObject):
    caseShown = Signal(object)  # ShownCase
    caseFailed = Signal(str)
    analysisReady = Signal(object)  # engine.Analysis of the current case (kept hidden until reveal)
    revealed = Signal(object, object)  # Answer, engine.Analysis
    finished = Signal()

    def __init__(self, labelled: LabelledSet, model, parent: QObject | None = None, *, mc_samples: int = DEFAULT_SAMPLES):
        super().__init__(parent)
        self.labelled = labelled
        self.model = model
        self.mc_samples = mc_samples
        # Its own runner, so that closing the session waits for its jobs only. The learner waits
        # for the image and (at reveal) for the analysis: interactive work, both.
        self.runner = JobRunner(self)
        self.answers = [Answer(case) for case in labelled.cases]
        self.index = -1
        self.shown: ShownCase | None = None
        self.analysis = None
        self._reveal_waiting = False

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labelled.classes

    @property
    def count(self) -> int:
        return len(self.answers)

    @property
    def current(self) -> Answer:
        return self.answers[self.index]

    def start(self) -> None:
        self.show_case(0)

    def stop(self, timeout_ms: int = 10_000) -> None:
        """Cancel what runs and wait for it, so that no job reports to a closed window."""
        self.runner.close()
        self.runner.wait(timeout_ms)

    def show_case(self, index: int) -> None:
        self.index, self.shown, self.analysis, self._reveal_waiting = index, None, None, False
        case = self.labelled.cases[index]
        self.runner.start(CallJob[ShownCase](lambda: _load_case(index + 1, case), "loading a teaching case"),
                          key=CASE_JOB, on_done=self._loaded, on_failed=self._failed)

    def _loaded(self, shown: ShownCase) -> None:
        self.shown = shown
        self.caseShown.emit(shown)
        options = engine.AnalysisOptions(methods=METHOD_NAMES, mc_samples=self.mc_samples)
        source, model = shown.source, self.model
        job = StepsJob[engine.Analysis](lambda: engine.analysis_steps(source, model, options),
                                        "analysing a teaching case")
        self.runner.start(job, key=CASE_JOB, on_done=self._analysed, on_failed=self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.caseFailed.emit(f"Case {self.index + 1}: {user_message(exc)}")

    def _analysed(self, analysis: engine.Analysis) -> None:
        self.analysis = analysis
        answer = self.current
        answer.model = analysis.predicted
        answer.model_probability = float(analysis.probabilities[analysis.predicted])
        if analysis.uncertainty is not None:
            answer.confidence = float(analysis.uncertainty.confidence)
            answer.flagged = bool(analysis.uncertainty.flagged)
        self.analysisReady.emit(analysis)
        if self._reveal_waiting:
            self._reveal_now()

    # the learner ---------------------------------------------------------------
    def pick(self, class_index: int) -> None:
        if not self.current.revealed:
            self.current.learner = int(class_index)

    def mark(self, row: int, col: int) -> None:
        if self.current.revealed or self.shown is None:
            return
        h, w = self.shown.source.shape
        self.current.click = (min(max(int(row), 0), h - 1), min(max(int(col), 0), w - 1))

    def reveal(self) -> bool:
        """Show the answer once the learner has picked a class (and the analysis is done)."""
        if self.current.learner is None or self.current.revealed:
            return False
        if self.analysis is None:
            self._reveal_waiting = True
            return True
        self._reveal_now()
        return True

    def _reveal_now(self) -> None:
        self._reveal_waiting = False
        answer = self.current
        answer.revealed = True
        mask = self.shown.mask if self.shown is not None else None
        if answer.click is not None and mask is not None and mask.any():
            # The learner's mark is judged by the same rule as the model's map peak.
            answer.click_on_lesion = pointing_hit(mask, answer.click, pointing_tolerance(mask.shape[1]))
        self.revealed.emit(answer, self.analysis)

    def next(self) -> None:
        if self.index + 1 < self.count:
            self.show_case(self.index + 1)
        else:
            self.runner.drop(CASE_JOB)
            self.finished.emit()

    # the end -------------------------------------------------------------------
    def scores(self) -> tuple[int, int, int]:
        """(learner correct, model correct, cases revealed)."""
        done = [a for a in self.answers if a.revealed]
        return sum(a.learner_correct for a in done), sum(a.model_correct for a in done), len(done)

    def _name(self, index: int | None) -> str | None:
        return None if index is None else self.classes[index]

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["case", "labels_line", "truth", "learner", "learner_correct", "learner_mark_row",
                         "learner_mark_col", "mark_on_lesion", "model", "model_probability", "model_correct",
                         "model_confidence", "model_flagged"])
        for number, a in enumerate(self.answers, start=1):
            if not a.revealed:
                continue
            row, col = a.click or (None, None)
            writer.writerow([_cell(v) for v in (
                number, a.case.line, self._name(a.case.label), self._name(a.learner), a.learner_correct,
                row, col, a.click_on_lesion, self._name(a.model), a.model_probability, a.model_correct,
                a.confidence, a.flagged)])
        return out.getvalue()

    def export_csv(self, folder: str | Path) -> Path:
        """Write the answers next to nothing else: a new file, never over an earlier export."""
        target = unused_path(Path(folder) / f"teaching-{self.labelled.csv.parent.name}.csv")
        return write_bytes_atomic(target, self.csv_text().encode("utf-8"))
