"""DICOM decoding details behind :func:`engine.images.load_image`.

The header is read first (``stop_before_pixels``) and checked against the file and a memory
cap, and a compressed frame's own declared size against the header (:mod:`engine.dicom_codestream`);
only then is the one requested frame decoded, straight from the open file, by pydicom's pixel
decoders (pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000 and RLE). Whatever a damaged file makes
them raise, a Rust decoder's panic included, becomes an ImageLoadError naming it. What the decoded values
mean for display (modality LUT, MONOCHROME1, padding, the file's window, colour) is
:mod:`engine.dicom_pixels`; the header's metadata and tag rows are :mod:`engine.dicom_header`.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from engine.errors import ImageLoadError, ImageTooLargeError, NotAnImageError
from engine.dicom_codestream import MAX_J2K_TILES, declared_size, is_checked
from engine.dicom_header import (
    PIXEL_TAGS,
    UNDEFINED_LENGTH,
    PixelElement,
    describe_non_image,
    not_a_picture,
    int_attr,
    number_of_frames,
    short_cause,
)
from engine.dicom_pixels import to_source_image
from engine.source_image import SourceImage

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1 << 30  # the decoded frame, as float32 (or uint8 RGB)
MAX_DECLARED_BYTES = 1 << 31  # all frames as the header declares them, stored size

_DEFER_BYTES = 16 << 20  # header values this big (private blobs) are only read if used

class DecoderUnavailableError(ImageLoadError):
    """The pixel data is compressed in a way no installed decoder reads: installing one may help,
    so a batch tries the file again next time even if it has not changed."""


# First (group) values of a DICOM data set written without preamble or file meta.
_RAW_DATASET_GROUPS = {0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def looks_like_dicom(head: bytes) -> bool:
    """True when the first bytes are a DICOM preamble or a bare little/big endian data set."""
    if head[128:132] == b"DICM" or head[:4] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    return group_le in _RAW_DATASET_GROUPS or group_be in _RAW_DATASET_GROUPS


def load_dicom(path: Path, frame: int, with_tags: bool = True) -> SourceImage:
    """Decode one frame of a DICOM file; see :func:`engine.images.load_image`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with open(path, "rb") as f:
                return _load_open_file(path, f, frame, with_tags)
        finally:
            for w in caught:  # pydicom's tolerance notes: useful in the log, noise in the UI
                log.debug("%s: %s", path.name, w.message)


def read_header(f: BinaryIO, path: Path) -> Dataset:
    """The data set up to its pixel data, with a transfer syntax always set in file_meta."""
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=_DEFER_BYTES)
    except InvalidDicomError:
        f.seek(0)
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True, defer_size=_DEFER_BYTES)
        if not _has_known_elements(ds):
            raise ImageLoadError("not an image file Lantern knows (DICOM, PNG, JPEG or TIFF)", path) from None
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        # No file meta: the encoding pydicom detected tells the syntax (implicit LE is usual).
        implicit, little = ds.original_encoding
        if implicit or implicit is None:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def _has_known_elements(ds: Dataset) -> bool:
    """A forced read of random bytes yields junk tags; a real data set has standard ones."""
    try:
        return any(tag in pydicom.datadict.DicomDictionary and 0x0008 <= tag.group <= 0x0028 for tag in ds.keys())
    except Exception:  # junk bytes can fail while being parsed lazily too
        return False


def _load_open_file(path: Path, f: BinaryIO, frame: int, with_tags: bool) -> SourceImage:
    file_size = os.fstat(f.fileno()).st_size
    try:
        ds = read_header(f, path)
        header_end = f.tell()
    except (EOFError, struct.error) as exc:
        raise ImageLoadError("the file ends in the middle of its header (truncated?)", path) from exc
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"the DICOM header could not be read: {short_cause(exc)}", path) from exc

    try:  # the header's values are parsed on first use: a damaged one fails here
        refused = not_a_picture(ds)
        tsyntax = UID(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:
        raise ImageLoadError(f"the DICOM header is damaged: {short_cause(exc)}", path) from exc
    if refused:
        raise NotAnImageError(refused, path)
    if tsyntax == DeflatedExplicitVRLittleEndian:
        # The data set is zlib-compressed: offsets in the file mean nothing, read it whole,
        # but only once the header's declared size is known to be acceptable.
        _check_sizes(path, ds, PixelElement("PixelData", None, 0, None), file_size=None)
        full = _read_whole(path, f)
        element = _element_in_dataset(full)
        if element is None:
            raise _no_pixel_data(path, ds)
        _check_sizes(path, ds, element, file_size=None)
        n_frames = number_of_frames(ds)
        _check_frame(path, frame, n_frames)
        arr, photometric = _decode(path, full, tsyntax, frame, element, ds)
    else:
        element = _locate_pixel_element(f, ds, header_end)
        if element is None:
            raise _no_pixel_data(path, ds)
        _check_sizes(path, ds, element, file_size=file_size)
        n_frames = number_of_frames(ds)
        _check_frame(path, frame, n_frames)
        f.seek(element.value_offset)
        arr, photometric = _decode(path, f, tsyntax, frame, element, ds)

    return to_source_image(path, ds, arr, photometric, frame, element, tsyntax, with_tags)


def _no_pixel_data(path: Path, ds: Dataset) -> ImageLoadError:
    """A header with image rows but no pixels is a damaged image (most often a copy cut short),
    not a file of another kind: a batch lists it as failed, and tries it again once it changes."""
    if "Rows" in ds:
        return ImageLoadError("its header describes an image but the file holds no pixel data "
                              "(cut short, or stripped?)", path)
    return NotAnImageError(describe_non_image(ds), path)


def _read_whole(path: Path, f: BinaryIO) -> Dataset:
    f.seek(0)
    try:
        return pydicom.dcmread(f, force=True)
    except Exception as exc:
        raise ImageLoadError(f"the compressed (deflated) data set could not be read: {exc}", path) from exc


def _element_in_dataset(ds: Dataset) -> PixelElement | None:
    for tag, keyword in PIXEL_TAGS.items():
        if tag in ds:
            elem = ds[tag]
            length = None if elem.is_undefined_length else len(elem.value or b"")
            return PixelElement(keyword, elem.VR, 0, length)
    return None


def _locate_pixel_element(f: BinaryIO, ds: Dataset, header_end: int) -> PixelElement | None:
    """Parse the pixel data element header at ``header_end`` (where pydicom stopped).

    The encoding pydicom actually found wins over the declared syntax: some files say explicit
    VR but are written implicit.
    """
    f.seek(header_end)
    head = f.read(8)
    if len(head) < 8:
        return None
    implicit, little = ds.original_encoding
    tsyntax = UID(ds.file_meta.TransferSyntaxUID)
    implicit = tsyntax.is_implicit_VR if implicit is None else implicit
    little = tsyntax.is_little_endian if little is None else little
    endian = "<" if little else ">"
    group, elem = struct.unpack(f"{endian}HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    if not implicit and not head[4:6].isalpha():
        implicit = True  # declared explicit, written implicit: no VR letters after the tag
    if implicit:
        vr = None
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        value_offset = header_end + 8
    else:
        vr = head[4:6].decode("ascii", "replace")
        extra = f.read(4)
        if len(extra) < 4:
            raise EOFError("pixel data element header cut short")
        (length,) = struct.unpack(f"{endian}L", extra)
        value_offset = header_end + 12
    return PixelElement(PIXEL_TAGS[tag], vr, value_offset, None if length == UNDEFINED_LENGTH else length)


def _check_sizes(path: Path, ds: Dataset, element: PixelElement, file_size: int | None) -> None:
    """Refuse, before any allocation, headers that declare more than memory or the file holds."""
    rows, cols = int_attr(ds, "Rows"), int_attr(ds, "Columns")
    bits = int_attr(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        missing = [k for k, v in (("Rows", rows), ("Columns", cols), ("BitsAllocated", bits)) if not v]
        raise ImageLoadError(f"the image header is incomplete (missing {', '.join(missing)})", path)
    samples = int_attr(ds, "SamplesPerPixel", 1) or 1
    frames = number_of_frames(ds)
    pixels = rows * cols * samples
    declared = pixels * frames * bits / 8
    decoded_frame = pixels * 4
    if declared > MAX_DECLARED_BYTES:
        raise ImageTooLargeError(
            f"the header declares {frames} frame(s) of {cols} x {rows} pixels "
            f"({declared / 2**30:.1f} GiB), more than Lantern will read", path)
    if decoded_frame > MAX_FRAME_BYTES:
        raise ImageTooLargeError(
            f"one frame of {cols} x {rows} pixels needs {decoded_frame / 2**30:.1f} GiB "
            "of memory, more than Lantern allows", path)
    if element.length is None:
        return
    if file_size is not None and element.value_offset + element.length > file_size:
        raise ImageLoadError("the file ends before its pixel data does (truncated?)", path)
    tsyntax = UID(ds.file_meta.TransferSyntaxUID)
    if tsyntax.is_compressed:
        return
    expected = declared
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        expected = expected * 2 / 3
    if bits == 1:
        expected = -(-pixels * frames // 8)
    if int(expected) > element.length:
        raise ImageTooLargeError(
            f"the header declares {frames} frame(s) of {cols} x {rows} pixels "
            f"({int(expected)} bytes) but the file holds only {element.length} bytes of pixel data",
            path)


def _check_frame(path: Path, frame: int, n_frames: int) -> None:
    if not 0 <= frame < n_frames:
        count = "1 frame" if n_frames == 1 else f"{n_frames} frames"
        raise ImageLoadError(f"frame {frame + 1} was asked for but the file holds {count}", path)


def _decode(path: Path, src, tsyntax: UID, frame: int, element: PixelElement, ds: Dataset):
    """The requested frame as decoded by pydicom, and the photometric it ended up in."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise DecoderUnavailableError(
            f"its pixel data is stored as {tsyntax.name}, which Lantern cannot decode", path) from exc
    if not decoder.is_available:
        raise DecoderUnavailableError(f"compressed with {tsyntax.name} but no decoder for it is installed", path)
    try:
        if isinstance(src, Dataset):
            opts = as_pixel_options(src)
        else:
            opts = as_pixel_options(ds, transfer_syntax_uid=tsyntax, pixel_keyword=element.keyword)
            if element.vr:
                opts["pixel_vr"] = element.vr
            if element.length is None and is_checked(tsyntax):
                _check_codestream(path, src, tsyntax, frame, ds, opts)
        arr, props = decoder.as_array(src, index=frame, validate=True, raw=False, **opts)
    except (MemoryError, KeyboardInterrupt, ImageLoadError):
        raise
    except BaseException as exc:
        # pylibjpeg-rle is Rust: a damaged RLE frame makes it panic, which Python sees as a
        # pyo3 PanicException, a BaseException that 'except Exception' lets through.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        if tsyntax.is_compressed:
            reason = f"compressed with {tsyntax.name} but no decoder could read it: {short_cause(exc)}"
        else:
            reason = f"its pixel data could not be decoded: {short_cause(exc)}"
        raise ImageLoadError(reason, path) from exc
    photometric = str(props.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "")).strip()
    return arr, photometric


def _check_codestream(path: Path, f: BinaryIO, tsyntax: UID, frame: int, ds: Dataset, opts: dict) -> None:
    """Refuse a compressed frame that declares more pixels than the header (dicom_codestream.py
    says why: the native decoders would allocate them, and may take the process down doing so)."""
    start = f.tell()
    try:  # the frame exactly as the decoder will take it (pydicom's decoders call get_frame too)
        data = get_frame(f, frame, number_of_frames=opts.get("number_of_frames"),
                         extended_offsets=opts.get("extended_offsets"))
    except Exception as exc:
        raise ImageLoadError(f"its compressed pixel data is damaged: {short_cause(exc)}", path) from exc
    finally:
        f.seek(start)
    declared = declared_size(data, tsyntax)
    if declared is None:
        return
    rows, cols = int_attr(ds, "Rows", 0) or 0, int_attr(ds, "Columns", 0) or 0
    samples = int_attr(ds, "SamplesPerPixel", 1) or 1
    if declared.samples > rows * cols * samples or declared.tiles > MAX_J2K_TILES:
        raise ImageLoadError(
            f"its compressed frame is damaged: it declares {declared.width} x {declared.height} pixels in "
            f"{declared.components} component(s) ({declared.tiles} tile(s)), the DICOM header {cols} x {rows} "
            f"in {samples}", path)
