"""What the one image loader (engine.images) returns: a frame's pixels in modality units, its
display window and the metadata a reader wants shown. Plain data, shared by the DICOM and raster
readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window (DICOM VOI): values below center - width/2 show black, above white."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2


@dataclass(frozen=True)
class ImageMetadata:
    """What a reader wants shown in the corners and the study browser. Empty string = absent."""

    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""  # (0018,5101): PA, AP, LL ... (which input of a multi-input model)
    photometric: str = ""
    pixel_spacing: tuple[float, float] | None = None  # (row, column) in mm
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    instance_number: int | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1
    is_dicom: bool = False  # read from a DICOM file (its tags say what it shows)


@dataclass(frozen=True)
class DicomTag:
    """One row of the tag browser."""

    tag: str  # "(0010,0010)"
    keyword: str  # "PatientName" (empty for private tags)
    vr: str
    value: str  # shortened for display; binary values summarised


@dataclass(frozen=True)
class SourceImage:
    """One frame of one file, ready for display and analysis.

    ``pixels`` is float32 (H, W) for grayscale, in modality units (Hounsfield for CT), or uint8
    (H, W, 3) RGB for colour. ``identifying`` fields live in ``metadata`` only, so that a view
    that hides them for teaching has one place to look.
    """

    path: Path
    pixels: np.ndarray
    window: Window
    metadata: ImageMetadata
    frame: int = 0
    tags: tuple[DicomTag, ...] = field(default=(), repr=False)
    padding_mask: np.ndarray | None = field(default=None, repr=False)  # True where Pixel Padding
    # MONOCHROME1: pixels (and window) are ``inverted_about - stored value``, so that bright means
    # dense as in MONOCHROME2; a window in the file's own terms is centred at inverted_about - centre.
    inverted_about: float | None = None

    def header_window(self, center: float, width: float) -> tuple[float, float]:
        """A window on ``pixels`` in the terms of the file's header (its Window Center)."""
        return (self.inverted_about - center, width) if self.inverted_about is not None else (center, width)

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def n_frames(self) -> int:
        return self.metadata.frames


_PERCENTILE_SAMPLES = 1 << 20  # enough for a stable 0.5..99.5 percentile, fast on big images


def percentile_window(pixels: np.ndarray, exclude: np.ndarray | None = None) -> Window:
    """A window over the 0.5..99.5 percentiles of the finite pixels not in ``exclude``."""
    values = pixels[~exclude] if exclude is not None else pixels.ravel()
    values = values[np.isfinite(values)]
    if values.size > _PERCENTILE_SAMPLES:
        values = values[:: values.size // _PERCENTILE_SAMPLES + 1]
    if values.size == 0:
        return Window(0.0, 1.0)
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:  # flat image: any window shows it, keep the value mid-grey
        return Window(low, 1.0)
    return Window((low + high) / 2, high - low)
