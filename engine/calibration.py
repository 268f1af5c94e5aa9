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
