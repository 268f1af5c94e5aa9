"""What an evaluation leaves behind: a temperature and out-of-distribution statistics stored in the
bundle, and a new folder with metrics.json, the figures, and the mistakes (mistakes.csv and a
contact sheet, mistakes.png). Shared by ``lantern-engine evaluate`` and the Evaluate dialog."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import LanternError, ModelBundleError
from engine.exports.figures import FIGURES, TILE, Tile, contact_sheet_png
from engine.exports.overlay import windowed_rgb
from engine.files import safe_name, unused_path, write_bytes_atomic, write_json_atomic
from engine.images import load_image
from engine.ood import DEFAULT_PERCENTILE, OodStatistics, fit_ood, manifest_entry, save_ood
from engine.trust.temperature import store_temperature
from engine.workflows.evaluation_run import MISCLASSIFIED, EvaluationRun, build_report, fitted_temperature

SHEET_LIMIT = 60  # tiles on mistakes.png; mistakes.csv lists every one
MISTAKE_COLUMNS = ("kind", "line", "file", "true", "predicted", "probability", "true_class_probability",
                   "confidence", "predictive_entropy", "mutual_information", "mc_samples")


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


def thumbnail(path: str | Path, size: int = TILE) -> np.ndarray | None:
    """The image (its first frame, at its default window) as RGB at most ``size`` pixels a side;
    None when it cannot be read any more (moved, or never readable: it was then skipped)."""
    try:
        rgb = windowed_rgb(load_image(path))
    except LanternError:
        return None
    scale = size / max(rgb.shape[:2])
    shape = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.ascontiguousarray(cv2.resize(rgb, shape, interpolation=cv2.INTER_AREA))


def _figure(value) -> str:
    return "" if value is None else f"{value:.4f}"


def mistakes_csv(report: dict) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MISTAKE_COLUMNS)
    for m in report["mistakes"]:
        u = m["uncertainty"] or {}
        writer.writerow([m["kind"], m["line"], m["file"], m["true"], m["predicted"], _figure(m["probability"]),
                         _figure(m["true_probability"]), _figure(u.get("confidence")),
                         _figure(u.get("predictive_entropy")), _figure(u.get("mutual_information")),
                         u.get("samples", 0)])
    return buffer.getvalue().encode("utf-8")


def mistakes_png(report: dict) -> bytes:
    """A contact sheet of the first SHEET_LIMIT mistakes: misclassified framed red, correct but
    unsure amber, each with its file, true and predicted class and figures."""
    mistakes = report["mistakes"]
    wrong = sum(m["kind"] == MISCLASSIFIED for m in mistakes)
    shown = mistakes[:SHEET_LIMIT]
    title = (f"{wrong} misclassified, {len(mistakes) - wrong} correct but unsure"
             + (f" (first {len(shown)} shown; all in mistakes.csv)" if len(shown) < len(mistakes) else ""))
    tiles = []
    for m in shown:
        u = m["uncertainty"]
        figures = f"p {m['probability']:.2f}" + (f"  conf {u['confidence']:.2f}" if u else "")
        # ASCII only (OpenCV's fonts); a long name keeps its end, which tells files apart.
        name = m["file"].encode("ascii", "replace").decode()
        lines = (name if len(name) <= 24 else ".." + name[-22:], f"{m['true']} -> {m['predicted']}", figures)
        tiles.append(Tile(thumbnail(m["path"]), lines, (213, 50, 40) if m["kind"] == MISCLASSIFIED else (230, 159, 0)))
    return contact_sheet_png(title if mistakes else "No mistakes: every case correct and confident", tiles)


def write_outputs(report: dict, out: Path, name: str) -> Path:
    """A new folder under ``out`` (never an earlier one) with metrics.json, the figures and the
    mistakes."""
    folder = unused_path(Path(out) / safe_name(name, "evaluation"))
    write_json_atomic(folder / "metrics.json", report)
    for file, draw in FIGURES.items():
        write_bytes_atomic(folder / file, draw(report))
    write_bytes_atomic(folder / "mistakes.csv", mistakes_csv(report))
    write_bytes_atomic(folder / "mistakes.png", mistakes_png(report))
    return folder
