"""What an evaluation leaves behind: a temperature and out-of-distribution statistics stored in the
bundle, and a new folder with
metrics.json and the figures. Shared by ``lantern-engine evaluate`` and the Evaluate dialog."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import ModelBundleError
from engine.exports.figures import FIGURES
from engine.files import safe_name, unused_path, write_bytes_atomic, write_json_atomic
from engine.ood import DEFAULT_PERCENTILE, OodStatistics, fit_ood, manifest_entry, save_ood
from engine.trust.temperature import store_temperature
from engine.workflows.evaluation_run import EvaluationRun, build_report, fitted_temperature


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


def fit_ood_and_store(run: EvaluationRun, folder: Path, percentile: float = DEFAULT_PERCENTILE) -> OodStatistics:
    """Fit the out-of-distribution statistics on the run's cases (its in-distribution images) and
    store them in the bundle: ``ood.safetensors`` and the manifest's ``ood`` entry."""
    stats = fit_ood(np.stack([r.features for r in run.results]) if run.results else np.zeros((0, 1)),
                    run.labels, len(run.labelled.classes), percentile=percentile, fitted_on=str(run.labelled.csv))
    bundle = load_bundle(folder)  # as it is now: a temperature may just have been stored
    try:
        save_ood(stats, bundle.folder)
        update_manifest(bundle, ood=manifest_entry(stats))
    except OSError as exc:
        raise ModelBundleError(f"could not store the out-of-distribution statistics: {exc}", bundle.folder) from exc
    return stats


def write_outputs(report: dict, out: Path, name: str) -> Path:
    """A new folder under ``out`` (never an earlier one) with metrics.json and the figures."""
    folder = unused_path(Path(out) / safe_name(name, "evaluation"))
    write_json_atomic(folder / "metrics.json", report)
    for file, draw in FIGURES.items():
        write_bytes_atomic(folder / file, draw(report))
    return folder
