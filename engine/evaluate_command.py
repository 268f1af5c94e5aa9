"""``lantern-engine evaluate DIR --labels labels.csv``: metrics JSON and PNG figures for a model on
a labelled folder, optionally fitting a temperature and storing it in the bundle."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .analysis import load_model
from .bundle import ModelBundle
from .errors import LanternError, ModelBundleError
from .evaluation_run import EvaluationRun, build_report, evaluation_steps, fitted_temperature
from .figures import FIGURES
from .files import unused_path, write_bytes_atomic, write_json_atomic
from .labels import read_labels
from .temperature import store_temperature


def run_to_end(steps, log=lambda message: None):
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        log(progress)


def fit_and_store(run: EvaluationRun, bundle: ModelBundle) -> tuple[float, ModelBundle]:
    """Fit T on the run's cases and store it in the bundle, with the ECE before and after."""
    temperature = fitted_temperature(run)
    report = build_report(run, temperature)
    reliability = report["reliability"]
    after = reliability["after"] or reliability["before"]
    try:
        stored = store_temperature(bundle, temperature, str(run.labelled.csv), len(run.results),
                                   reliability["before"]["ece"], after["ece"])
    except OSError as exc:
        raise ModelBundleError(f"could not store the temperature in manifest.json: {exc}", bundle.folder) from exc
    return temperature, stored


def write_outputs(report: dict, out: Path, name: str) -> Path:
    """A new folder under ``out`` (never an earlier one) with metrics.json and the figures."""
    folder = unused_path(Path(out) / (re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "evaluation"))
    write_json_atomic(folder / "metrics.json", report)
    for file, draw in FIGURES.items():
        write_bytes_atomic(folder / file, draw(report))
    return folder


def evaluate_command(args: argparse.Namespace) -> int:
    labels_csv = args.labels if args.labels.is_absolute() else (args.dir / args.labels)
    if not labels_csv.is_file() and args.labels.is_file():
        labels_csv = args.labels
    model = load_model(args.model, args.engine)
    labelled = read_labels(labels_csv, model.bundle.classes)

    live = sys.stderr.isatty()  # a progress line only where it can be redrawn in place

    def log(progress) -> None:
        if live:
            print(f"\r{progress.stage}", end="", file=sys.stderr, flush=True)

    run = run_to_end(evaluation_steps(labelled, model), log)
    if live:
        print(file=sys.stderr)
    for case, reason in run.skipped:
        print(f"skipped line {case.line} ({case.path.name}): {reason}", file=sys.stderr)
    temperature = None
    if args.fit_temperature:
        temperature, _ = fit_and_store(run, model.bundle)
        print(f"fitted temperature {temperature:.4f}; stored in {model.bundle.folder / 'manifest.json'}",
              file=sys.stderr)
    report = build_report(run, temperature)
    folder = write_outputs(report, args.out, f"evaluation-{labels_csv.parent.name}")
    m = report["metrics"]
    rel = report["reliability"]
    ece = f"ECE {rel['before']['ece']:.3f}" + (f" -> {rel['after']['ece']:.3f}" if rel["after"] else "")
    aucs = ", ".join(f"{c} {v['auc']:.3f}" for c, v in m["per_class"].items() if v["auc"] is not None)
    print(f"{m['cases']} cases, accuracy {m['accuracy']:.3f}, AUC {aucs}, {ece}; written to {folder}",
          file=sys.stderr)
    if run.skipped and not run.results:
        raise LanternError("no case could be evaluated", labels_csv)
    return 1 if run.skipped else 0
