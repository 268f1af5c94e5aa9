"""The explanation as DICOM: an RGB Secondary Capture any PACS or viewer opens (Weasis, OHIF).

The picture is the class map burned into the windowed source image (same rows and columns, so
PixelSpacing still holds), with the method, class and "not for primary diagnosis" burned in too
for viewers that show no descriptions. It joins its source's study (same StudyInstanceUID) as a
new series, and points back at the source image (SourceImageSequence, ReferencedImageSequence).
Model name and version, engine, method and the notice are in SeriesDescription, ImageComments
and DerivationDescription. A PNG source has no study: the export starts a new one.

Plain pydicom: a Secondary Capture needs nothing more. highdicom builds the Parametric Maps and
the structured report beside it (engine.exports.dicom_objects), but its SCImage is not used here:
it would change nothing a viewer shows, its from_ref_dataset copies the source's acquisition
equipment (institution, station) into the export, and this object copies a checked list of
attributes and already passes dciodvfy and its tests.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from engine.analysis import Analysis
from engine.exports.anonymize import Pseudonymizer, anonymize_dataset
from engine.errors import LanternError
from engine.files import unused_path, write_bytes_atomic
from engine.images import SourceImage
from engine.exports.pictures import NOT_FOR_DIAGNOSIS, caption, chosen_map, explanation_rgb
from engine.version import lantern_version
from engine.cam import method_label

SOFTWARE = f"Lantern {lantern_version()}"
SERIES_NUMBER = 9001  # high, so that the explanation series sorts after the acquired ones
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
          "PatientOrientation", "PixelSpacing", "Laterality", "BodyPartExamined")
LANTERN_TEXT = ("SeriesDescription", "ImageComments", "DerivationDescription")


def valid_copy(element) -> bool:
    """Whether a source value may go into the export as it is: values that are invalid in the
    source (Pixel Spacing 0\\0, a date of four digits, a laterality other than R or L) would make
    the export invalid too, so they are dropped (a Type 2 attribute then stays, empty)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            # Numbers read from a file (DSfloat, IS) are checked as the text they were written as.
            validate_value(element.VR, str(value) if element.VR in ("DS", "IS") else value, config.RAISE)
    except (ValueError, TypeError):
        return False
    if element.keyword == "PixelSpacing":
        return len(values) == 2 and all(float(v) > 0 for v in values)
    if element.keyword == "Laterality":
        return element.value in ("R", "L")
    if element.keyword == "PatientSex":  # enumerated values (empty is Type 2's "unknown")
        return element.value in ("M", "F", "O", "")
    return True


def source_header(image: SourceImage) -> Dataset | None:
    """The source's DICOM header (no pixels), or None for a PNG/JPEG/TIFF source."""
    if not image.metadata.sop_instance_uid:
        return None
    try:
        return pydicom.dcmread(image.path, stop_before_pixels=True, force=True)
    except Exception as exc:  # it was read a moment ago; a failure now is a changed or vanished file
        raise LanternError(f"the source file could not be read again for the export: {exc}", image.path) from exc


def description(analysis: Analysis, method: str, class_index: int) -> str:
    check = analysis.input_check
    if check.outside:
        checked = f" OUTSIDE WHAT THE MODEL WAS MADE FOR: {'; '.join(check.reasons)}."
    elif check.score is not None:
        checked = f" Out-of-distribution score {check.score:.1f} (threshold {check.threshold:.1f}): within."
    else:
        checked = " No out-of-distribution check for this model."
    text = (f"{NOT_FOR_DIAGNOSIS}. {method_label(method)} map for class '{analysis.classes[class_index]}' "
            f"(probability {analysis.probabilities[class_index]:.3f}) from model {analysis.model_name} "
            f"{analysis.model_version} ({analysis.engine} engine), made by {SOFTWARE}.{checked}")
    return text[:1024]  # DerivationDescription is ST: at most 1024 characters


def explanation_dataset(image: SourceImage, analysis: Analysis, method: str | None = None,
                        class_index: int | None = None, *, series_uid: str | None = None,
                        instance_number: int = 1, pseudonyms: Pseudonymizer | None = None,
                        study_uid: str | None = None) -> Dataset:
    """The RGB Secondary Capture. ``study_uid``: the study a PNG source's export opens, when the
    caller writes other objects into the same new study (a DICOM source keeps its own)."""
    method, class_index, _ = chosen_map(analysis, method, class_index)
    rgb = explanation_rgb(image, analysis, method, class_index)
    lines = [f"{method_label(method)}: {analysis.classes[class_index]}", NOT_FOR_DIAGNOSIS]
    if analysis.input_check.outside:
        lines.append("OUTSIDE WHAT THE MODEL WAS MADE FOR")
    rgb = caption(rgb, lines)
    header = source_header(image)
    now = datetime.now()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    for keyword in COPIED:
        if header is not None and keyword in header and valid_copy(header.data_element(keyword)):
            setattr(ds, keyword, header.data_element(keyword).value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PatientOrientation"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2: present, maybe empty
    if "Laterality" not in ds and "BodyPartExamined" not in ds:
        # Type 2C, required for a paired body part: with no body part named, whether it is one is
        # unknown, so present and empty; for a named unpaired one (CHEST) it must stay absent.
        ds.Laterality = ""
    if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
        ds.StudyInstanceUID = study_uid or generate_uid()  # a PNG source: the export opens a study of its own
    ds.Modality = str(header.get("Modality", "") or "OT") if header is not None else "OT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = f"{NOT_FOR_DIAGNOSIS}: {method_label(method)}"[:64]
    ds.ImageComments = description(analysis, method, class_index)
    ds.DerivationDescription = ds.ImageComments
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.ConversionType = "WSD"
    ds.Manufacturer = "Lantern"
    ds.SoftwareVersions = SOFTWARE
    ds.SecondaryCaptureDeviceManufacturer = "Lantern"
    ds.SecondaryCaptureDeviceManufacturerModelName = f"{analysis.model_name} {analysis.model_version}"[:64]
    ds.SecondaryCaptureDeviceSoftwareVersions = SOFTWARE
    ds.BurnedInAnnotation = "NO"  # the burned-in text names the method and class, never the patient
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    if header is not None and "SOPInstanceUID" in header:
        ds.SourceImageSequence = Sequence([_reference(header, analysis.frame)])
        ds.ReferencedImageSequence = Sequence([_reference(header, analysis.frame)])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if pseudonyms is not None:
        anonymize_dataset(ds, pseudonyms, keep=LANTERN_TEXT)
    return ds


def _reference(header: Dataset, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.get("SOPClassUID", "")
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = frame + 1
    return item


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def export_dicom(path: str | Path, image: SourceImage, analysis: Analysis, method: str | None = None,
                 class_index: int | None = None, **options) -> Path:
    """Write the explanation as a new file: ``path``, or a fresh name beside it if taken."""
    target = unused_path(path)
    if target.resolve() == Path(image.path).resolve():
        raise LanternError("refusing to write over the source image", target)
    ds = explanation_dataset(image, analysis, method, class_index, **options)
    return write_bytes_atomic(target, dataset_bytes(ds))


__all__ = ["explanation_dataset", "export_dicom", "dataset_bytes", "source_header", "valid_copy"]
