"""Senders for the listener tests: dcmtk's storescu and echoscu as subprocesses (the peers a
hospital has), a pynetdicom sender for what storescu refuses to send (a malformed data set), and
the test files: demo images with fresh UIDs, non-images, a broken data set."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.resources import DEMO_STUDIES
from tests.conftest import new_dicom

CALLING = "CALLER"
CALLED = "LANTERN"
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

needs_dcmtk = pytest.mark.skipif(
    not (shutil.which("storescu") and shutil.which("echoscu")),
    reason="dcmtk's storescu/echoscu are not installed (the Makefile's system-deps installs dcmtk)")


def demo_files() -> list[Path]:
    return sorted(DEMO_STUDIES.glob("*.dcm"))


def storescu(port: int, files, *, calling: str = CALLING, halt: bool = False, extra=(),
             timeout: float = 120) -> subprocess.CompletedProcess:
    """storescu sending ``files`` on one association; unless ``halt``, it carries on after a
    refused instance (-nh) and then exits 0: the listener's events say what was refused."""
    return subprocess.run(["storescu", *([] if halt else ["-nh"]), "-aet", calling, "-aec", CALLED, *extra,
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True, timeout=timeout)


def echoscu(port: int, *, calling: str = CALLING) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", CALLED, "127.0.0.1", str(port)],
                          capture_output=True, timeout=60)


def inbox_files(inbox: Path) -> list[Path]:
    """What the listener wrote (its temporary files start with a dot and never stay)."""
    return sorted(p for p in Path(inbox).rglob("*") if p.is_file())


def fresh_copies(folder: Path, count: int, *, per_study: int = 10) -> dict[str, Path]:
    """``count`` copies of the single-frame demo images with fresh SOP Instance UIDs, ``per_study``
    to a study: {SOP Instance UID: file}."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(p) for p in demo_files() if "multiframe" not in p.name]
    made, study = {}, None
    for i in range(count):
        if i % per_study == 0:
            study = generate_uid()
        ds = sources[i % len(sources)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        path = folder / f"copy{i:04d}.dcm"
        ds.save_as(path)
        made[str(ds.SOPInstanceUID)] = path
    return made


def structured_report(folder: Path, name: str = "report.dcm") -> Path:
    ds = new_dicom(COMPREHENSIVE_SR)
    ds.Modality, ds.StudyInstanceUID, ds.PatientName = "SR", generate_uid(), "Test^Report"
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def image_without_pixels(folder: Path, name: str = "no-pixels.dcm") -> Path:
    ds = new_dicom(DX)
    ds.Modality, ds.StudyInstanceUID, ds.Rows, ds.Columns = "DX", generate_uid(), 64, 64
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def malformed(folder: Path, name: str = "malformed.dcm") -> tuple[Path, str]:
    """A DX header whose last element declares 64 bytes and holds 3: storescu will not send it
    (it parses the file first), pydicom would read it short without a word. (path, its UID)"""
    ds = new_dicom(DX)
    ds.Modality, ds.StudyInstanceUID = "DX", generate_uid()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + b"\x10\x00\x10\x00PN\x40\x00abc")  # (0010,0010) PN, 64 bytes
    return path, str(ds.SOPInstanceUID)


def send_raw(port: int, path: Path, monkeypatch) -> int:
    """Send the file's data set as its bytes are (pynetdicom's chunked sending reads only the file
    meta), returning the C-STORE status."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(CALLING)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)
