"""One class's explanation map as a DICOM Parametric Map: the numbers, not a picture.

The map is the class map warped onto the source image (``ClassMaps.source_map``, the same warp
the viewer and the PNG export draw), stored as 32-bit floats at the source's rows and columns, in
the method's own units (units of the class logit: comparable across images and classes of one
model). The quantity is DICOM's own concept for it, (130402, DCM, "Class activation"), with an
identity real-world value mapping; the display window runs from 0 to the class's peak over the
image, which is how Lantern scales the map on screen.

One object per class, each in a series of its own, because that is what viewers can toggle:
OHIF's parametric-map support makes one overlay per series from the series' first instance and
lays each frame on the slice its reference points at, so several classes as frames of one object
(all on the same source image) would land on top of each other. Weasis and PACS list each class
as its own series, named by its Series Description (class, method and the notice).

The frame references its source (Derivation Image and Source Image Sequences, Referenced Series
Sequence). The Parametric Map IOD requires a frame of reference and a plane position and
orientation for every frame. A cross-sectional source (CT, MR) has them and they are copied. A
projection radiograph or a PNG has none: the map gets a frame of reference of its own (so it
claims no registration with anything else), its plane at the origin, oriented from the source's
Patient Orientation where it has one (rows towards L, columns towards F: a coronal plane), pixel
spacing from the source (else a nominal 1 mm) and a nominal 1 mm slice thickness. Only the
pixel grid, which is the source's own, carries meaning there. A PNG source has no DICOM image
to point at: its maps reference nothing and open the export's new study.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from engine.analysis import Analysis
from engine.cam import method_label
from engine.exports.pictures import NOT_FOR_DIAGNOSIS
from engine.version import lantern_version

SOFTWARE = f"Lantern {lantern_version()}"
CONTENT_LABEL = "AI_EXPLANATION"  # CS, at most 16 characters: the notice itself is the description
# Patient Orientation letters as directions in the patient coordinate system (x: left, y: posterior,
# z: head), for the plane of a source that has no Image Orientation (Patient).
DIRECTIONS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
GEOMETRY = ("FrameOfReferenceUID", "PositionReferenceIndicator", "ImagePositionPatient", "ImageOrientationPatient",
            "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "NumberOfFrames", "SOPClassUID")


def series_description(analysis: Analysis, method: str, class_index: int) -> str:
    """What a viewer's series list shows: the class and method, then the notice, in 64 characters
    (the class name is shortened, never the notice)."""
    tail = f" {method_label(method)}: {NOT_FOR_DIAGNOSIS}"
    return analysis.classes[class_index][: max(0, 64 - len(tail))] + tail


def parametric_map(source: Dataset, analysis: Analysis, method: str, class_index: int, *, series_uid: str,
                   series_number: int, instance_number: int = 1, frame: int | None = None,
                   references_source: bool = True) -> Dataset:
    """The Parametric Map of class ``class_index``.

    ``source`` is the header the map derives from (engine.exports.dicom_objects builds it: the
    source's checked attributes, or a stand-in for a PNG). ``frame`` is the 0-based frame of a
    multi-frame source, so its references name that frame; ``references_source=False`` (a PNG)
    removes every reference to the stand-in."""
    maps = analysis.maps[method]
    values = np.ascontiguousarray(maps.source_map(class_index), dtype=np.float32)
    top = float(values.max())
    peak = maps.image_peak(class_index)  # what Lantern's display calls 1: the window's top
    peak = peak if peak > 0 else max(top, 1.0)
    label = method_label(method)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CLASS_ACTIVATION",
        lut_explanation=f"{label} for '{analysis.classes[class_index]}', in units of the class logit"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, max(top, peak)),  # maps are non-negative (ReLU)
        quantity_definition=codes.DCM.ClassActivation,
    )
    # LINEAR_EXACT: the window is below 1 wide (maps are small numbers), which plain LINEAR forbids.
    window = hd.VOILUTTransformation(window_center=peak / 2, window_width=peak, voi_lut_function="LINEAR_EXACT",
                                     window_explanation=f"0 to the class's peak ({label})"[:64])
    pm = hd.pm.ParametricMap(
        [builder_view(source, frame)], values, series_uid, series_number, hd.UID(), instance_number,
        manufacturer="Lantern",
        manufacturer_model_name=f"{analysis.model_name} {analysis.model_version}"[:64],
        software_versions=SOFTWARE,
        device_serial_number=f"{analysis.engine} engine",  # Type 1; software has no serial number
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label=CONTENT_LABEL,
        content_description=NOT_FOR_DIAGNOSIS,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        derivation=codes.DCM.GradientWeightedClassActivation,  # all three methods weight by gradients
        series_description=series_description(analysis, method, class_index),
        specific_character_set="ISO_IR 192",
    )
    _copy_anatomy(source, pm)
    if not references_source:
        _drop_source_references(pm)
    elif frame is not None:
        _name_frame(pm, frame + 1, source.SOPClassUID)
    return pm


def builder_view(source: Dataset, frame: int | None) -> Dataset:
    """The source as highdicom must see it to build a valid map: with patient coordinates (the
    source's own, or the nominal ones the module doc describes) and, for one frame of a
    multi-frame file, as a single-frame image (highdicom reads a multi-frame source's geometry from
    functional groups that older multi-frame classes do not have; _name_frame sets the references
    right afterwards). The source itself is left as it is."""
    view = Dataset()
    for element in source:
        if element.keyword not in GEOMETRY:
            view.add(element)
    view.SOPClassUID = source.SOPClassUID if frame is None else SecondaryCaptureImageStorage
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    if all(k in source for k in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")):
        for keyword in GEOMETRY[:4] + ("SpacingBetweenSlices",):
            if keyword in source:
                view.add(source.data_element(keyword))
        view.PixelSpacing = spacing
        view.SliceThickness = source.get("SliceThickness") or 1.0
        return view
    # One frame of reference per source image, the same for all its classes' maps.
    view.FrameOfReferenceUID = generate_uid(entropy_srcs=["lantern-plane", str(source.SOPInstanceUID)])
    view.PositionReferenceIndicator = ""
    view.ImagePositionPatient = [0.0, 0.0, 0.0]
    view.ImageOrientationPatient = orientation(source.get("PatientOrientation"))
    view.PixelSpacing = spacing
    view.SliceThickness = 1.0
    return view


def orientation(patient_orientation) -> list[float]:
    """Image Orientation (Patient) from Patient Orientation (row, column directions as letters,
    e.g. L\\F), or rows towards the patient's left and columns towards the back when it is absent
    or not two perpendicular directions."""
    try:
        row, column = (np.sum([DIRECTIONS[c] for c in str(v).upper()], axis=0) for v in patient_orientation)
        row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
        if abs(float(np.dot(row, column))) < 1e-6:
            return [float(v) for v in (*row, *column)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _copy_anatomy(source: Dataset, pm: Dataset) -> None:
    """Body part and laterality, as the Secondary Capture carries them: Laterality is Type 2C
    (a paired body part), so it stays empty when no body part is named and absent for a named
    unpaired one (CHEST)."""
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in source:
            setattr(pm, keyword, source.data_element(keyword).value)
    if "Laterality" not in pm and "BodyPartExamined" not in pm:
        pm.Laterality = ""


def _name_frame(pm: Dataset, number: int, sop_class: str) -> None:
    """The builder saw the analysed frame as a single-frame image; the references must name the
    source's own class and, where the IOD has room for it (the derivation), the frame."""
    for series in pm.get("ReferencedSeriesSequence", []):
        for item in series.ReferencedInstanceSequence:
            item.ReferencedSOPClassUID = sop_class
    for item in pm.get("SourceImageSequence", []):
        item.ReferencedSOPClassUID = sop_class
    for group in pm.PerFrameFunctionalGroupsSequence:
        for derivation in group.get("DerivationImageSequence", []):
            for item in derivation.SourceImageSequence:
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedFrameNumber = number


def _drop_source_references(pm: Dataset) -> None:
    """A PNG source is no DICOM instance: nothing may point at the stand-in used to build the map
    (the Derivation Image macro is required only for an image derived from a SOP instance)."""
    for keyword in ("SourceImageSequence", "ReferencedSeriesSequence"):
        if keyword in pm:
            delattr(pm, keyword)
    for group in pm.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in group:
            del group.DerivationImageSequence


__all__ = ["parametric_map", "series_description", "builder_view", "orientation", "CONTENT_LABEL"]
