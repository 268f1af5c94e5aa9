"""How alike two maps are: Spearman rank correlation and SSIM, and agreement between methods.

Rank correlation asks "do both maps put the same places first?" and ignores scale, which differs
between methods and models. SSIM (Wang et al., 2004) compares local structure: mean, contrast and
correlation in a Gaussian window (sigma 1.5 px, the paper's choice), each map scaled to 0..1 by
its own peak first. Both are written with numpy (and OpenCV's Gaussian filter): the packaged app
carries no scipy or scikit-image.
"""

from __future__ import annotations

from itertools import combinations

import cv2
import numpy as np

from engine.cam import ClassMaps

_SSIM_SIGMA = 1.5
_C1, _C2 = 0.01**2, 0.03**2  # Wang et al.'s constants for a data range of 1


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their mean rank (a CAM is exactly 0 over large areas)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(flat, kind="stable")
    sorted_values = flat[order]
    # Start of each run of equal values, and the mean rank of every run.
    starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
    ends = np.concatenate([starts[1:], [flat.size]])
    run_rank = (starts + ends - 1) / 2.0
    ranks = np.empty(flat.size)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps of the same shape; 0 when either map is constant (a flat
    map ranks nothing first, so it agrees with nothing)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"maps of different shapes {np.shape(a)} and {np.shape(b)}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    low, high = m.min(), m.max()
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two 2-D maps, each scaled to 0..1 first."""
    if np.shape(a) != np.shape(b) or np.ndim(a) != 2:
        raise ValueError(f"SSIM needs two 2-D maps of one shape, not {np.shape(a)} and {np.shape(b)}")
    x, y = _unit(a), _unit(b)

    def blur(m: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(m, (0, 0), _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + _C1) * (2 * cov + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return float(index.mean())


def method_agreement(maps: dict[str, ClassMaps], class_index: int) -> dict[tuple[str, str], float]:
    """Rank correlation between every pair of methods' maps of one class, on the model's grid
    (all methods share it, and nothing needs warping)."""
    return {(a, b): spearman(maps[a].grid[class_index], maps[b].grid[class_index])
            for a, b in combinations(maps, 2)}
