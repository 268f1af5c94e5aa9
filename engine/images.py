"""Images in: the one loader for DICOM, PNG, JPEG and TIFF files.

Everything downstream sees a :class:`SourceImage`: pixels in the file's modality units
(Modality LUT applied, MONOCHROME1 already inverted, colour converted to RGB), the file's own
display window, and the metadata a reader wants shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ImageLoadError
# The loader's result types, re-exported: callers meet them as engine.images.SourceImage.
from engine.source_image import DicomTag, ImageMetadata, SourceImage, Window, percentile_window  # noqa: F401


RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def load_image(path: str | Path, frame: int = 0, *, with_tags: bool = True) -> SourceImage:
    """Open one frame of a DICOM, PNG, JPEG or TIFF file, read-only.

    ``with_tags=False`` leaves out the DICOM tag rows (for the tag browser), which are a third of
    the time it takes to open a small radiograph: a batch never shows them.

    Raises :class:`engine.errors.ImageLoadError` (or a subclass) naming the file when it cannot.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except FileNotFoundError as exc:
        raise ImageLoadError("the file does not exist (moved or deleted?)", path) from exc
    except IsADirectoryError as exc:
        raise ImageLoadError("this is a folder, not an image file", path) from exc
    except PermissionError as exc:
        raise ImageLoadError("permission denied: Lantern may not read this file", path) from exc
    except OSError as exc:
        raise ImageLoadError(f"the file could not be read: {exc.strerror or exc}", path) from exc
    if not head:
        raise ImageLoadError("the file is empty", path)

    from engine import dicom  # lazy: pydicom is only needed for DICOM files

    try:
        # DICOM first: a DICOM preamble may itself hold a TIFF header (dual-format files).
        if dicom.looks_like_dicom(head):
            return dicom.load_dicom(path, frame, with_tags)
        if _raster_kind(head):
            return _load_raster(path, frame)
        if path.suffix.lower() not in RASTER_SUFFIXES:
            return dicom.load_dicom(path, frame, with_tags)  # a bare data set with an odd start; refused if not
    except ImageLoadError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except PermissionError as exc:
        raise ImageLoadError("permission denied: Lantern may not read this file", path) from exc
    except Exception as exc:  # an unforeseen failure still names the file; the cause stays chained
        raise ImageLoadError(f"could not be decoded: {exc}", path) from exc
    raise ImageLoadError(
        "not an image file Lantern knows (DICOM, PNG, JPEG or TIFF)", path)


def _raster_kind(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _load_raster(path: Path, frame: int) -> SourceImage:
    import cv2  # lazy: only raster files need OpenCV

    if frame != 0:
        raise ImageLoadError(f"frame {frame + 1} was asked for but the file holds 1 frame", path)
    encoded = np.fromfile(path, np.uint8)  # np.fromfile + imdecode: safe with non-ASCII paths
    pixels = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageLoadError("the image file is damaged or in a variant OpenCV cannot decode", path)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels[..., :3], cv2.COLOR_BGR2RGB)
        if pixels.dtype != np.uint8:
            top = 65535.0 if pixels.dtype == np.uint16 else max(float(pixels.max()), 1.0)
            pixels = np.clip(pixels.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        window, photometric = Window(127.5, 255.0), "RGB"
    else:
        gray = pixels.astype(np.float32)
        window = Window(127.5, 255.0) if pixels.dtype == np.uint8 else percentile_window(gray)
        pixels, photometric = gray, "MONOCHROME2"
    rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
    return SourceImage(
        path=path,
        pixels=np.ascontiguousarray(pixels),
        window=window,
        metadata=ImageMetadata(photometric=photometric, rows=rows, columns=columns),
    )
