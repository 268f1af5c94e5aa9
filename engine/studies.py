"""Study and series scanning: what a file, a folder or a DICOMDIR holds, from headers only.

API: ``scan_studies(path) -> ScanResult``. ``ScanResult.studies`` is a tuple of :class:`Study`
(sorted by date, then description), each with its :class:`Series` sorted by Series Number and
their :class:`ImageRef` sorted by Instance Number. ``ScanResult.skipped`` lists every file that
is neither a DICOM image nor a PNG/JPEG/TIFF, with the reason in plain words;
``ScanResult.failed`` the files that could not be read or whose header is damaged (a
:class:`ScanFailure` each). No file's failure stops the scan. A ScanResult also iterates, indexes
and counts like the list of its studies.

PNG/JPEG/TIFF files form one pseudo-study per folder (study and series UIDs ``"folder:<path>"``).
A DICOMDIR is read through pydicom's FileSet; the files it lists are then read like any other.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from engine.dicom import looks_like_dicom
from engine.dicom_header import (describe_non_image, int_attr, not_a_picture, number_of_frames, short_cause,
                                 text_attr)
from engine.images import RASTER_SUFFIXES

log = logging.getLogger(__name__)

_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientName",
    "PatientID", "StudyDate", "StudyDescription", "SeriesDescription", "SeriesNumber", "Modality",
    "InstanceNumber", "NumberOfFrames", "Rows", "Columns", "DirectoryRecordSequence",
]


@dataclass(frozen=True)
class ImageRef:
    """One image file (all its frames) as found on disk."""

    path: Path
    frames: int
    instance_number: int | None
    sop_instance_uid: str


@dataclass(frozen=True)
class Series:
    series_uid: str
    description: str
    modality: str
    images: tuple[ImageRef, ...]
    number: int | None = None


@dataclass(frozen=True)
class Study:
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    description: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class ScanFailure:
    """A file that is (or may be) an image but could not be listed, and why, in plain words."""

    path: Path
    reason: str
    read_error: bool = False  # the system could not read it (permissions, I/O): may work next time as it is


@dataclass(frozen=True)
class ScanResult:
    studies: tuple[Study, ...]
    skipped: tuple[tuple[Path, str], ...] = ()  # not images: (file, why)
    failed: tuple[ScanFailure, ...] = ()

    def __iter__(self):
        return iter(self.studies)

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> Study:
        return self.studies[index]


@dataclass(frozen=True)
class _Found:
    """One image file's header values, before grouping."""

    ref: ImageRef
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    study_description: str
    series_uid: str
    series_description: str
    series_number: int | None
    modality: str


@dataclass
class _Scan:
    """What a scan has found so far, and which files it is not to open."""

    leave_out: Callable[[Path], bool] | None
    found: list[_Found]
    skipped: list[tuple[Path, str]]
    failed: list[ScanFailure]


def scan_studies(path: str | Path, *, leave_out: Callable[[Path], bool] | None = None) -> ScanResult:
    """Group the images under ``path`` (a file, a folder searched recursively, or a DICOMDIR).

    Files for which ``leave_out(path)`` is true are neither opened nor listed: the caller already
    knows what they hold (a resumed batch, the files it found were not images and that have not
    changed since)."""
    path = Path(path)
    if not path.exists():
        return ScanResult((), ((path, "does not exist"),))
    scan = _Scan(leave_out, [], [], [])
    if path.is_dir():
        files = _walk(path, scan.failed)
    else:
        files = [path]
    for file in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's tolerance notes; the file is judged below
            _scan_file(file, scan, expand_dicomdir=not path.is_dir())
    return ScanResult(_group(scan.found), tuple(scan.skipped), tuple(scan.failed))


def _walk(folder: Path, failed: list[ScanFailure]) -> list[Path]:
    def report(exc: OSError) -> None:
        failed.append(ScanFailure(Path(exc.filename or folder), f"folder could not be read: {exc.strerror}",
                                  read_error=True))

    files = []
    for root, dirs, names in os.walk(folder, onerror=report):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return files


def _scan_file(path: Path, scan: _Scan, expand_dicomdir: bool) -> None:
    """One file, whatever is wrong with it: its failure is its own line, never the scan's end."""
    try:
        if scan.leave_out is not None and scan.leave_out(path):
            return
        _classify(path, scan, expand_dicomdir)
    except OSError as exc:
        scan.failed.append(ScanFailure(path, f"could not be read: {exc.strerror or exc}", read_error=True))
    except Exception as exc:  # pydicom parses a value on first use: a damaged header fails anywhere
        log.debug("%s: damaged header: %r", path, exc)
        scan.failed.append(ScanFailure(path, f"its DICOM header is damaged: {short_cause(exc)}"))


def _classify(path: Path, scan: _Scan, expand_dicomdir: bool) -> None:
    if path.suffix.lower() in RASTER_SUFFIXES:
        scan.found.append(_raster_entry(path))
        return
    if path.stat().st_size == 0:
        scan.failed.append(ScanFailure(path, "the file is empty (a copy that did not finish?)"))
        return
    ds = _read_header(path)
    if ds is None:
        scan.skipped.append((path, "not a DICOM or image file"))
        return
    if "DirectoryRecordSequence" in ds:
        if expand_dicomdir:
            _scan_dicomdir(path, scan)
        else:
            scan.skipped.append((path, "DICOMDIR index (the files it lists are scanned directly)"))
        return
    if "Rows" not in ds:
        scan.skipped.append((path, describe_non_image(ds)))
        return
    refused = not_a_picture(ds)
    if refused:
        scan.skipped.append((path, refused))
        return
    scan.found.append(_dicom_entry(path, ds))


def _read_header(path: Path) -> Dataset | None:
    """The header's listing tags; None when the file is not DICOM at all. A file marked as
    DICOM ("DICM" after its preamble) that cannot be parsed raises: it is damaged."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        with open(path, "rb") as f:
            head = f.read(132)
        if not looks_like_dicom(head):
            return None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS)
        except OSError:
            raise
        except Exception as exc:  # no marker, so only a guess that it was a bare data set: it was not
            log.debug("%s: not a bare data set: %r", path, exc)
            return None
        return ds if "SOPInstanceUID" in ds or "Rows" in ds else None


def _scan_dicomdir(path: Path, scan: _Scan) -> None:
    try:
        fileset = FileSet(pydicom.dcmread(path))
        listed = [Path(instance.path) for instance in fileset]
    except Exception as exc:
        scan.failed.append(ScanFailure(path, f"DICOMDIR could not be read: {short_cause(exc)}",
                                       read_error=isinstance(exc, OSError)))
        return
    for file in listed:
        if not file.is_file():  # a copy of the media that did not finish may still complete
            scan.failed.append(ScanFailure(file, "listed in the DICOMDIR but missing", read_error=True))
            continue
        _scan_file(file, scan, expand_dicomdir=False)


def _dicom_entry(path: Path, ds: Dataset) -> _Found:
    study_uid = text_attr(ds, "StudyInstanceUID") or f"folder:{path.parent}"
    return _Found(
        ref=ImageRef(path, number_of_frames(ds), int_attr(ds, "InstanceNumber"), text_attr(ds, "SOPInstanceUID")),
        study_uid=study_uid,
        patient_name=text_attr(ds, "PatientName"),
        patient_id=text_attr(ds, "PatientID"),
        study_date=text_attr(ds, "StudyDate"),
        study_description=text_attr(ds, "StudyDescription"),
        series_uid=text_attr(ds, "SeriesInstanceUID") or study_uid,
        series_description=text_attr(ds, "SeriesDescription"),
        series_number=int_attr(ds, "SeriesNumber"),
        modality=text_attr(ds, "Modality"),
    )


def _raster_entry(path: Path) -> _Found:
    folder_uid = f"folder:{path.parent}"
    return _Found(
        ref=ImageRef(path, 1, None, ""),
        study_uid=folder_uid, patient_name="", patient_id="", study_date="",
        study_description=path.parent.name, series_uid=folder_uid,
        series_description=path.parent.name, series_number=None, modality="",
    )


def _group(found: list[_Found]) -> tuple[Study, ...]:
    by_study: dict[str, list[_Found]] = defaultdict(list)
    for entry in found:
        by_study[entry.study_uid].append(entry)
    studies = [_study(uid, entries) for uid, entries in by_study.items()]
    return tuple(sorted(studies, key=lambda s: (s.study_date, s.description, s.study_uid)))


def _study(uid: str, entries: list[_Found]) -> Study:
    by_series: dict[str, list[_Found]] = defaultdict(list)
    for entry in entries:
        by_series[entry.series_uid].append(entry)
    series = []
    for series_uid, members in by_series.items():
        images = sorted((m.ref for m in members), key=lambda r: (r.instance_number is None, r.instance_number or 0, str(r.path)))
        first = members[0]
        series.append(Series(series_uid, first.series_description, first.modality, tuple(images), first.series_number))
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.description, s.series_uid))
    first = entries[0]
    return Study(uid, first.patient_name, first.patient_id, first.study_date, first.study_description, tuple(series))
