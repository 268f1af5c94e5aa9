"""Reliability bins and expected calibration error: the one place Lantern computes them.

A model is calibrated when, among the cases it calls with confidence p, a fraction p is right.
The reliability diagram sorts cases into equal-width confidence bins on [0, 1] and compares each
bin's mean confidence with its accuracy; the expected calibration error (ECE) is the gap averaged
over bins, weighted by how many cases each bin holds (Guo et al., 2017). Bins are half-open
[lo, hi) except the last, which also takes confidence 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10


@dataclass(frozen=True)
class ReliabilityDiagram:
    edges: np.ndarray  # (bins + 1,) bin edges on [0, 1]
    mean_confidence: np.ndarray  # (bins,) NaN where a bin is empty
    accuracy: np.ndarray  # (bins,) NaN where a bin is empty
    counts: np.ndarray  # (bins,) cases per bin
    ece: float

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def to_dict(self) -> dict:
        def values(array: np.ndarray) -> list:
            # JSON has no NaN: an empty bin is written as null.
            return [None if np.isnan(v) else round(float(v), 6) for v in array]

        return {
            "edges": [round(float(v), 6) for v in self.edges],
            "mean_confidence": values(self.mean_confidence),
            "accuracy": values(self.accuracy),
            "counts": [int(v) for v in self.counts],
            "ece": round(self.ece, 6),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ReliabilityDiagram":
        """Read back what ``to_dict`` wrote (e.g. from a bundle's model card)."""
        edges = np.asarray(data["edges"], dtype=np.float64)
        counts = np.asarray(data["counts"], dtype=np.int64)

        def values(key: str) -> np.ndarray:
            return np.asarray([np.nan if v is None else float(v) for v in data[key]], dtype=np.float64)

        mean_confidence, accuracy = values("mean_confidence"), values("accuracy")
        bins = len(edges) - 1
        if bins < 1 or not (len(counts) == len(mean_confidence) == len(accuracy) == bins):
            raise ValueError("a reliability diagram needs bins+1 edges and bins counts, confidences, accuracies")
        return cls(edges, mean_confidence, accuracy, counts, float(data["ece"]))


def reliability_diagram(confidences, correct, bins: int = DEFAULT_BINS) -> ReliabilityDiagram:
    """Bin ``confidences`` (N,) in [0, 1] against ``correct`` (N,) booleans (or 0/1)."""
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.size == 0:
        raise ValueError("a reliability diagram needs at least one case")
    if conf.shape != right.shape:
        raise ValueError(f"{conf.size} confidences but {right.size} correctness values")
    if bins < 1:
        raise ValueError("a reliability diagram needs at least one bin")
    if not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidences must be finite and within 0..1")
    if not np.all((right == 0.0) | (right == 1.0)):
        raise ValueError("correctness values must be true/false (or 0/1)")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((conf * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=conf, minlength=bins) / counts
        accuracy = np.bincount(index, weights=right, minlength=bins) / counts
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    ece = float((counts[filled] / conf.size * gaps).sum())
    return ReliabilityDiagram(edges, mean_confidence, accuracy, counts, ece)


@dataclass(frozen=True)
class CalibrationStatus:
    """What is known about a model's calibration, for the Trust panel and the gauges."""

    calibrated: bool  # a temperature was fitted, or a reliability diagram measured
    ece: float | None
    diagram: ReliabilityDiagram | None
    source: str  # where the figures come from, in plain words

    @property
    def warning(self) -> str:
        if self.calibrated:
            return ""
        return ("This model has never been calibrated: its probabilities have not been checked "
                "against outcomes and may be over- or under-confident.")


def calibration_status(bundle) -> CalibrationStatus:
    """From the bundle's manifest: a measured ``model_card.reliability`` diagram and/or the
    ``calibration`` record temperature scaling writes (engine/trust/temperature.py)."""
    from engine.errors import ModelBundleError

    diagram = None
    raw = bundle.model_card.get("reliability")
    if raw is not None:
        try:
            diagram = ReliabilityDiagram.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelBundleError(f"manifest.json: model_card.reliability is not a reliability diagram ({exc})",
                                   bundle.folder) from exc
    record = bundle.manifest.get("calibration")
    if isinstance(record, dict) and "temperature" in record:
        ece = record.get("ece_after", diagram.ece if diagram else None)
        source = (f"temperature scaling (T = {float(record['temperature']):.3g}) fitted on "
                  f"{record.get('fitted_on', 'a labelled set')} ({record.get('cases', '?')} cases)")
        return CalibrationStatus(True, None if ece is None else float(ece), diagram, source)
    if diagram is not None:
        return CalibrationStatus(True, diagram.ece, diagram,
                                 f"reliability measured on {diagram.total} cases (model card); no temperature fitted")
    return CalibrationStatus(False, None, None, "no calibration in the model bundle")


def evaluation_reliability(path) -> ReliabilityDiagram:
    """The reliability diagram of a ``lantern-engine evaluate`` metrics.json (after temperature
    scaling when it was applied), refused in plain words when the file is not one."""
    import json
    from pathlib import Path

    from engine.errors import LanternError

    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        reliability = report["reliability"]
        return ReliabilityDiagram.from_dict(reliability.get("after") or reliability["before"])
    except OSError as exc:
        raise LanternError(f"could not be read ({exc.strerror or exc})", path) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LanternError("is not a JSON file", path) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LanternError("holds no reliability diagram (expected the metrics.json of "
                           "'lantern-engine evaluate')", path) from exc
