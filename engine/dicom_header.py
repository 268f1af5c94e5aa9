"""What a DICOM header says, apart from its pixels: the metadata a reader wants shown, every
element as a row for the tag browser, and plain words for files that hold no image.

Shared with :mod:`engine.dicom` and :mod:`engine.dicom_pixels` (which decode the pixels): where
the pixel data element sits, frame counts and per-frame functional groups.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from engine.source_image import DicomTag, ImageMetadata

log = logging.getLogger("engine.dicom")

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
UNDEFINED_LENGTH = 0xFFFFFFFF
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_MAX_VALUE_CHARS = 120
_MAX_TAG_ROWS = 5000  # enhanced multi-frame headers can hold millions of elements


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element's value starts in the file, and its declared length."""

    keyword: str
    vr: str | None
    value_offset: int
    length: int | None  # None = undefined length (encapsulated)


_PARSE_CONTEXT = re.compile(r"while trying to parse (\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)) according to VR '(\w+)'")
_MAX_NOTE_CHARS = 200


def short_cause(exc: BaseException) -> str:
    """What went wrong, short enough for a reason: pydicom's and the decoders' messages run to
    several lines of advice on settings; a value that does not fit its VR gets plain words."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    match = _PARSE_CONTEXT.search(text)
    if match:
        return f"element {match[1]} does not hold a valid {match[2]} value"
    return text if len(text) <= _MAX_NOTE_CHARS else text[: _MAX_NOTE_CHARS - 1] + "…"


def number_of_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute, or ``default`` when it is absent, empty or unreadable."""
    try:
        value = ds.get(keyword, None)
        return default if value is None or value == "" else int(value)
    except Exception as exc:  # a malformed value must not cost the whole image (or the folder scan)
        log.debug("unreadable %s: %s", keyword, exc)
        return default


def text_attr(ds: Dataset, keyword: str) -> str:
    """An attribute as stripped text, "" when it is absent, empty or unreadable."""
    try:
        value = ds.get(keyword, "")
    except Exception as exc:  # a malformed value must not cost the whole image (or the folder scan)
        log.debug("unreadable %s: %s", keyword, exc)
        return ""
    return "" if value is None else str(value).strip()


def functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The per-frame (else shared) functional group item of an enhanced multi-frame image."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner:
                return inner[0]
    return None


# --- metadata --------------------------------------------------------------------------------


def _spacing(ds: Dataset, frame: int) -> tuple[float, float] | None:
    measures = functional_item(ds, frame, "PixelMeasuresSequence")
    for source, keyword in ((ds, "PixelSpacing"), (measures, "PixelSpacing"), (ds, "ImagerPixelSpacing")):
        if source is None:
            continue
        value = source.get(keyword)
        try:
            if value is not None and len(value) == 2:
                row, col = float(value[0]), float(value[1])
                if row > 0 and col > 0:
                    return row, col
        except (TypeError, ValueError):
            continue
    return None


def image_metadata(ds: Dataset, frame: int = 0) -> ImageMetadata:
    return ImageMetadata(
        patient_name=text_attr(ds, "PatientName"),
        patient_id=text_attr(ds, "PatientID"),
        study_date=text_attr(ds, "StudyDate"),
        study_description=text_attr(ds, "StudyDescription"),
        series_description=text_attr(ds, "SeriesDescription"),
        modality=text_attr(ds, "Modality"),
        body_part=text_attr(ds, "BodyPartExamined"),
        view_position=text_attr(ds, "ViewPosition").strip().upper(),
        photometric=text_attr(ds, "PhotometricInterpretation"),
        pixel_spacing=_spacing(ds, frame),
        study_uid=text_attr(ds, "StudyInstanceUID"),
        series_uid=text_attr(ds, "SeriesInstanceUID"),
        sop_instance_uid=text_attr(ds, "SOPInstanceUID"),
        instance_number=int_attr(ds, "InstanceNumber"),
        rows=int_attr(ds, "Rows", 0) or 0,
        columns=int_attr(ds, "Columns", 0) or 0,
        frames=number_of_frames(ds),
        is_dicom=True,
    )


def _shorten(text: str) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _value_text(elem) -> str:
    if elem.VR in _BINARY_VRS or isinstance(elem.value, (bytes, bytearray)):
        size = elem.length if elem.length != UNDEFINED_LENGTH else len(elem.value or b"")
        return f"<{size} bytes of binary data>"
    value = elem.value
    if isinstance(value, pydicom.multival.MultiValue):
        return _shorten("\\".join(str(v) for v in value))
    return _shorten("" if value is None else str(value))


def _tag_text(tag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def tag_rows(ds: Dataset, element: PixelElement | None = None, tsyntax: UID | None = None) -> tuple[DicomTag, ...]:
    """Every element as one row, sequence items indented with "> " per level; no pixel bytes."""
    rows: list[DicomTag] = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _append_rows(rows, meta, depth=0)
    _append_rows(rows, ds, depth=0)
    if element is not None:
        length = "undefined length" if element.length is None else f"{element.length} bytes"
        how = f", {tsyntax.name}" if tsyntax is not None else ""
        tag = next(t for t, k in PIXEL_TAGS.items() if k == element.keyword)
        rows.append(DicomTag(f"({tag >> 16:04X},{tag & 0xFFFF:04X})", element.keyword, element.vr or "",
                             f"<pixel data: {length}{how}>"))
    return tuple(rows)


def _append_rows(rows: list[DicomTag], ds: Dataset, depth: int) -> None:
    prefix = "> " * depth
    for tag in ds.keys():
        if len(rows) >= _MAX_TAG_ROWS:
            if not rows[-1].value.startswith("<list shortened"):
                rows.append(DicomTag("", "", "", f"<list shortened to {_MAX_TAG_ROWS} rows>"))
            return
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, UNDEFINED_LENGTH):
            # A deferred (very large) value: summarise it without reading it.
            vr = str(raw.VR or "")
            keyword = "" if tag.is_private else pydicom.datadict.keyword_for_tag(tag)
            rows.append(DicomTag(prefix + _tag_text(tag), keyword, vr, f"<{raw.length} bytes, not read>"))
            continue
        try:
            elem = ds[tag]
        except Exception as exc:  # unreadable value: show why instead of hiding the row
            rows.append(DicomTag(prefix + _tag_text(tag), "", "", f"<unreadable: {exc}>"))
            continue
        keyword = "" if elem.tag.is_private else elem.keyword
        if elem.VR == "SQ":
            items = elem.value or []
            rows.append(DicomTag(prefix + _tag_text(elem.tag), keyword, "SQ", f"{len(items)} item(s)"))
            for number, item in enumerate(items, start=1):
                rows.append(DicomTag(prefix + "> (FFFE,E000)", "Item", "", f"#{number}"))
                _append_rows(rows, item, depth + 1)
            continue
        try:
            value = _value_text(elem)
        except Exception as exc:
            value = f"<unreadable: {exc}>"
        rows.append(DicomTag(prefix + _tag_text(elem.tag), keyword, str(elem.VR), value))


# --- what a file without pixels holds --------------------------------------------------------

_KIND_BY_WORD = (
    ("Media Storage Directory", "a DICOMDIR (the index of a DICOM folder): open the folder instead"),
    ("SR Storage", "a structured report"),
    ("Waveform", "a waveform (ECG or other signal)"),
    ("ECG", "a waveform (ECG)"),
    ("RT Plan", "an RT Plan (radiotherapy plan)"),
    ("RT Ion Plan", "an RT Ion Plan (radiotherapy plan)"),
    ("Color Palette", "a colour palette (a lookup table for other images)"),
    ("RT Structure Set", "an RT Structure Set (contours)"),
    ("RT Dose", "an RT Dose without dose grid"),
    ("Presentation State", "a presentation state (display settings for other images)"),
    ("Encapsulated PDF", "a PDF document"),
    ("Key Object Selection", "a key object selection (a list of flagged images)"),
    ("Raw Data", "raw acquisition data"),
    ("Spectroscopy", "spectroscopy data"),
    ("Segmentation", "a segmentation without pixel data"),
)


# Objects that may carry pixel data but are not pictures a classifier should read: labels drawn
# on other images, dose grids, documents and references. By Modality (0008,0060), as their SOP
# Classes are many and growing.
_NOT_PICTURES = {
    "SEG": "a segmentation (SEG: labels drawn on other images)",
    "RTDOSE": "an RT Dose grid (radiotherapy dose)",
    "RTSTRUCT": "an RT Structure Set (contours)",
    "RTPLAN": "an RT Plan (radiotherapy plan)",
    "RTRECORD": "an RT treatment record",
    "SR": "a structured report",
    "PR": "a presentation state (display settings for other images)",
    "KO": "a key object selection (a list of flagged images)",
    "REG": "a registration (how other images line up)",
    "DOC": "a document",
}


def not_a_picture(ds: Dataset) -> str | None:
    """Plain words when a DICOM object, pixels or not, is not a picture to classify (SEG, RT,
    SR, presentation states, KOS); None for anything that may be one."""
    modality = text_attr(ds, "Modality").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    name = UID(sop_class).name if sop_class else ""
    if modality not in _NOT_PICTURES:
        modality = next((m for m, words in (("SEG", "Segmentation Storage"), ("RTDOSE", "RT Dose"),
                                            ("SR", "SR Storage"), ("PR", "Presentation State"))
                         if words in name), modality)
    kind = _NOT_PICTURES.get(modality)
    return f"this DICOM file holds {kind}, not an image to classify" if kind else None


def describe_non_image(ds: Dataset) -> str:
    """Plain words for a DICOM file with no pixel data, from its SOP Class when known."""
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    name = UID(sop_class).name if sop_class else ""
    if "DirectoryRecordSequence" in ds:
        name = name or "Media Storage Directory Storage"
    for word, kind in _KIND_BY_WORD:
        if word in name:
            return f"this DICOM file holds {kind}, not an image"
    if name.endswith("Image Storage"):
        return f"this DICOM file is a {name.removesuffix(' Storage')} without pixel data (stripped?)"
    if name and name != sop_class:
        return f"this DICOM file holds a '{name.removesuffix(' Storage')}' object, not an image"
    return "this DICOM file holds no pixel data (it is not an image)"
