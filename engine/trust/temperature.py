"""Temperature scaling (Guo et al., 2017): one number T that softens (T > 1) or sharpens (T < 1)
every softmax, fitted on a labelled folder by minimising the negative log-likelihood.

Dividing logits by T never changes which class wins, only how sure the model says it is. The
fitted T is stored in the bundle's manifest (``calibration``) and applied wherever Lantern turns
logits into probabilities (engine/analysis.py), MC-dropout samples included.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from engine.bundle import ModelBundle, update_manifest

LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(z)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL: a coarse grid on log T, then golden-section search
    in the winning interval (the NLL is smooth and unimodal in log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < 2:
        raise ValueError("fitting a temperature needs the logits of at least two labelled cases")
    grid = np.linspace(*LOG_T_RANGE, 41)
    losses = [nll(logits, labels, math.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]

    def loss(g: float) -> float:
        return nll(logits, labels, math.exp(g))

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-5:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2.0))


def store_temperature(bundle: ModelBundle, temperature: float, fitted_on: str, cases: int,
                      ece_before: float, ece_after: float) -> ModelBundle:
    """Write the fitted T into the bundle's manifest; returns the re-read bundle."""
    record = {
        "temperature": round(float(temperature), 6),
        "fitted_on": fitted_on,
        "cases": int(cases),
        "ece_before": round(float(ece_before), 6),
        "ece_after": round(float(ece_after), 6),
        "fitted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return update_manifest(bundle, calibration=record)
