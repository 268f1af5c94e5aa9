"""The pictures exports show: one class's explanation over its image, and the image beside it.

Built on overlay.render_overlay (the one renderer for files); the viewer draws on screen instead.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.analysis import Analysis
from engine.cam import method_label  # noqa: F401 (the exports' captions use it from here too)
from engine.errors import LanternError
from engine.images import SourceImage
from engine.exports.overlay import render_overlay, windowed_rgb

GAP_PX = 8
NOT_FOR_DIAGNOSIS = "AI explanation, not for primary diagnosis"


def chosen_map(analysis: Analysis, method: str | None = None, class_index: int | None = None):
    """(method name, class index, ClassMaps): the given ones, else the first method and the
    predicted class."""
    if not analysis.maps:
        raise LanternError("this result holds no explanation map (it was analysed for triage only)",
                           analysis.source)
    method = method or next(iter(analysis.maps))
    if method not in analysis.maps:
        raise LanternError(f"this result has no {method} map (it has: {', '.join(analysis.maps)})",
                           analysis.source)
    index = analysis.predicted if class_index is None else class_index
    return method, index, analysis.maps[method]


def explanation_rgb(image: SourceImage, analysis: Analysis, method: str | None = None,
                    class_index: int | None = None, *, colormap: str = "inferno", opacity: float = 0.45,
                    threshold: float = 0.0, window: tuple[float, float] | None = None,
                    invert: bool = False) -> np.ndarray:
    """The class map blended over the windowed image: uint8 (H, W, 3), the source's own grid."""
    _, index, maps = chosen_map(analysis, method, class_index)
    return render_overlay(image, maps.normalized_map(index), colormap=colormap, opacity=opacity,
                          threshold=threshold, window=window, invert=invert)


def caption(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Text burned into the top-left corner on a dark band, scaled to the picture's width."""
    out = rgb.copy()
    scale = max(0.35, out.shape[1] / 1400)
    thickness = max(1, round(scale * 1.5))
    line_height = int(28 * scale) + 4
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for t in lines) + 12
    band = out[: line_height * len(lines) + 6, : min(width, out.shape[1])]
    band[:] = (band * 0.35).astype(np.uint8)
    for n, text in enumerate(lines, start=1):
        cv2.putText(out, text, (6, n * line_height - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return out


def side_by_side(image: SourceImage, analysis: Analysis, method: str | None = None,
                 class_index: int | None = None, **style) -> np.ndarray:
    """Original | explanation at the source's own resolution, with a gap between and what the
    right half is burned in. ``style``: colormap, opacity, threshold, window (centre, width) and
    invert, as the reader set them (defaults: the file's window, inferno at 0.45)."""
    method, index, _ = chosen_map(analysis, method, class_index)
    left = windowed_rgb(image, style.get("window"), style.get("invert", False))
    right = explanation_rgb(image, analysis, method, index, **style)
    right = caption(right, [f"{method_label(method)}: {analysis.classes[index]} "
                            f"({analysis.probabilities[index]:.0%})", NOT_FOR_DIAGNOSIS])
    gap = np.full((left.shape[0], GAP_PX, 3), 32, np.uint8)
    return np.concatenate([left, gap, right], axis=1)
