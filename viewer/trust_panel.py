"""The Trust panel (View > Trust checks): how much the shown map deserves to be believed.

Faithfulness (deletion / insertion) and the randomisation sanity check run on request as background
jobs of the session's runner, for the method and class the window shows; the model's calibration comes
from its bundle or from an evaluation file. See docs/trust.md for what the numbers mean.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QScrollArea, QVBoxLayout, QWidget)

from engine import Analysis, LanternError, Progress, unused_path, write_json_atomic
from engine.trust.calibration import calibration_status, evaluation_reliability
from engine.trust.faithfulness import FaithfulnessScore, chance_map, score_analysis_steps, score_map_steps
from engine.trust.sanity import SanityResult, randomization_steps
from viewer.display import METHOD_LABELS
from viewer.jobs import StepsJob, user_message
from viewer.menus import menu_named
from viewer.trust_views import FaithfulnessView, ReliabilityView, SanityView, section

# The panel's job keys: a new request, or a new analysis, replaces the running check of its kind.
FAITHFULNESS_JOB, SANITY_JOB = "trust:faithfulness", "trust:sanity"
# What the checks' jobs return. The checked analysis travels with its result, which is kept only if
# that analysis is still the shown one (the window may have moved on before on_analysis ran).
Scored = tuple[Analysis, str, int, FaithfulnessScore, FaithfulnessScore]  # method, class, score, random map's
Checked = tuple[Analysis, SanityResult]


class TrustPanel(QWidget):
    def __init__(self, window):
        super().__init__(window)
        self.window_ = window
        self.session = window.session
        self.target_label = QLabel("No analysis yet.")
        self.target_label.setWordWrap(True)
        self.faithfulness = FaithfulnessView()
        self.score_button = QPushButton("Score this map")
        self.score_button.setToolTip("Deletion and insertion test for the shown method and class (about a second)")
        self.score_button.clicked.connect(self.score_faithfulness)
        self.sanity = SanityView()
        self.sanity_button = QPushButton("Run randomisation check")
        self.sanity_button.setToolTip("Recompute the map while the model's layers are randomised from the top "
                                      "(needs PyTorch; a few seconds)")
        self.sanity_button.clicked.connect(self.run_sanity)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_sanity)
        self.sanity_progress = QProgressBar()
        self.sanity_progress.setVisible(False)
        self.reliability = ReliabilityView()
        evaluation = QPushButton("Load an evaluation…")
        evaluation.setToolTip("The reliability diagram from a 'lantern-engine evaluate' metrics.json")
        evaluation.clicked.connect(self._choose_evaluation)
        self.save_button = QPushButton("Save trust report…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._choose_report)
        self.status = QLabel()
        self.status.setWordWrap(True)

        sanity_row = QHBoxLayout()
        for widget in (self.sanity_button, self.cancel_button, self.sanity_progress):
            sanity_row.addWidget(widget)
        content = QWidget()
        column = QVBoxLayout(content)
        column.addWidget(self.target_label)
        column.addWidget(section("Faithfulness", "Does the map show what the model uses?",
                                  self.score_button, self.faithfulness))
        column.addWidget(section("Sanity check", "Does the map depend on the model?", sanity_row, self.sanity))
        column.addWidget(section("Calibration", "Can the probabilities be taken at their word?",
                                  self.reliability, evaluation))
        column.addWidget(self.save_button)
        column.addWidget(self.status)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.results: dict = {}  # (method, class) -> {"faithfulness": ..., "chance": ..., "sanity": ...}
        self.session.modelReady.connect(self.on_model)
        # Queued: the window picks the class and method to show in its own slots, which run first.
        queued = Qt.ConnectionType.QueuedConnection
        self.session.analysisReady.connect(self.on_analysis, queued)
        self.session.imageReady.connect(self.on_analysis, queued)
        window.strip.classSelected.connect(self.show_target, queued)
        window.controls.method.currentIndexChanged.connect(self.show_target, queued)
        self.setMinimumWidth(340)
        self.on_analysis()

    # what is shown ------------------------------------------------------------------
    @property
    def scoring(self) -> bool:
        return self.session.runner.running(FAITHFULNESS_JOB)

    @property
    def checking(self) -> bool:
        return self.session.runner.running(SANITY_JOB)

    def target(self):
        """(analysis, method, class index) of the map the window shows, or None."""
        analysis = self.session.analysis
        if analysis is None or self.session.model is None:
            return None
        method = self.window_.shown_method(analysis)
        return analysis, method, min(self.window_.class_index, len(analysis.classes) - 1)

    def on_model(self, model) -> None:
        try:
            self.reliability.show_status(calibration_status(model.bundle))
        except LanternError as exc:
            self.reliability.show_diagram(None, None, "", exc.message)

    def on_analysis(self, *_) -> None:
        """A new image or analysis: checks of the last one are stopped and never reported."""
        self.results = {}
        self.session.runner.drop(FAITHFULNESS_JOB)
        self.session.runner.drop(SANITY_JOB)
        self._sanity_running(False)
        self.show_target()

    def show_target(self, *_) -> None:
        target = self.target()
        has = target is not None
        self.score_button.setEnabled(has and not self.scoring)
        self.sanity_button.setEnabled(has and not self.checking)
        if not has:
            self.target_label.setText("Analyse an image to check its maps.")
            self.faithfulness.clear()
            self.sanity.clear()
            return
        analysis, method, index = target
        self.target_label.setText(f"Checks for: {METHOD_LABELS.get(method, method)} map of "
                                  f"'{analysis.classes[index]}' on {analysis.source.name}")
        found = self.results.get((method, index), {})
        if "faithfulness" in found:
            self.faithfulness.show_score(found["faithfulness"], found["chance"])
        else:
            self.faithfulness.clear("Not scored yet for this method and class.")
        if "sanity" in found:
            self.sanity.show_result(found["sanity"], analysis.model_input.seen, self.window_.current_lut())
        else:
            self.sanity.clear("Not checked yet for this method and class.")
        self.save_button.setEnabled(bool(self.results))

    # faithfulness -------------------------------------------------------------------
    def score_faithfulness(self) -> None:
        target = self.target()
        if target is None:
            return
        analysis, method, index = target
        backend = self.session.model.backend

        def steps():  # the map, then a random map at its resolution: the score to beat
            score = yield from score_analysis_steps(analysis, backend, method, index)
            chance = yield from score_map_steps(backend, analysis.model_input.tensor,
                                                chance_map(analysis.maps[method]), index, method="random map")
            return analysis, method, index, score, chance

        self.faithfulness.clear("Scoring…")
        self.session.runner.start(StepsJob[Scored](steps, "scoring a map's faithfulness", background=True),
                                  key=FAITHFULNESS_JOB, on_done=self._scored, on_failed=self._faith_failed,
                                  on_cancelled=self.show_target)
        self.score_button.setEnabled(False)

    def _scored(self, result: Scored) -> None:
        analysis, method, index, score, chance = result
        if analysis is self.session.analysis:
            self.results.setdefault((method, index), {}).update(faithfulness=score, chance=chance)
        self.show_target()

    def _faith_failed(self, exc: BaseException) -> None:
        self.show_target()
        self.faithfulness.clear(f"⚠ Could not score the map: {user_message(exc, 'scoring the map')}")

    # sanity -------------------------------------------------------------------------
    def run_sanity(self) -> None:
        target = self.target()
        if target is None:
            return
        analysis, method, index = target
        model = self.session.model
        self.sanity.clear("Randomising the model layer by layer…")
        self._sanity_running(True)
        job = StepsJob[Checked](lambda: self._sanity_steps(model, analysis, method, index),
                                "running the randomisation check", background=True)
        self.session.runner.start(job, key=SANITY_JOB, on_done=self._checked, on_failed=self._sanity_failed,
                                  on_progress=self._sanity_progress, on_cancelled=self._sanity_cancelled)
        self.sanity_button.setEnabled(False)

    @staticmethod
    def _sanity_steps(model, analysis, method, index):
        result = yield from randomization_steps(model, analysis.model_input, index, method)
        return analysis, result

    def _sanity_running(self, running: bool) -> None:
        self.cancel_button.setVisible(running)
        self.sanity_progress.setVisible(running)

    def _sanity_progress(self, progress: Progress) -> None:
        self.sanity_progress.setRange(0, progress.total)
        self.sanity_progress.setValue(progress.step)
        self.sanity_progress.setFormat(f"{progress.stage} (%v/%m)")

    def _checked(self, payload: Checked) -> None:
        self._sanity_running(False)
        analysis, result = payload
        if analysis is self.session.analysis:
            self.results.setdefault((result.method, result.class_index), {})["sanity"] = result
        self.show_target()

    def _sanity_failed(self, exc: BaseException) -> None:
        message = user_message(exc, "running the randomisation check")
        self._sanity_over(f"⚠ The randomisation check could not run: {message}")

    def _sanity_cancelled(self) -> None:
        self._sanity_over("Randomisation check cancelled.")

    def _sanity_over(self, text: str) -> None:
        self._sanity_running(False)
        self.show_target()
        self.sanity.clear(text)

    def cancel_sanity(self) -> None:
        """The check stops after its current layer; the panel says so once it has."""
        self.session.runner.cancel(SANITY_JOB)

    # calibration and report -------------------------------------------------------
    def _choose_evaluation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation results", "", "metrics.json (*.json)")
        if path:
            self.load_evaluation(Path(path))

    def load_evaluation(self, path: Path) -> None:
        try:
            diagram = evaluation_reliability(path)
        except LanternError as exc:
            self.status.setText(f"⚠ {exc.message}")
            return
        self.reliability.show_diagram(diagram, diagram.ece, f"evaluation {path.name} ({diagram.total} cases)")
        self.status.setText("")

    def _choose_report(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the trust report")
        if folder:
            self.save_report(Path(folder))

    def save_report(self, folder: Path) -> Path | None:
        """Write every check run on this analysis as JSON; never over an earlier report."""
        analysis = self.session.analysis
        if analysis is None or not self.results:
            return None
        checks = []
        for (method, index), found in sorted(self.results.items()):
            entry = {"method": method, "class": analysis.classes[index],
                     "probability": round(float(analysis.probabilities[index]), 6)}
            if "faithfulness" in found:
                entry["faithfulness"] = found["faithfulness"].to_dict()
                entry["random_map_faithfulness"] = found["chance"].to_dict()
            if "sanity" in found:
                entry["randomisation_check"] = found["sanity"].to_dict()
            checks.append(entry)
        bundle = self.session.model.bundle
        status = calibration_status(bundle)
        record = {"source": str(analysis.source), "frame": analysis.frame, "engine": analysis.engine,
                  "model": {"name": bundle.name, "version": bundle.version},
                  "calibration": {"calibrated": status.calibrated, "ece": status.ece, "source": status.source},
                  "checks": checks}
        try:
            path = write_json_atomic(unused_path(Path(folder) / f"{analysis.source.stem}-trust.json"), record)
        except OSError as exc:
            self.status.setText(f"⚠ {folder}: the trust report could not be written ({exc.strerror or exc})")
            return None
        self.status.setText(f"Trust report saved: {path}")
        return path


def install(window) -> None:
    panel = window.trust_panel = TrustPanel(window)
    window.controls.hide_below_cutoff.setChecked(bool(window.settings.get("overlay/hide_below_cutoff")))
    dock = QDockWidget("Trust checks", window)
    dock.setObjectName("Trust checks")
    dock.setWidget(panel)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    results = next((d for d in window.findChildren(QDockWidget) if d.objectName() == "Results"), None)
    if results is not None:
        window.tabifyDockWidget(results, dock)
        results.raise_()
    menu = menu_named(window, "&Analysis")
    for key, text, slot in (("trust_faithfulness", "Score the shown map's faithfulness", panel.score_faithfulness),
                            ("trust_sanity", "Randomisation sanity check of the shown map", panel.run_sanity)):
        action = menu.addAction(text)
        action.triggered.connect(lambda *_, run=slot: (dock.show(), dock.raise_(), run()))
        window.actions_[key] = action
    window.actions_["trust_dock"] = dock.toggleViewAction()
    menu_named(window, "&View").addAction(dock.toggleViewAction())
