"""Anonymizing what Lantern writes: consistent pseudonyms across a batch, and a subset of the
DICOM basic de-identification profile (PS3.15 Annex E) applied to export data sets.

Pseudonyms are a keyed hash (HMAC-SHA-256) of the original value with a per-batch salt: the same
patient, study or image gets the same pseudonym throughout one batch (so exports of one study stay
grouped), but nothing links them to another batch or back to the original without the salt. The
salt lives in the batch's own record file; whoever holds both it and a list of candidate IDs can
test them, so a shared export should travel without the record.

Sources are never touched: only the data sets Lantern builds for export pass through here. A PNG
source carries no patient data at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from pydicom.dataset import Dataset

# LO: at most 64 characters. What is replaced or removed is listed below and in the module doc.
DEIDENTIFICATION_METHOD = "Lantern: basic profile subset, keyed-hash pseudonyms"

# Emptied (kept as zero-length): Type 2 attributes a viewer may expect to find.
EMPTIED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
           "ReferringPhysicianName", "ContentDate", "ContentTime", "SeriesDate", "SeriesTime")
# Removed outright.
REMOVED = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator", "IssuerOfPatientID",
    "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference", "ResponsiblePerson",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "InstanceCreationDate", "InstanceCreationTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture",
    "StudyDescription", "RequestAttributesSequence", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepID", "ScheduledProcedureStepID",
    "RequestedProcedureID", "AdmissionID", "ImageComments", "FrameComments", "DerivationDescription",
)
# Remapped through the pseudonymizer, wherever they occur (also inside sequences).
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                "ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID")


class Pseudonymizer:
    def __init__(self, salt: bytes | None = None):
        self.salt = salt if salt is not None else secrets.token_bytes(16)

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.salt, f"{kind}\0{value}".encode("utf-8"), hashlib.sha256).digest()

    def patient_id(self, original: str) -> str:
        return "ANON-" + self._digest("patient", original.strip()).hex()[:12].upper()

    def patient(self, patient_id: str, patient_name: str = "") -> str:
        """The pseudonym of a patient: from the ID, or from the name where a file has no ID."""
        return self.patient_id(patient_id or patient_name)

    def image_name(self, patient_id: str, path: Path, frame: int = 0) -> str:
        """What an anonymized export calls an image (files, tables, report headings): the
        patient's pseudonym and a short label of the file. Never the file or folder names, which
        often name the patient."""
        name = f"{self.patient_id(patient_id)}_{self.short('image', str(Path(path).resolve()))}"
        return name + (f"-frame{frame}" if frame else "")

    def short(self, kind: str, value: str) -> str:
        """A short stable label (8 hex digits) for a study or series, for tables."""
        return self._digest(kind, value).hex()[:8]

    def uid(self, original: str) -> str:
        # 2.25.<decimal of 128 bits>: the UUID-derived root (PS3.5 B.2) needs no registered prefix.
        return "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))


def anonymize_dataset(ds: Dataset, pseudonyms: Pseudonymizer, *, keep: tuple[str, ...] = ()) -> Dataset:
    """De-identify ``ds`` in place (an export Lantern built, never a source); ``keep`` names
    attributes Lantern wrote itself that must survive (its own description of the export)."""
    pseudonym = pseudonyms.patient(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""))
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    _clean(ds, pseudonyms, keep)
    if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = pseudonyms.uid(str(ds.file_meta.MediaStorageSOPInstanceUID))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    return ds


def _clean(ds: Dataset, pseudonyms: Pseudonymizer, keep: tuple[str, ...]) -> None:
    ds.remove_private_tags()
    for keyword in EMPTIED:
        if keyword in ds and keyword not in keep:
            ds.data_element(keyword).value = ""
    for keyword in REMOVED:
        if keyword in ds and keyword not in keep:
            delattr(ds, keyword)
    for keyword in UID_KEYWORDS:
        if keyword in ds and ds.data_element(keyword).value:
            ds.data_element(keyword).value = pseudonyms.uid(str(ds.data_element(keyword).value))
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _clean(item, pseudonyms, keep)
