"""The explanation as standard DICOM objects, for viewers and archives that never saw Lantern.

For one analysed image, in the source's study (a PNG source: a new study shared by the three),
each in a new series, each referencing the source image:

    sc   the RGB Secondary Capture with the map burned in (engine.exports.dicom_export): what
         every viewer shows as it is
    pm   one Parametric Map per class (engine.exports.parametric_map): the map's numbers on the
         source grid, which a viewer can overlay, window and toggle
    sr   a Comprehensive 3D SR following TID 1500 (engine.exports.structured_report):
         probabilities, MC-dropout uncertainty, the input check and the model, pointing at the
         source and at the maps

Everything is built before anything is written, then each file is written atomically under a
name the caller chose (never from patient data; a batch passes its pseudonymous label), with a
fresh suffix where a name is taken, so nothing is overwritten, least of all a source. Anonymized
exports go through engine.exports.anonymize together, so that UIDs stay consistent between the
objects (the report's references still find the maps).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from engine.analysis import Analysis
from engine.errors import LanternError
from engine.exports.anonymize import Pseudonymizer, anonymize_dataset
from engine.exports.dicom_export import LANTERN_TEXT, dataset_bytes, explanation_dataset, source_header, valid_copy
from engine.exports.parametric_map import parametric_map
from engine.exports.pictures import chosen_map
from engine.exports.structured_report import structured_report
from engine.files import safe_name, write_bytes_atomic
from engine.images import SourceImage

DICOM_OBJECT_KINDS = ("sc", "pm", "sr")
SR_SERIES_NUMBER = 9002
PM_SERIES_NUMBER = 9010  # + the class index: one series per class, after the SC's 9001
# Attributes the maps and the report take from the source: a checked list (never the whole header,
# which may hold anything identifying) of what identifies the patient, study and image and places
# the image in space.
FROM_SOURCE = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
               "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "Modality", "Rows",
               "Columns", "FrameOfReferenceUID", "PositionReferenceIndicator", "PixelSpacing", "ImagerPixelSpacing",
               "ImagePositionPatient",
               "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices", "PatientOrientation",
               "Laterality", "BodyPartExamined", "LossyImageCompression")
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
# Lantern's own values in the maps and the report that the de-identification lists would remove
# or empty, though they describe the export, never the patient: the moment Lantern made the
# object (Type 1 there) and the maps' Type 1 device "serial number" (the engine's name).
KEEP_MAP = ("ContentDate", "ContentTime", "DeviceSerialNumber")
KEEP_REPORT = ("ContentDate", "ContentTime")


def parse_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    """``"sc,pm,sr"`` (or a sequence of the names) as a tuple in the order written; a plain-words
    error for an unknown name."""
    names = [k.strip().lower() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip()]
    unknown = [k for k in names if k not in DICOM_OBJECT_KINDS]
    if unknown or not names:
        raise LanternError(f"unknown DICOM object kind {', '.join(unknown) or '(none given)'}: choose from "
                           f"{', '.join(DICOM_OBJECT_KINDS)} (sc: secondary capture, pm: parametric maps, "
                           "sr: structured report)")
    return tuple(k for k in DICOM_OBJECT_KINDS if k in names)


def builder_source(header: Dataset | None, image: SourceImage, study_uid: str) -> Dataset:
    """What the builders derive from: the analysed frame of the source as a single-frame header
    with only the attributes in FROM_SOURCE that are valid there, or for a PNG a stand-in that
    only lends the new study (its UIDs are never written)."""
    ds = Dataset()
    if header is None:
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), "OT"
        ds.Rows, ds.Columns = image.shape
    else:
        for keyword in FROM_SOURCE:
            if keyword in header and valid_copy(header.data_element(keyword)):
                setattr(ds, keyword, header.data_element(keyword).value)
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def export_dicom_objects(folder: str | Path, image: SourceImage, analysis: Analysis,
                         kinds: str | Iterable[str] = DICOM_OBJECT_KINDS, method: str | None = None,
                         pseudonyms: Pseudonymizer | None = None, *, class_index: int | None = None,
                         name: str | None = None, series: dict[str, str] | None = None, instance_number: int = 1,
                         model_manufacturer: str | None = None) -> list[Path]:
    """Write the chosen kinds into ``folder``: ``{name}.dcm`` (the SC), ``{name}-pm-{n}-{class}.dcm``
    per class and ``{name}-sr.dcm``, with ``-2``, ``-3``... after ``name`` where any is taken.

    ``method``/``class_index``: the map and the class the SC shows (default: the first method,
    the predicted class); the maps cover every class of ``method``. ``series``: series UIDs by
    kind ("sc", "sr", "pm0", "pm1"...) to reuse (a batch passes one dict per study, so each
    study's exports share series), filled in where missing. ``model_manufacturer`` goes into the
    report's algorithm identification. Returns the paths written, SC first."""
    kinds = parse_kinds(kinds)
    method, class_index, _ = chosen_map(analysis, method, class_index)  # a triage result fails here
    header = source_header(image)
    study_uid = str(header.get("StudyInstanceUID", "") or "") if header is not None else ""
    study_uid = study_uid or generate_uid()
    source = builder_source(header, image, study_uid)
    from_dicom = header is not None
    frame = image.frame if from_dicom and "NumberOfFrames" in header else None  # a multi-frame class
    series = {} if series is None else series
    built: list[tuple[str, Dataset, tuple[str, ...]]] = []  # (file suffix, data set, kept attributes)
    sc = None
    if "sc" in kinds:
        sc = explanation_dataset(image, analysis, method, class_index, instance_number=instance_number,
                                 series_uid=series.setdefault("sc", generate_uid()), study_uid=study_uid)
        built.append((".dcm", sc, LANTERN_TEXT))
    maps = {}
    if "pm" in kinds:
        for index, label in enumerate(analysis.classes):
            maps[index] = parametric_map(source, analysis, method, index, frame=frame, references_source=from_dicom,
                                         series_uid=series.setdefault(f"pm{index}", generate_uid()),
                                         series_number=PM_SERIES_NUMBER + index, instance_number=instance_number)
            built.append((f"-pm-{index + 1}-{safe_name(label, 'class')}.dcm", maps[index], KEEP_MAP))
    if "sr" in kinds:
        report = structured_report(source, analysis, method, source=source if from_dicom else None, maps=maps,
                                   pictures=[sc] if sc is not None else [],
                                   series_uid=series.setdefault("sr", generate_uid()), series_number=SR_SERIES_NUMBER,
                                   instance_number=instance_number, frame=frame, model_manufacturer=model_manufacturer)
        built.append(("-sr.dcm", report, KEEP_REPORT))
    if pseudonyms is not None:
        # Each through its encoded bytes first: highdicom may put one item object in several
        # places, and the anonymizer would then remap its UIDs twice.
        built = [(suffix, anonymize_dataset(dcmread(io.BytesIO(dataset_bytes(ds))), pseudonyms, keep=keep), keep)
                 for suffix, ds, keep in built]
    folder = Path(folder)
    stem = _free_stem(folder, safe_name(name or "lantern-explanation", "lantern-explanation"), [s for s, _, _ in built])
    written = []
    for suffix, ds, _ in built:
        target = folder / f"{stem}{suffix}"
        if target.resolve() == Path(image.path).resolve():  # _free_stem took no existing name; be sure
            raise LanternError("refusing to write over the source image", target)
        written.append(write_bytes_atomic(target, dataset_bytes(ds)))
    return written


def _free_stem(folder: Path, stem: str, suffixes: list[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``...: the first for which none of the files exists, so
    one export's files share one name."""
    for n in range(1, 10_000):
        candidate = stem if n == 1 else f"{stem}-{n}"
        if not any((folder / f"{candidate}{suffix}").exists() for suffix in suffixes):
            return candidate
    raise FileExistsError(f"no free file name for {stem} in {folder}")


def model_manufacturer(bundle) -> str | None:
    """Who made the model, for the report: the bundle manifest's ``manufacturer``; the demo model
    was made by Lantern itself."""
    stated = str((bundle.manifest or {}).get("manufacturer", "") or "").strip()
    return stated or ("Lantern (synthetic demo model)" if bundle.synthetic_demo else None)


__all__ = ["export_dicom_objects", "DICOM_OBJECT_KINDS", "parse_kinds", "model_manufacturer", "builder_source"]
