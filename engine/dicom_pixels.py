"""What decoded DICOM pixels mean: from the array pydicom decoded to a :class:`SourceImage`.

:mod:`engine.dicom` finds, checks and decodes the one requested frame; this module turns it into
values for display. Grayscale goes through the frame's modality LUT (rescale slope/intercept,
per frame in enhanced multi-frame files) into modality units, MONOCHROME1 is inverted, Pixel
Padding is marked, and the file's own window (or VOI LUT, as a linear window) is kept, else one
is taken from percentiles of the non-padding pixels. Colour (RGB, YBR, palette) becomes 8-bit
RGB. Kept apart from decoding so each can be read alone: this part is numbers, not file layout.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

from engine.dicom_header import functional_item, image_metadata, int_attr, tag_rows
from engine.errors import ImageLoadError
from engine.source_image import SourceImage, Window, percentile_window

log = logging.getLogger("engine.dicom")  # one logger for all of DICOM reading (as dicom_header)


_PIXEL_MODULE_KEYWORDS = (
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
)


def _frame_pixel_module(ds: Dataset, frame: int) -> Dataset:
    """A small data set with the pixel module and the frame's own rescale values."""
    small = Dataset()
    small.file_meta = ds.file_meta
    small.set_original_encoding(*ds.original_encoding)
    for keyword in _PIXEL_MODULE_KEYWORDS:
        if keyword in ds:
            small[keyword] = ds[keyword]
    transform = functional_item(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform and "RescaleIntercept" in transform:
        small.RescaleSlope = transform.RescaleSlope
        small.RescaleIntercept = transform.RescaleIntercept
    return small


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int_attr(ds, "BitsStored") or int_attr(ds, "BitsAllocated") or 16
    if int_attr(ds, "PixelRepresentation", 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def padding_mask(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """True where the stored value is Pixel Padding (Value, or the range up to the Limit)."""
    value = int_attr(ds, "PixelPaddingValue")
    if value is None or raw.dtype.kind not in "iu":
        return None
    limit = int_attr(ds, "PixelPaddingRangeLimit")
    bits = int_attr(ds, "BitsAllocated") or 16
    signed = int_attr(ds, "PixelRepresentation", 0) == 1

    def as_stored(v: int) -> int:  # an SS value read as US (implicit VR) wraps around
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v

    value = as_stored(value)
    if limit is None:
        mask = raw == value
    else:
        lo, hi = sorted((value, as_stored(limit)))
        mask = (raw >= lo) & (raw <= hi)
    return mask if mask.any() else None


def _file_window(ds: Dataset, frame: int) -> Window | None:
    """The first VOI the file declares, in modality units; from a VOI LUT if that is all."""
    voi = functional_item(ds, frame, "FrameVOILUTSequence") or ds
    center, width = voi.get("WindowCenter"), voi.get("WindowWidth")
    if center is not None and width is not None:
        try:
            center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
            width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        except (TypeError, ValueError, IndexError):
            center = width = None
        if center is not None and width is not None and width > 0 and np.isfinite([center, width]).all():
            return Window(center, width)
    if ds.get("VOILUTSequence"):
        return _window_from_voi_lut(ds)
    return None


def _window_from_voi_lut(ds: Dataset) -> Window | None:
    """The input range over which the VOI LUT actually changes, as a linear window."""
    item = ds.VOILUTSequence[0]
    try:
        n_entries, first, _depth = (int(v) for v in item.LUTDescriptor)
        n_entries = n_entries or 1 << 16
        data = item.LUTData
        if isinstance(data, bytes):
            endian = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
            lut = np.frombuffer(data, dtype=f"{endian}u2")[:n_entries]
        else:
            lut = np.asarray(data if isinstance(data, (list, tuple, pydicom.multival.MultiValue)) else [data])
    except (AttributeError, TypeError, ValueError) as exc:
        log.debug("unusable VOI LUT: %s", exc)
        return None
    if lut.size < 2 or lut.min() == lut.max():
        return None
    rising = np.flatnonzero(np.diff(lut.astype(np.int64)) != 0)
    low, high = first + int(rising[0]), first + int(rising[-1]) + 1
    return Window((low + high) / 2, max(high - low, 1))


def _grayscale(raw: np.ndarray, ds: Dataset, frame: int, photometric: str):
    module = _frame_pixel_module(ds, frame)
    mask = padding_mask(raw, ds)
    pixels = np.asarray(apply_modality_lut(raw, module), dtype=np.float32)
    window = _file_window(ds, frame)
    reference = None
    if photometric == "MONOCHROME1":
        # Invert about the range the stored values can span, so modality values keep scale.
        if raw.dtype.kind in "iu":
            lo, hi = _stored_range(ds)
            ends = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), module), dtype=np.float64)
            reference = float(ends.min() + ends.max())
        else:
            reference = float(np.nanmin(pixels) + np.nanmax(pixels))
        pixels = np.float32(reference) - pixels
        if window is not None:
            window = Window(reference - window.center, window.width)
    if window is None:
        window = percentile_window(pixels, mask)
    return pixels, window, mask, reference


def _to_rgb8(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
        arr = convert_color_space(arr, photometric, "RGB")
    if arr.dtype != np.uint8:
        bits = int_attr(ds, "BitsStored") or arr.dtype.itemsize * 8
        shift = max(bits - 8, 0)
        arr = np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _palette_to_rgb8(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(raw, ds)
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    return np.ascontiguousarray(rgb[..., :3])


def to_source_image(path, ds, arr, photometric, frame, element, tsyntax, with_tags=True) -> SourceImage:
    """The decoded frame ``arr`` (in ``photometric``) as the SourceImage the viewer shows: grayscale
    in modality units with the file's window, or 8-bit RGB."""
    mask, inverted_about = None, None
    try:
        if photometric == "PALETTE COLOR":
            pixels, window = _palette_to_rgb8(arr, ds), Window(127.5, 255.0)
        elif arr.ndim == 3:
            pixels, window = _to_rgb8(arr, ds, photometric), Window(127.5, 255.0)
        else:
            pixels, window, mask, inverted_about = _grayscale(arr, ds, frame, photometric)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ImageLoadError(f"the pixel values could not be converted for display: {exc}", path) from exc
    if not np.isfinite(window.center) or not np.isfinite(window.width):
        window = Window(0.0, 1.0)
    return SourceImage(
        path=path,
        pixels=pixels,
        window=window,
        metadata=image_metadata(ds, frame),
        frame=frame,
        tags=tag_rows(ds, element, tsyntax) if with_tags else (),
        padding_mask=mask,
        inverted_about=inverted_about,
    )
