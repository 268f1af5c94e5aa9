"""From a source image to the tensor the model sees, and from the model's grid back again.

The resize rule (stretch, letterbox, center crop) is recorded as one affine map from source
pixels to model-input pixels, so that explanation maps can be warped back onto the source image
and overlay it pixel for pixel, whatever rule the bundle uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.bundle import InputSpec
from engine.images import SourceImage

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """``to_input`` maps source (x, y) to model-input (x, y): [x', y'] = A @ [x, y, 1]."""

    source_shape: tuple[int, int]  # (H, W)
    input_shape: tuple[int, int]  # (h, w)
    to_input: np.ndarray  # (2, 3) float64


@dataclass(frozen=True)
class ModelInput:
    tensor: np.ndarray  # (1, C, h, w) float32, normalised as the model expects
    seen: np.ndarray  # (h, w) or (h, w, 3) float32 in 0..1: what the model saw, for display
    geometry: Geometry


def _scale_affine(src_hw, scaled_hw, offset_xy) -> np.ndarray:
    """Pixel-centre-aligned scaling (as cv2.resize does) followed by a shift."""
    sy, sx = scaled_hw[0] / src_hw[0], scaled_hw[1] / src_hw[1]
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 + offset_xy[0]], [0.0, sy, 0.5 * sy - 0.5 + offset_xy[1]]]
    )


def plan_geometry(source_shape: tuple[int, int], spec: InputSpec) -> tuple[Geometry, tuple[int, int], tuple[int, int]]:
    """Return the geometry, the size to resize to (h, w), and the (top, left) placement of the
    resized image inside the input (negative = cropped)."""
    H, W = source_shape
    h, w = spec.size
    if spec.resize == "stretch":
        scaled = (h, w)
    else:
        scale = min(h / H, w / W) if spec.resize == "letterbox" else max(h / H, w / W) / spec.crop
        scaled = (max(1, round(H * scale)), max(1, round(W * scale)))
    top, left = (h - scaled[0]) // 2, (w - scaled[1]) // 2
    geometry = Geometry((H, W), (h, w), _scale_affine((H, W), scaled, (left, top)))
    return geometry, scaled, (top, left)


def _place(resized: np.ndarray, input_hw, top: int, left: int, fill: float) -> np.ndarray:
    h, w = input_hw
    out = np.full((h, w) + resized.shape[2:], fill, dtype=np.float32)
    # Overlap of the resized image with the input canvas (handles both padding and cropping).
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + resized.shape[0], h), min(left + resized.shape[1], w)
    out[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def _intensity_range(image: SourceImage, rule: str, samples: int) -> tuple[float, float]:
    pixels = image.pixels
    if rule == "unit8" or image.is_color:
        return 0.0, 255.0
    if rule == "window":
        return image.window.low, image.window.high
    valid = pixels if image.padding_mask is None else pixels[~image.padding_mask]
    if valid.size == 0:
        return 0.0, 1.0
    if rule == "minmax":
        return float(valid.min()), float(valid.max())
    # Subsample: the model sees ``samples`` pixels (its input size), so percentiles from that
    # many evenly spread source pixels are as precise as its input can show; sorting all of a
    # 512 x 512 image's pixels took longer than the INT8 model's whole forward pass.
    step = max(1, valid.size // samples)
    lo, hi = _percentiles(valid.reshape(-1)[::step], (0.5, 99.5))
    return float(lo), float(hi)


def _percentiles(sample: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(sample, q)`` (its default linear rule, the same values to the last bit)
    from one partial sort around the order statistics it needs: a third faster than
    np.percentile's general path, which a 7 ms INT8 forward pass notices."""
    n = sample.size
    position = np.asarray(q, dtype=np.float64) / 100.0 * (n - 1)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    ordered = np.partition(sample, np.unique(np.concatenate([below, above])))
    a, b = ordered[below].astype(np.float64), ordered[above].astype(np.float64)
    t = position - below
    # numpy's own lerp, which interpolates from the nearer end so that t = 1 gives b exactly
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def to_unit_range(image: SourceImage, rule: str, samples: int = 1 << 16) -> np.ndarray:
    """Scale the source pixels to 0..1 by the bundle's intensity rule (float32); percentile
    rules look at about ``samples`` pixels."""
    lo, hi = _intensity_range(image, rule, samples)
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    out = (image.pixels.astype(np.float32) - np.float32(lo)) * np.float32(scale)
    if image.padding_mask is not None:
        out[image.padding_mask] = 0.0
    return np.clip(out, 0.0, 1.0, out=out)


def prepare_input(image: SourceImage, spec: InputSpec) -> ModelInput:
    unit = to_unit_range(image, spec.intensity, spec.size[0] * spec.size[1])
    if spec.channels == 1 and unit.ndim == 3:
        unit = unit @ _LUMA
    geometry, scaled, (top, left) = plan_geometry(image.shape, spec)
    interpolation = cv2.INTER_AREA if scaled[0] < image.shape[0] else cv2.INTER_LINEAR
    resized = cv2.resize(unit, (scaled[1], scaled[0]), interpolation=interpolation)
    seen = _place(resized, spec.size, top, left, fill=0.0)
    chw = seen[None] if seen.ndim == 2 else seen.transpose(2, 0, 1)
    if spec.channels == 3 and chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    tensor = ((chw - mean) / std)[None].astype(np.float32, copy=False)
    return ModelInput(np.ascontiguousarray(tensor), seen, geometry)


def grid_to_source_affine(geometry: Geometry, grid_shape: tuple[int, int], alignment: str = "resize") -> np.ndarray:
    """Affine from source (x, y) to a coarse grid over the input (a CAM's feature map).

    ``alignment`` says where feature cell i sits on the input (see bundle.MAP_ALIGNMENTS):
    "stride" centres it on input pixel i*s, "resize" on (i + 0.5)*s - 0.5.
    """
    h, w = geometry.input_shape
    gh, gw = grid_shape
    if alignment == "stride":
        to_grid = np.array([[gw / w, 0.0, 0.0], [0.0, gh / h, 0.0]])
    else:
        to_grid = _scale_affine((h, w), (gh, gw), (0.0, 0.0))
    return (_homogeneous(to_grid) @ _homogeneous(geometry.to_input))[:2]


def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def _continue_past_last_cell(maps: np.ndarray) -> np.ndarray:
    """One more row and column, continuing each map's slope (clipped to its own range).

    With "stride" alignment the last cell centre lies up to a stride inside the right and bottom
    edges; holding the map constant beyond it drew straight-edged bands along those edges once
    thresholded. Cells over the image keep their positions (the extra ones come after them)."""
    out = np.pad(maps.astype(np.float32, copy=False), ((0, 0), (0, 1), (0, 1)), mode="edge")
    top = maps.reshape(maps.shape[0], -1).max(axis=1)[:, None]
    if maps.shape[1] > 1:
        out[:, -1, :-1] = np.clip(2 * maps[:, -1, :] - maps[:, -2, :], 0.0, top)
    if maps.shape[2] > 1:
        out[:, :, -1] = np.clip(2 * out[:, :, -2] - out[:, :, -3], 0.0, top)
    return out


def map_to_source(maps: np.ndarray, geometry: Geometry, alignment: str = "resize", step: int = 1) -> np.ndarray:
    """Warp maps (N, gh, gw) on the model's grid back onto the source image: (N, H, W).

    ``step`` > 1 samples every step-th source pixel instead ((N, ceil(H/step), ceil(W/step)), the
    same pixels as ``full[:, ::step, ::step]``), for thumbnails. Parts of the source the model
    never saw (cropped away) get 0.
    """
    H, W = geometry.source_shape
    rows, cols = np.arange(0, H, step), np.arange(0, W, step)
    affine = grid_to_source_affine(geometry, maps.shape[1:], alignment)
    if alignment == "stride":
        maps = _continue_past_last_cell(maps)
    affine = affine @ np.diag([float(step), float(step), 1.0])
    out = np.empty((maps.shape[0], rows.size, cols.size), dtype=np.float32)
    for i, grid in enumerate(maps.astype(np.float32, copy=False)):
        # WARP_INVERSE_MAP: the affine maps each destination (source-image) pixel into the grid.
        out[i] = cv2.warpAffine(
            grid, affine, (cols.size, rows.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    # Replicating the border is right at the grid's half-pixel rim, but source pixels that were
    # cropped away (center_crop) carry no evidence at all.
    (ax, _, bx), (_, ay, by) = geometry.to_input
    h, w = geometry.input_shape
    x_in = ax * cols + bx
    y_in = ay * rows + by
    out[:, (y_in < -0.5) | (y_in > h - 0.5), :] = 0.0
    out[:, :, (x_in < -0.5) | (x_in > w - 0.5)] = 0.0
    return out
