"""Rendering an explanation onto its image as pixels, for files (PNG, DICOM exports).

The viewer does not use this: on screen it changes lookup tables and item opacity instead.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.images import SourceImage

COLORMAPS = {"viridis": cv2.COLORMAP_VIRIDIS, "inferno": cv2.COLORMAP_INFERNO,
             "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA,
             "cividis": cv2.COLORMAP_CIVIDIS, "jet": cv2.COLORMAP_JET}


def windowed_rgb(image: SourceImage, window: tuple[float, float] | None = None, invert: bool = False) -> np.ndarray:
    """The image as a reader sees it: uint8 (H, W, 3) RGB at its default window, or at
    ``window`` (centre, width in modality units) as the reader set it, optionally inverted."""
    if image.is_color:
        return image.pixels
    centre, width = window if window is not None else (image.window.center, image.window.width)
    width = max(width, 1e-6)
    gray = np.clip((image.pixels - (centre - width / 2)) * (255.0 / width), 0, 255).astype(np.uint8)
    if invert:
        gray = 255 - gray
    return np.repeat(gray[:, :, None], 3, axis=2)


def render_overlay(image: SourceImage, heatmap: np.ndarray, *, colormap: str = "inferno",
                   opacity: float = 0.45, threshold: float = 0.0, window: tuple[float, float] | None = None,
                   invert: bool = False) -> np.ndarray:
    """Blend a 0..1 map (H, W) over the windowed image; below ``threshold`` the map is clear.

    With no threshold the whole colormap is blended, zero included, so that regions without
    evidence read as the colormap's low end rather than as untouched (brighter) image.
    """
    base = windowed_rgb(image, window, invert).astype(np.float32)
    colored = cv2.applyColorMap((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), COLORMAPS[colormap])
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float32)
    shown = heatmap >= threshold if threshold > 0 else np.ones(heatmap.shape, bool)
    alpha = (opacity * shown)[:, :, None].astype(np.float32)
    return (base * (1 - alpha) + colored * alpha).round().astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()
