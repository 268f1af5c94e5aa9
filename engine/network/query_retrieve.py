"""Query a PACS for studies (C-FIND, study root) and bring one into Lantern (C-MOVE or C-GET).

A C-MOVE asks the PACS to send the study to a node it knows by AE title (Lantern's own storage
listener); a C-GET brings the instances back over the same association, for sites where the PACS
cannot open a connection to the workstation. Both report progress from the PACS's pending
responses and stop on request with a C-CANCEL, as the standard provides.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from engine.errors import LanternError
from engine.network.association import Node, associate, describe, status_text
from engine.steps import Progress

PENDING = (0xFF00, 0xFF01)
FIND_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
             "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyInstanceUID")


@dataclass(frozen=True)
class StudyQuery:
    """What a reader searches by; empty fields match everything. Names take DICOM wildcards (*, ?)."""

    patient_name: str = ""
    patient_id: str = ""
    date_from: str = ""  # YYYYMMDD
    date_to: str = ""
    modality: str = ""
    accession_number: str = ""

    def identifier(self):
        from pydicom.dataset import Dataset

        for value in (self.date_from, self.date_to):
            if value and not (len(value) == 8 and value.isdigit()):
                raise LanternError(f"a study date is written YYYYMMDD (8 digits), not '{value}'")
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for keyword in FIND_KEYS:
            setattr(ds, keyword, "")
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.AccessionNumber = self.accession_number
        ds.ModalitiesInStudy = self.modality
        if self.date_from or self.date_to:
            ds.StudyDate = f"{self.date_from}-{self.date_to}" if self.date_from != self.date_to else self.date_from
        return ds


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    accession_number: str
    description: str
    modalities: tuple[str, ...]
    instances: int | None

    @classmethod
    def from_identifier(cls, ds) -> "StudyMatch":
        modalities = ds.get("ModalitiesInStudy", "") or ()
        count = ds.get("NumberOfStudyRelatedInstances", None)
        return cls(str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientName", "") or ""),
                   str(ds.get("PatientID", "") or ""), str(ds.get("StudyDate", "") or ""),
                   str(ds.get("AccessionNumber", "") or ""), str(ds.get("StudyDescription", "") or ""),
                   tuple(str(m) for m in ([modalities] if isinstance(modalities, str) else modalities) if m),
                   int(count) if count not in (None, "") else None)


def find_studies(node: Node, calling_ae: str, query: StudyQuery, limit: int = 500) -> list[StudyMatch]:
    """Studies on ``node`` matching ``query`` (at most ``limit``; the rest are cancelled)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    identifier = query.identifier()
    found: list[StudyMatch] = []
    with associate(node, calling_ae, [FIND]) as assoc:
        for status, match in assoc.send_c_find(identifier, FIND):
            if not status:  # no response within the DIMSE timeout: pynetdicom yields an empty status
                raise LanternError(f"the query to {describe(node)} timed out or the connection dropped")
            if status.Status in PENDING and match is not None:
                found.append(StudyMatch.from_identifier(match))
                if len(found) >= limit:
                    assoc.send_c_cancel(1, query_model=FIND)
            elif status.Status not in PENDING and status.Status != 0x0000 and status.Status != 0xFE00:
                raise LanternError(f"{describe(node)} answered the query with {status_text(status)}")
    return found[:limit]


@dataclass(frozen=True)
class RetrieveResult:
    completed: int
    failed: int
    warning: int
    cancelled: bool
    status: str

    @property
    def summary(self) -> str:
        text = f"{self.completed} received, {self.failed} failed, {self.warning} with warnings"
        return text + (" (cancelled)" if self.cancelled else "")


def _counts(status) -> tuple[int, int, int, int | None]:
    get = lambda k: int(status.get(k, 0) or 0)  # noqa: E731 - absent counts are zero
    remaining = status.get("NumberOfRemainingSuboperations", None)
    return (get("NumberOfCompletedSuboperations"), get("NumberOfFailedSuboperations"),
            get("NumberOfWarningSuboperations"), None if remaining is None else int(remaining))


def _retrieve(assoc, responses, model, node: Node, progress, cancel) -> RetrieveResult:
    completed = failed = warning = 0
    cancelled = False
    last = None
    for status, _identifier in responses:
        if not status:
            raise LanternError(f"the retrieve from {describe(node)} timed out or the connection dropped")
        last = status
        completed, failed, warning, remaining = _counts(status)
        if status.Status in PENDING:
            total = completed + failed + warning + (remaining or 0)
            if progress is not None:
                progress(Progress(f"{completed} of {total or '?'} instances received", completed + failed + warning,
                                  max(total, 1)))
            if cancel is not None and cancel.is_set() and not cancelled:
                assoc.send_c_cancel(1, query_model=model)
                cancelled = True
    if last is None:
        raise LanternError(f"{describe(node)} sent no answer to the retrieve request")
    code = int(last.Status)
    if code == 0xFE00:
        cancelled = True
    elif code not in (0x0000, 0xB000):
        raise LanternError(f"{describe(node)} could not send the study: {status_text(last)} "
                           f"({completed} instances arrived before)")
    return RetrieveResult(completed, failed, warning, cancelled, status_text(last))


def _study_identifier(study_uid: str):
    from pydicom.dataset import Dataset

    if not study_uid:
        raise LanternError("no study chosen to retrieve")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def move_study(node: Node, calling_ae: str, study_uid: str, destination_ae: str,
               progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> RetrieveResult:
    """C-MOVE: ``node`` sends the study to the node it knows as ``destination_ae`` (usually Lantern's
    own listener, which must be running and known to the PACS)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    with associate(node, calling_ae, [MOVE]) as assoc:
        responses = assoc.send_c_move(_study_identifier(study_uid), destination_ae, MOVE)
        return _retrieve(assoc, responses, MOVE, node, progress, cancel)


def get_study(node: Node, calling_ae: str, study_uid: str, on_store: Callable,
              progress: Callable[[Progress], None] | None = None,
              cancel: threading.Event | None = None) -> RetrieveResult:
    """C-GET: the study's instances come back over this association; ``on_store(event)`` (a
    pynetdicom EVT_C_STORE handler returning a status, e.g. the listener's) keeps each one."""
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    storage = _image_storage_classes()[:127]  # an association proposes at most 128 contexts
    roles = [build_role(uid, scp_role=True) for uid in storage]
    with associate(node, calling_ae, [GET, *storage], ext_neg=roles,
                   evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        responses = assoc.send_c_get(_study_identifier(study_uid), GET)
        return _retrieve(assoc, responses, GET, node, progress, cancel)


def _image_storage_classes() -> list[str]:
    """Storage SOP classes of pictures Lantern can show, most common first."""
    from pynetdicom import StoragePresentationContexts

    common = ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.2",
              "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1.2")
    every = [cx.abstract_syntax for cx in StoragePresentationContexts if "Image" in cx.abstract_syntax.name]
    return list(dict.fromkeys([*common, *every]))
