"""Display mapping: window presets, grey and overlay lookup tables, display-ready pixel data.

Window/level, invert, colormap and threshold are all lookup-table or level changes on the
ImageItems; pixels are converted once per image (to uint16 / uint8), so that a drag or a slider
never recomputes an image-sized array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg

from engine import METHOD_NAMES, method_label

# (label, width, center) in Hounsfield units, as reading rooms know them.
WINDOW_PRESETS: tuple[tuple[str, float, float], ...] = (
    ("Soft tissue", 400.0, 40.0),
    ("Lung", 1500.0, -600.0),
    ("Liver", 150.0, 90.0),
    ("Bone", 2500.0, 480.0),
    ("Brain", 80.0, 40.0),
)

# Perceptually uniform maps first; jet only because readers ask for it.
COLORMAPS: tuple[str, ...] = ("viridis", "inferno", "magma", "plasma", "cividis", "jet")
METHOD_LABELS = {name: method_label(name) for name in METHOD_NAMES}
METHODS = METHOD_NAMES
CONTOUR_LEVELS = (0.2, 0.4, 0.6, 0.8)
_CONTOUR_HALF_WIDTH = 0.012


def colormap(name: str) -> pg.ColorMap:
    if name == "jet":
        # pyqtgraph ships no jet; these are matplotlib's jet anchor points.
        positions = [0.0, 0.125, 0.375, 0.625, 0.875, 1.0]
        colors = [(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)]
        return pg.ColorMap(positions, colors, name="jet")
    return pg.colormap.get(name)


def gray_lut(invert: bool = False) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8)
    return ramp[::-1].copy() if invert else ramp


def overlay_lut(name: str, threshold: float = 0.0, contour: bool = False) -> np.ndarray:
    """(256, 4) uint8 RGBA: the colormap, transparent below ``threshold`` (fraction of the
    display range); in contour mode opaque only in thin bands around fixed levels, which on a
    smooth map reads as iso-lines without tracing any curve."""
    lut = colormap(name).getLookupTable(0.0, 1.0, 256, alpha=True).astype(np.uint8)
    values = np.linspace(0.0, 1.0, 256)
    visible = values >= threshold
    if contour:
        near = np.zeros(256, dtype=bool)
        for level in CONTOUR_LEVELS:
            near |= np.abs(values - level) <= _CONTOUR_HALF_WIDTH
        visible &= near
    lut[:, 3] = np.where(visible, 255, 0)
    return lut


@dataclass(frozen=True)
class DisplayImage:
    """Source pixels as the ImageItem gets them, plus the map back to modality units.

    Grayscale becomes uint16 (display = (value - offset) * scale) because pyqtgraph folds
    levels into a lookup table for integer data, making a window change a table lookup.
    """

    data: np.ndarray
    offset: float
    scale: float
    is_color: bool
    # An area-averaged copy (longest side <= REDUCED_SIDE) shown while zoomed out: window
    # changes then re-render a quarter of the pixels, and small views alias less.
    reduced: np.ndarray | None = None
    top: float | None = None  # the largest pixel value, in modality units (None: as the type allows)

    def to_display(self, value: float) -> float:
        return (value - self.offset) * self.scale

    def levels(self, center: float, width: float) -> tuple[float, float]:
        width = max(width, 1e-6)
        return self.to_display(center - width / 2), self.to_display(center + width / 2)

    @property
    def value_range(self) -> tuple[float, float]:
        """The image's own values, lowest to highest, in modality units: what window/level spans
        (an 8-bit PNG spans 0..255 even though it is held in 16 bits)."""
        if self.is_color:
            return 0.0, 255.0
        if self.top is not None:
            return self.offset, max(self.top, self.offset + 1e-6)
        return self.offset, self.offset + 65535.0 / self.scale


REDUCED_SIDE = 1024


def _reduced(data: np.ndarray) -> np.ndarray | None:
    import cv2

    h, w = data.shape[:2]
    factor = int(np.ceil(max(h, w) / REDUCED_SIDE))
    if factor < 2:
        return None
    return cv2.resize(data, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)


def make_display_image(pixels: np.ndarray) -> DisplayImage:
    if pixels.ndim == 3:
        data = np.ascontiguousarray(pixels)
        return DisplayImage(data, 0.0, 1.0, True, _reduced(data))
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 1.0)
    # NaN makes min or max NaN, and inf shows in them: finite extremes mean all pixels are finite,
    # which spares the common case two passes over a 2000 x 2000 image.
    all_finite = np.isfinite(low) and np.isfinite(high)
    if not all_finite:
        finite = pixels[np.isfinite(pixels)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = max(high - low, 1e-6)
    sample = pixels[:: max(1, pixels.shape[0] // 64)]
    # Integer-valued data within 16 bits keeps exact values; anything else is rescaled.
    integral = span <= 65535 and bool(np.array_equal(sample, np.round(sample)))
    scale = 1.0 if integral else 65535.0 / span
    if integral and all_finite:
        data = (pixels - low).astype(np.uint16)  # exact: whole numbers within 0..65535
    else:
        data = np.nan_to_num((pixels - low) * scale, nan=0.0, posinf=65535.0, neginf=0.0)
        data = np.clip(data + 0.5 if not integral else data, 0, 65535).astype(np.uint16)
    return DisplayImage(data, low, scale, False, _reduced(data), high)


def map_to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    """A CAM map scaled so that ``top`` is 255 (the overlay LUT's last entry)."""
    scale = 255.0 / top if top > 0 else 0.0
    return np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)


OVERLAY_MAX_SIDE = 1024


def overlay_step(shape: tuple[int, ...]) -> int:
    """Overlays take every step-th pixel of the image: at most 1024 on a side. A CAM map is a
    bilinear blow-up of a grid of about 10 x 10 cells, so nothing is lost, and a 2000 x 2000
    radiograph's maps cost a quarter of the time to make and upload."""
    return max(1, int(np.ceil(max(shape[:2]) / OVERLAY_MAX_SIDE)))


def thumbnail_step(shape: tuple[int, ...], size: int = 112) -> int:
    """Take every step-th pixel so that the longer side fits ``size``."""
    return max(1, int(np.ceil(max(shape[:2]) / size)))


def thumbnail(gray: np.ndarray, levels: tuple[float, float], heat: np.ndarray | None,
              lut: np.ndarray, opacity: float, size: int = 112) -> np.ndarray:
    """A small RGB uint8 picture: the windowed image with the map blended on top.

    ``heat`` is the uint8 map already sampled at ``thumbnail_step`` (``full[::step, ::step]``):
    a thumbnail never needs the full-size map."""
    step = thumbnail_step(gray.shape, size)
    small = gray[::step, ::step].astype(np.float32)
    low, high = levels
    unit = np.clip((small - low) / max(high - low, 1e-6), 0, 1)
    if unit.ndim == 2:
        unit = np.repeat(unit[..., None], 3, axis=2)
    rgb = unit * 255.0
    if heat is not None:
        rgba = lut[heat].astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0 * opacity
        rgb = rgb * (1 - alpha) + rgba[..., :3] * alpha
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
