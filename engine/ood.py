"""Out-of-distribution score: how far an image's features lie from those the model was fitted on.

The score is the Mahalanobis distance of the features entering the dropout head (computed once per
image by every engine, so the score costs one small matrix product) to the nearest of the
class-conditional Gaussians with one shared covariance (Lee et al., 2018), fitted on
in-distribution images. ``docs/trust.md`` gives the measurements that chose it over the energy
score (which reads only the logits, and so cannot see features the head ignores).

The covariance is shrunk towards a scaled identity (Ledoit and Wolf, 2004): a few hundred images
give a singular 512 x 512 sample covariance. The threshold is a stated percentile of
*out-of-fold* scores (each image scored by statistics fitted without it, 5 folds), so that the
share of in-distribution images flagged is what the percentile says, not fewer.

Statistics live in the bundle as ``ood.safetensors`` (plain arrays, nothing executable) named by
the manifest's ``ood`` entry with the score's name, threshold and provenance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import LanternError, ModelBundleError

OOD_FILE = "ood.safetensors"
SCORE_NAME = "mahalanobis"
DEFAULT_PERCENTILE = 99.0  # in-distribution images above the threshold: about 100 - this, in %
MIN_IMAGES_PER_CLASS = 10  # each of the 5 folds then leaves at least 8 of every class to fit on
FOLDS = 5


@dataclass(frozen=True, eq=False)
class OodStatistics:
    means: np.ndarray  # (C, F) class means of the features
    precision: np.ndarray  # (F, F) inverse of the shrunk shared covariance
    threshold: float  # scores above it are outside what the model was fitted on (this engine's)
    percentile: float
    images: int  # how many in-distribution images were fitted
    fitted_on: str = ""
    # Per engine: INT8 features differ a little from fp32 ones, and so do their scores.
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        # Whitening: precision = W W^T, so the squared distance is |x W - m W|^2, one (F, F)
        # matrix-vector product per image (a quarter of a millisecond at F = 512) instead of one
        # per class.
        values, vectors = np.linalg.eigh(np.asarray(self.precision, dtype=np.float64))
        whiten = (vectors * np.sqrt(np.clip(values, 0.0, None))).astype(np.float32)
        object.__setattr__(self, "_whiten", whiten)
        object.__setattr__(self, "_centres", np.asarray(self.means, np.float32) @ whiten)

    def for_engine(self, engine: str) -> "OodStatistics":
        """These statistics with the threshold measured on ``engine`` (if it was)."""
        if engine not in self.thresholds:
            return self
        return dataclasses.replace(self, threshold=self.thresholds[engine])

    def score(self, features: np.ndarray) -> float:
        """Mahalanobis distance (not squared) of one image's features to the nearest class."""
        return float(self.scores(np.asarray(features).reshape(1, -1))[0])

    def scores(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, dtype=np.float32).reshape(len(features), -1) @ self._whiten  # (N, F)
        squared = ((z[:, None, :] - self._centres[None]) ** 2).sum(axis=2)  # (N, C)
        return np.sqrt(squared.min(axis=1))


def _shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrinkage of the sample covariance towards mu * I."""
    n, f = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / f
    target_distance = np.sum((sample - mu * np.eye(f)) ** 2)
    # The spread of the per-image outer products around the sample covariance.
    spread = (np.sum((centred ** 2).sum(axis=1) ** 2) / n - np.sum(sample ** 2)) / n
    shrinkage = float(np.clip(spread / target_distance, 0.0, 1.0)) if target_distance > 0 else 1.0
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(f)


def _fit_gaussians(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    means = np.stack([features[labels == c].mean(axis=0) for c in range(classes)])
    covariance = _shrunk_covariance(features - means[labels])
    return means, np.linalg.pinv(covariance, hermitian=True)


def fit_ood(features: np.ndarray, labels: np.ndarray, classes: int, *, percentile: float = DEFAULT_PERCENTILE,
            fitted_on: str = "", engine: str = "torch",
            other_engines: dict[str, np.ndarray] | None = None) -> OodStatistics:
    """Class means, shared shrunk covariance and an out-of-fold threshold from in-distribution
    images' head features (N, F...) on ``engine`` and their labels (N,). ``other_engines``: the same
    images' features on other engines, for their own thresholds (each fold's statistics, fitted on
    ``engine``'s features, score the left-out images as that engine computes them)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=classes)
    if len(counts) > classes or counts.min() < MIN_IMAGES_PER_CLASS:
        raise LanternError(f"fitting the out-of-distribution check needs at least {MIN_IMAGES_PER_CLASS} labelled "
                           f"images of every class; these have {', '.join(str(int(c)) for c in counts[:classes])}")
    if not 50.0 <= percentile < 100.0:
        raise LanternError(f"the threshold percentile must be between 50 and 100, not {percentile}")
    every = {engine: x, **{name: np.asarray(f, np.float64).reshape(len(f), -1) for name, f in
                           (other_engines or {}).items()}}
    folds = np.empty(len(y), np.int64)
    for c in range(classes):  # folds within each class, so every fold's fit sees every class
        members = np.flatnonzero(y == c)
        folds[members] = np.arange(len(members)) % FOLDS
    held_out = {name: np.empty(len(y)) for name in every}
    for k in range(FOLDS):
        train = folds != k
        means, precision = _fit_gaussians(x[train], y[train], classes)
        fold = OodStatistics(means, precision, 0.0, percentile, 0)
        for name, feats in every.items():
            held_out[name][folds == k] = fold.scores(feats[folds == k])
    means, precision = _fit_gaussians(x, y, classes)
    thresholds = {name: float(np.percentile(s, percentile)) for name, s in held_out.items()}
    return OodStatistics(means.astype(np.float32), precision.astype(np.float32), thresholds[engine],
                         float(percentile), len(y), fitted_on, thresholds)


def manifest_entry(stats: OodStatistics, file: str = OOD_FILE) -> dict:
    return {"file": file, "score": SCORE_NAME, "threshold": round(stats.threshold, 6),
            "thresholds": {k: round(v, 6) for k, v in stats.thresholds.items()},
            "percentile": stats.percentile, "images": stats.images, "fitted_on": stats.fitted_on}


def save_ood(stats: OodStatistics, folder: Path) -> Path:
    """Write the statistics into the bundle folder atomically; returns the file."""
    from safetensors.numpy import save

    from engine.files import write_bytes_atomic

    data = save({"means": np.ascontiguousarray(stats.means, np.float32),
                 "precision": np.ascontiguousarray(stats.precision, np.float32)})
    return write_bytes_atomic(Path(folder) / OOD_FILE, data)


def load_ood(folder: Path, entry: Any, engine: str | None = None) -> OodStatistics | None:
    """The bundle's statistics from its manifest ``ood`` entry (None: the bundle has none), with
    ``engine``'s threshold where one was measured."""
    if entry is None:
        return None
    folder = Path(folder)
    if not isinstance(entry, dict) or entry.get("score") != SCORE_NAME or not isinstance(entry.get("file"), str):
        raise ModelBundleError(f"manifest.json: 'ood' must name its file and the score '{SCORE_NAME}'", folder)
    threshold = entry.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ModelBundleError("manifest.json: 'ood.threshold' must be a number", folder)
    path = (folder / entry["file"]).resolve()
    if not path.is_relative_to(folder.resolve()) or path.suffix != ".safetensors":
        raise ModelBundleError("manifest.json: 'ood.file' must be a .safetensors file inside the bundle", folder)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
        means, precision = arrays["means"], arrays["precision"]
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ModelBundleError(f"the out-of-distribution statistics '{entry['file']}' could not be read: {exc}",
                               folder) from exc
    f = means.shape[-1] if means.ndim == 2 else -1
    if precision.shape != (f, f):
        raise ModelBundleError(f"the out-of-distribution statistics '{entry['file']}' do not fit together "
                               f"(means {means.shape}, precision {precision.shape})", folder)
    thresholds = entry.get("thresholds") or {}
    if not (isinstance(thresholds, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in thresholds.values())):
        raise ModelBundleError("manifest.json: 'ood.thresholds' must map engines to numbers", folder)
    stats = OodStatistics(means, precision, float(threshold), float(entry.get("percentile", DEFAULT_PERCENTILE)),
                          int(entry.get("images", 0)), str(entry.get("fitted_on", "")),
                          {k: float(v) for k, v in thresholds.items()})
    return stats.for_engine(engine) if engine else stats
