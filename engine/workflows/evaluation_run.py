"""Evaluating a model on a labelled folder: run every case through ``analyze``, then report.

``evaluation_steps`` is a generator like ``analysis_steps`` (one :class:`Progress` per case, close
it to cancel) returning an :class:`EvaluationRun` with the raw logits, so that a temperature can
be fitted afterwards without running the model again. ``build_report`` turns a run into plain
data: metrics (engine/workflows/evaluation.py), reliability before and after temperature scaling
(engine/trust/calibration.py), where masks are given the pointing game of each map method, and
the mistakes: misclassified cases and correct ones the model was unsure of.
A case that cannot be read is skipped and listed with its reason; the rest still count.

Uncertainty: the maps need a full pass per case, MC dropout only the head over the features that
pass already made, so every case also gets DEFAULT_SAMPLES head samples (a small fraction of the
case's cost). Their raw logits are kept, so the figures follow a temperature fitted afterwards.
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
from engine.uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD, UncertaintySummary, calibrated_probabilities
from engine.cam import METHOD_NAMES

MC_SEED = 0  # fixed: evaluating the same folder twice gives the same figures


@dataclass(frozen=True)
class CaseResult:
    case: LabelledCase
    logits: np.ndarray  # (C,) raw, before any temperature
    hits: dict[str, bool]  # method -> peak of the true class within tolerance of the mask
    strict_hits: dict[str, bool]  # method -> peak strictly on the mask
    tolerance_px: float
    features: np.ndarray | None = None  # the head's input (fits the out-of-distribution check)
    mc_logits: np.ndarray | None = None  # (S, C) raw MC-dropout logits; None: no dropout in the head


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
    head_input = np.asarray(analysis.head_input, dtype=np.float32)
    mc = model.backend.mc_logits(head_input, DEFAULT_SAMPLES, MC_SEED) if model.backend.has_dropout else None
    return CaseResult(case, np.asarray(analysis.logits, dtype=np.float64), hits, strict, tolerance,
                      head_input.ravel(), None if mc is None else np.asarray(mc, dtype=np.float64))


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


UNCERTAINTY_KEYS = ("samples", "confidence", "predictive_entropy", "mutual_information", "flagged")
MISCLASSIFIED, UNSURE = "misclassified", "correct, low confidence"
MISTAKES_DEFINITION = (f"misclassified cases, the most confident first; then correct cases flagged by MC dropout "
                       f"(confidence below {DEFAULT_THRESHOLD}, {DEFAULT_SAMPLES} samples), the least confident "
                       f"first. For a model without dropout the list is probability-only: a correct case is "
                       f"listed when its predicted class's probability is below {DEFAULT_THRESHOLD}")


def _uncertainty(result: CaseResult, temperature: float) -> dict | None:
    """The case's MC-dropout figures at ``temperature`` (None: the model's head has no dropout)."""
    if result.mc_logits is None:
        return None
    summary = UncertaintySummary.from_logit_samples(result.mc_logits, DEFAULT_THRESHOLD, temperature)
    return {k: v for k, v in summary.to_dict().items() if k in UNCERTAINTY_KEYS}


def _mistakes(run: EvaluationRun, cases: list[dict]) -> list[dict]:
    """The cases to look at again (MISTAKES_DEFINITION), from the report's case entries."""
    wrong, unsure = [], []
    for result, case in zip(run.results, cases):
        probability = case["probabilities"][case["predicted"]]
        entry = {"kind": MISCLASSIFIED, "line": case["line"], "file": case["file"], "path": str(result.case.path),
                 "true": case["true"], "predicted": case["predicted"], "probability": probability,
                 "true_probability": case["probabilities"][case["true"]], "uncertainty": case["uncertainty"]}
        if case["true"] != case["predicted"]:
            wrong.append(entry)
        elif case["uncertainty"]["flagged"] if case["uncertainty"] else probability < DEFAULT_THRESHOLD:
            unsure.append(entry | {"kind": UNSURE})
    wrong.sort(key=lambda e: -e["probability"])
    unsure.sort(key=lambda e: e["uncertainty"]["confidence"] if e["uncertainty"] else e["probability"])
    return wrong + unsure


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
    cases = [{"line": r.case.line, "file": _relative(run, r.case.path), "true": classes[r.case.label],
              "predicted": classes[int(np.argmax(p))],
              "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
              "uncertainty": _uncertainty(r, t), "pointing_hits": r.hits or None}
             for r, p in zip(run.results, scaled)]
    return {
        "labels": str(run.labelled.csv),
        "model": {"name": run.model_name, "version": run.model_version, "engine": run.engine},
        "temperature": t,
        "metrics": metrics(labels, scaled, classes),
        "reliability": {"before": before.to_dict(), "after": after.to_dict() if after else None},
        "pointing_game": _pointing_game(run),
        "pointing_game_definition": "share of lesion cases whose map peak for the true class lies on the "
                                    "mask, within the original game's 15 px at 224-px scale "
                                    "(scaled to each image's width); strict_hit_rate allows no tolerance",
        "cases": cases,
        "mistakes": _mistakes(run, cases),
        "mistakes_definition": MISTAKES_DEFINITION,
        "skipped": [{"line": case.line, "file": _relative(run, case.path), "reason": reason}
                    for case, reason in run.skipped],
    }


def fitted_temperature(run: EvaluationRun) -> float:
    if len(run.results) < 2:
        raise LanternError("fitting a temperature needs at least two cases that could be evaluated",
                           run.labelled.csv)
    return fit_temperature(run.logits, run.labels)
