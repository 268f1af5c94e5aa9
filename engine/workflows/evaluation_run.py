"""Evaluating a model on a labelled folder: run every case through ``analyze``, then report.

``evaluation_steps`` is a generator like ``analysis_steps`` (one :class:`Progress` per case, close
it to cancel) returning an :class:`EvaluationRun` with the raw logits, so that a temperature can
be fitted afterwards without running the model again. ``build_report`` turns a run into plain
data: metrics (engine/workflows/evaluation.py), reliability before and after temperature scaling
(engine/trust/calibration.py) and, where masks are given, the pointing game of each map method.
A case that cannot be read is skipped and listed with its reason; the rest still count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np

from engine.analysis import AnalysisOptions, LoadedModel, analyze
from engine.steps import Progress
from engine.trust.calibration import reliability_diagram
from engine.errors import LanternError
from engine.workflows.evaluation import metrics, pointing_hit, pointing_tolerance
from engine.images import load_image
from engine.workflows.labels import LabelledCase, LabelledSet
from engine.trust.temperature import fit_temperature
from engine.uncertainty import calibrated_probabilities
from engine.cam import METHOD_NAMES



@dataclass(frozen=True)
class CaseResult:
    case: LabelledCase
    logits: np.ndarray  # (C,) raw, before any temperature
    hits: dict[str, bool]  # method -> peak of the true class within tolerance of the mask
    strict_hits: dict[str, bool]  # method -> peak strictly on the mask
    tolerance_px: float
    features: np.ndarray | None = None  # the head's input (fits the out-of-distribution check)


@dataclass(frozen=True)
class EvaluationRun:
    labelled: LabelledSet
    model_name: str
    model_version: str
    engine: str
    temperature: float  # the bundle's at the time of the run
    results: tuple[CaseResult, ...]
    skipped: tuple[tuple[LabelledCase, str], ...]

    @property
    def logits(self) -> np.ndarray:
        return np.stack([r.logits for r in self.results]) if self.results else np.zeros((0, len(self.labelled.classes)))

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.case.label for r in self.results], dtype=np.int64)


def evaluate_case(case: LabelledCase, model: LoadedModel, methods: tuple[str, ...]) -> CaseResult:
    image = load_image(case.path)
    analysis = analyze(image, model, AnalysisOptions(methods=methods, mc_samples=0))
    hits, strict, tolerance = {}, {}, pointing_tolerance(image.shape[1])
    if case.mask is not None:
        mask = case.load_mask(image.shape)
        if mask.any():
            for method, maps in analysis.maps.items():
                peak = maps.peak(case.label)
                hits[method] = pointing_hit(mask, peak, tolerance)
                strict[method] = pointing_hit(mask, peak, 0)
    return CaseResult(case, np.asarray(analysis.logits, dtype=np.float64), hits, strict, tolerance,
                      np.asarray(analysis.head_input, dtype=np.float32).ravel())


def evaluation_steps(labelled: LabelledSet, model: LoadedModel) -> Generator[Progress, None, EvaluationRun]:
    model.bundle.require_single_input("evaluation on a labels file")
    if tuple(model.bundle.classes) != labelled.classes:
        raise LanternError(f"the labels were read for the classes {', '.join(labelled.classes)}, but the "
                           f"model has {', '.join(model.bundle.classes)}", labelled.csv)
    # Map methods only matter for the pointing game; without masks one is enough.
    methods = METHOD_NAMES if labelled.has_masks else METHOD_NAMES[:1]
    results, skipped = [], []
    total = len(labelled.cases)
    for n, case in enumerate(labelled.cases):
        yield Progress(f"case {n + 1} of {total}", n, total)
        try:
            results.append(evaluate_case(case, model, methods))
        except LanternError as exc:
            skipped.append((case, exc.reason))
    yield Progress("done", total, total)
    bundle = model.bundle
    return EvaluationRun(labelled, bundle.name, bundle.version, model.engine, bundle.temperature,
                         tuple(results), tuple(skipped))


def _relative(run: EvaluationRun, path: Path) -> str:
    folder = run.labelled.csv.parent.resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name


def _pointing_game(run: EvaluationRun) -> dict | None:
    scored = [r for r in run.results if r.hits]
    if not scored:
        return None
    classes = run.labelled.classes
    out = {}
    for method in scored[0].hits:
        rows = [r for r in scored if method in r.hits]
        per_class = {}
        for c in sorted({r.case.label for r in rows}):
            hits = [r.hits[method] for r in rows if r.case.label == c]
            per_class[classes[c]] = {"hit_rate": float(np.mean(hits)), "cases": len(hits)}
        out[method] = {"hit_rate": float(np.mean([r.hits[method] for r in rows])),
                       "strict_hit_rate": float(np.mean([r.strict_hits[method] for r in rows])),
                       "cases": len(rows), "per_class": per_class}
    return out


def build_report(run: EvaluationRun, temperature: float | None = None) -> dict:
    """Plain data for JSON and plots. Probabilities use ``temperature`` (default: the bundle's);
    the reliability diagram is given before (T = 1) and, when T differs from 1, after."""
    if not run.results:
        raise LanternError("no case of the labelled set could be evaluated", run.labelled.csv)
    t = run.temperature if temperature is None else float(temperature)
    logits, labels, classes = run.logits, run.labels, run.labelled.classes
    raw, scaled = calibrated_probabilities(logits), calibrated_probabilities(logits, t)
    correct = raw.argmax(axis=1) == labels  # the same either way: T never changes the winner
    before = reliability_diagram(raw.max(axis=1), correct)
    after = reliability_diagram(scaled.max(axis=1), correct) if t != 1.0 else None
    report = {
        "labels": str(run.labelled.csv),
        "model": {"name": run.model_name, "version": run.model_version, "engine": run.engine},
        "temperature": t,
        "metrics": metrics(labels, scaled, classes),
        "reliability": {"before": before.to_dict(), "after": after.to_dict() if after else None},
        "pointing_game": _pointing_game(run),
        "pointing_game_definition": "share of lesion cases whose map peak for the true class lies on the "
                                    "mask, within the original game's 15 px at 224-px scale "
                                    "(scaled to each image's width); strict_hit_rate allows no tolerance",
        "cases": [{"line": r.case.line, "file": _relative(run, r.case.path), "true": classes[r.case.label],
                   "predicted": classes[int(np.argmax(p))],
                   "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
                   "pointing_hits": r.hits or None}
                  for r, p in zip(run.results, scaled)],
        "skipped": [{"line": case.line, "file": _relative(run, case.path), "reason": reason}
                    for case, reason in run.skipped],
    }
    return report


def fitted_temperature(run: EvaluationRun) -> float:
    if len(run.results) < 2:
        raise LanternError("fitting a temperature needs at least two cases that could be evaluated",
                           run.labelled.csv)
    return fit_temperature(run.logits, run.labels)
