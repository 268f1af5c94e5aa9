"""The Evaluate dialog (Analysis > Evaluate on a labelled folder…): runs the open model over a
labelled folder on a worker (progress, cancel) and shows per-class metrics, ROC and
precision-recall curves, the reliability diagram before and after temperature scaling, the
confusion matrix, the mistakes (viewer/evaluation_mistakes.py) and the pointing game. It can fit a
temperature and store it in the bundle, and save the same JSON, PNG figures and mistakes list as
``lantern-engine evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QCheckBox, QDialog, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QTabWidget,
                               QVBoxLayout)

import engine
from engine import ModelBundle, Progress
from engine.workflows.evaluation_outputs import fit_and_store, write_outputs
from engine.exports.figures import pr_steps
from engine.workflows.evaluation_run import EvaluationRun, build_report, evaluation_steps
from engine.workflows.labels import read_labels
from viewer import theme
from viewer.display import METHOD_LABELS
from viewer.evaluation_mistakes import MistakesView
from viewer.jobs import CallJob, StepsJob, user_message
from viewer.menus import menu_named

# Its key on the window's job runner: the evaluation and then the temperature fitting, one at a time.
EVALUATION_JOB = "evaluation"
COLORS = ("#4fa3e0", "#f0a030", "#6cc070", "#e070b0", "#c0c060", "#60d0d0")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(rows: list[list[str]], columns: list[str], row_names: list[str]) -> QTableWidget:
    table = QTableWidget(len(rows), len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setVerticalHeaderLabels(row_names)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            table.setItem(r, c, QTableWidgetItem(text))
    return table


def _unit_plot(x_label: str, y_label: str, diagonal: bool = True, legend=(10, 10)) -> pg.PlotWidget:
    """A 0..1 plot; ``legend``: its offset (negative: from the right or bottom edge)."""
    plot = pg.PlotWidget()
    plot.setXRange(0, 1, padding=0.02)
    plot.setYRange(0, 1, padding=0.02)
    plot.setLabel("bottom", x_label)
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setMouseEnabled(False, False)
    if diagonal:
        plot.plot([0, 1], [0, 1], pen=pg.mkPen(theme.MUTED, style=pg.QtCore.Qt.PenStyle.DashLine))
    plot.addLegend(offset=legend)
    return plot


class EvaluateDialog(QDialog):
    def __init__(self, window):
        super().__init__(window)
        self.window_ = window
        self.setWindowTitle("Evaluate the model on a labelled folder")
        self.resize(980, 720)
        self.report: dict | None = None
        self.labels_path = QLineEdit()
        self.labels_path.setPlaceholderText("labels CSV: file,class[,mask]")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.fit = QCheckBox("Fit temperature scaling on this folder and store it in the model bundle")
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button = QPushButton("Save JSON, figures and mistakes…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_dialog)
        self.progress = QProgressBar()
        self.status = QLabel("Choose a labels file, then Evaluate.")
        self.status.setWordWrap(True)
        self.tabs = QTabWidget()

        top = QHBoxLayout()
        top.addWidget(QLabel("Labels file:"))
        top.addWidget(self.labels_path, 1)
        top.addWidget(browse)
        buttons = QHBoxLayout()
        for w in (self.run_button, self.cancel_button, self.progress, self.save_button):
            buttons.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.fit)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.tabs, 1)

    # running ------------------------------------------------------------------
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Labels file", self.window_.settings.get("last_folder"),
                                              "Labels (*.csv);;All files (*)")
        if path:
            self.labels_path.setText(path)

    def start(self) -> None:
        model = self.window_.session.model
        if model is None:
            self.status.setText("Open a model bundle first (File > Open model bundle…).")
            return
        try:
            labelled = read_labels(Path(self.labels_path.text().strip()), model.bundle.classes)
        except engine.LanternError as exc:
            self.status.setText(f"⚠ {exc.message}")
            return
        self.model = model
        self.progress.setRange(0, len(labelled.cases))
        self.progress.setValue(0)
        self._running(True)
        self.status.setText(f"Evaluating {model.bundle.name} on {len(labelled.cases)} cases…")
        job = StepsJob[EvaluationRun](lambda: evaluation_steps(labelled, model), "evaluating a labelled folder",
                                      background=True)
        self.runner.start(job, key=EVALUATION_JOB, on_done=self._evaluated, on_failed=self._failed,
                          on_progress=self._progress, on_cancelled=self._cancelled)

    @property
    def runner(self):
        return self.window_.session.runner

    def cancel(self) -> None:
        """Stops after the case being evaluated; the dialog says so once it has."""
        self.runner.cancel(EVALUATION_JOB)

    def _running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _progress(self, progress: Progress) -> None:
        self.progress.setValue(progress.step)
        self.progress.setFormat(progress.stage)

    def _failed(self, exc: BaseException) -> None:
        self._running(False)
        self.status.setText(f"⚠ {user_message(exc, 'evaluating')}")

    def _cancelled(self) -> None:
        self._running(False)
        self.status.setText("Evaluation cancelled.")

    def _evaluated(self, run: EvaluationRun) -> None:
        if not self.fit.isChecked():
            self._finish(run, None)
            return
        self.status.setText("Fitting the temperature…")
        # One call that ends by writing the bundle: it cannot stop half-way, and a cancel would
        # leave the stored temperature without the reopened model that uses it.
        self.cancel_button.setEnabled(False)
        job = CallJob[tuple[float, ModelBundle]](lambda: fit_and_store(run, self.model.bundle), "fitting a temperature",
                                                 background=True)
        self.runner.start(job, key=EVALUATION_JOB, on_done=lambda result: self._fitted(run, result),
                          on_failed=self._failed, on_cancelled=self._cancelled)

    def _fitted(self, run: EvaluationRun, result: tuple[float, ModelBundle]) -> None:
        temperature, bundle = result
        self._finish(run, temperature)
        # Reopen the model so that every analysis from now on uses the stored temperature.
        self.window_.load_model(bundle.folder)

    def _finish(self, run, temperature: float | None) -> None:
        self._running(False)
        try:
            self.report = build_report(run, temperature)
        except engine.LanternError as exc:
            self.status.setText(f"⚠ {exc.message}")
            return
        self.save_button.setEnabled(True)
        self.show_report(self.report, len(run.skipped))

    # showing ------------------------------------------------------------------
    def show_report(self, report: dict, skipped: int = 0) -> None:
        m = report["metrics"]
        rel = report["reliability"]
        ece = f"ECE {rel['before']['ece']:.3f}" + (f" → {rel['after']['ece']:.3f} at T = {report['temperature']:.3g}"
                                                    if rel["after"] else "")
        note = f"; {skipped} case(s) skipped (see the saved JSON for why)" if skipped else ""
        self.status.setText(f"{m['cases']} cases: accuracy {m['accuracy']:.3f}, {ece}{note}.")
        current = self.tabs.currentIndex()
        self.tabs.clear()
        classes = list(m["per_class"])
        keys = ("sensitivity", "specificity", "ppv", "npv", "auc", "average_precision")
        rows = [[_fmt(v[k]) for k in keys] for v in m["per_class"].values()]
        self.tabs.addTab(_table(rows, ["Sensitivity", "Specificity", "PPV", "NPV", "AUC", "AP"], classes), "Per class")
        self.tabs.addTab(self._roc_plot(m["roc"]), "ROC")
        self.tabs.addTab(self._pr_plot(m["precision_recall"]), "Precision-recall")
        self.tabs.addTab(self._reliability_plot(report), "Reliability")
        matrix = m["confusion_matrix"]["rows_true_columns_predicted"]
        self.tabs.addTab(_table([[str(v) for v in row] for row in matrix],
                                [f"called {c}" for c in classes], [f"truly {c}" for c in classes]), "Confusion matrix")
        self.mistakes = MistakesView(self.window_, report)
        self.tabs.addTab(self.mistakes, f"Mistakes ({len(report['mistakes'])})")
        game = report["pointing_game"]
        if game:
            methods = list(game)
            scored = [c for c in classes if any(c in game[k]["per_class"] for k in methods)]
            rows = [[_fmt(game[k]["hit_rate"]), _fmt(game[k]["strict_hit_rate"]), str(game[k]["cases"])]
                    + [_fmt(game[k]["per_class"].get(c, {}).get("hit_rate")) for c in scored] for k in methods]
            self.tabs.addTab(_table(rows, ["Hit rate", "Strict (no tolerance)", "Lesion cases"]
                                    + [f"{c} hit rate" for c in scored],
                                    [METHOD_LABELS.get(k, k) for k in methods]), "Pointing game")
        self.tabs.setCurrentIndex(max(current, 0))

    def _roc_plot(self, rocs: dict) -> pg.PlotWidget:
        self.roc = plot = _unit_plot("false positive rate (1 − specificity)", "true positive rate (sensitivity)",
                                     legend=(-10, 10))
        for n, (name, roc) in enumerate(rocs.items()):
            if roc is not None:
                plot.plot(roc["fpr"], roc["tpr"], pen=pg.mkPen(COLORS[n % len(COLORS)], width=3),
                          name=f"{name}: AUC {roc['auc']:.3f}")
        return plot

    def _pr_plot(self, curves: dict) -> pg.PlotWidget:
        """Drawn as the steps the average precision sums (engine.exports.figures.pr_steps)."""
        self.pr = plot = _unit_plot("recall (sensitivity)", "precision (PPV)", diagonal=False, legend=(10, -10))
        for n, (name, pr) in enumerate(curves.items()):
            if pr is not None:
                plot.plot(*pr_steps(pr["recall"], pr["precision"]), pen=pg.mkPen(COLORS[n % len(COLORS)], width=3),
                          name=f"{name}: AP {pr['average_precision']:.3f}")
        return plot

    def _reliability_plot(self, report: dict) -> pg.PlotWidget:
        self.reliability = plot = _unit_plot("confidence (top-class probability)", "accuracy")
        for key, brush, shrink in (("before", "#5d7890", 0.0), ("after", COLORS[0], 0.25)):
            diagram = report["reliability"].get(key)
            if diagram is None:
                continue
            edges = np.asarray(diagram["edges"])
            filled = [i for i, v in enumerate(diagram["accuracy"]) if v is not None]
            width = (edges[1] - edges[0]) * (1 - 2 * shrink)
            bars = pg.BarGraphItem(x=[(edges[i] + edges[i + 1]) / 2 for i in filled], height=[diagram["accuracy"][i] for i in filled],
                                   width=width, brush=brush if key == "before" else (0, 0, 0, 0),
                                   pen=pg.mkPen(brush, width=3 if key == "after" else 1))
            plot.addItem(bars)
            label = "before (T = 1)" if key == "before" else f"after (T = {report['temperature']:.3g})"
            plot.plot([], [], pen=pg.mkPen(brush, width=6), name=f"{label}: ECE {diagram['ece']:.3f}")
        return plot

    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the evaluation into…",
                                                  self.window_.settings.get("last_folder"))
        if folder:
            self.save(folder)

    def save(self, folder) -> Path:
        name = f"evaluation-{Path(self.report['labels']).parent.name}"
        written = write_outputs(self.report, Path(folder), name)
        self.status.setText(f"Saved metrics.json, figures and mistakes in {written}")
        return written


def install(window) -> None:
    def open_dialog() -> None:
        dialog = getattr(window, "evaluate_dialog", None)
        if dialog is None:
            dialog = window.evaluate_dialog = EvaluateDialog(window)
        dialog.show()
        dialog.raise_()

    action = menu_named(window, "&Analysis").addAction("Evaluate on a labelled folder…")
    action.triggered.connect(lambda *_: open_dialog())
    window.actions_["evaluate"] = action
