"""``lantern-engine evaluate DIR --labels labels.csv``: metrics JSON, PNG figures and the list of
mistakes for a model on a labelled folder, optionally fitting a temperature and storing it in the
bundle."""

from __future__ import annotations

import argparse
import sys

from engine.analysis import load_model
from engine.errors import LanternError
from engine.steps import run_to_end
from engine.workflows.evaluation_outputs import fit_and_store, fit_ood_and_store, write_outputs
from engine.workflows.evaluation_run import MISCLASSIFIED, build_report, evaluation_steps
from engine.workflows.labels import read_labels


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
    if args.fit_ood:
        stats = fit_ood_and_store(run, model.bundle.folder, args.ood_percentile)
        print(f"fitted the out-of-distribution check on {stats.images} images (threshold {stats.threshold:.2f}, "
              f"the {stats.percentile:g}th percentile of out-of-fold scores); stored in {model.bundle.folder}",
              file=sys.stderr)
    report = build_report(run, temperature)
    folder = write_outputs(report, args.out, f"evaluation-{labels_csv.parent.name}")
    m = report["metrics"]
    rel = report["reliability"]
    ece = f"ECE {rel['before']['ece']:.3f}" + (f" -> {rel['after']['ece']:.3f}" if rel["after"] else "")
    aucs = ", ".join(f"{c} {v['auc']:.3f}" for c, v in m["per_class"].items() if v["auc"] is not None)
    aps = ", ".join(f"{c} {v['average_precision']:.3f}" for c, v in m["per_class"].items()
                    if v["average_precision"] is not None)
    wrong = sum(1 for x in report["mistakes"] if x["kind"] == MISCLASSIFIED)
    print(f"{m['cases']} cases, accuracy {m['accuracy']:.3f}, AUC {aucs}, AP {aps}, {ece}; {wrong} misclassified "
          f"and {len(report['mistakes']) - wrong} correct but unsure (mistakes.csv, mistakes.png); "
          f"written to {folder}", file=sys.stderr)
    if run.skipped and not run.results:
        raise LanternError("no case could be evaluated", labels_csv)
    return 1 if run.skipped else 0
