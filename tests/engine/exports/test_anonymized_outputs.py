"""An anonymized export carries no identifying text anywhere: file and folder names included.

The sources are named after a fake patient, as real files often are; every file an anonymized
batch writes (results, worklist, reports, PNGs, DICOM, its own record) is searched for the name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

from engine.resources import DEMO_STUDIES, ROOT
from tests.conftest import dciodvfy_errors

NAME_PARTS = (b"smithers", b"waylon")  # searched case-insensitively


def _sources(tmp_path: Path) -> Path:
    folder = tmp_path / "Smithers_Waylon_1962" / "chest"
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(DEMO_STUDIES / "demo_nodule.dcm")
    ds.PatientName, ds.PatientID = "Smithers^Waylon", "SMITHERS-1962"
    ds.StudyDescription = "Chest of Waylon Smithers"
    ds.save_as(folder / "Smithers_Waylon_PA.dcm")
    shutil.copy(DEMO_STUDIES / "demo_nodule.png", folder / "Waylon_Smithers_chest.png")
    return tmp_path / "Smithers_Waylon_1962"


def _leaks(out: Path) -> list[str]:
    found = []
    for path in sorted(out.rglob("*")):
        relative = str(path.relative_to(out)).lower().encode()
        data = path.read_bytes().lower() if path.is_file() else b""
        for part in NAME_PARTS:
            if part in relative or part in data:
                found.append(f"{path.relative_to(out)}: {part.decode()}")
    return found


def test_an_anonymized_batch_names_no_patient_anywhere(tmp_path):
    source, out = _sources(tmp_path), tmp_path / "shared"
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(source), "--out", str(out),
                          "--anonymize", "--report", "--png", "--dicom", "--engine", "onnx-int8"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".json", ".csv", ".html", ".png", ".dcm"}
    assert _leaks(out) == []
    for dicom in out.rglob("*.dcm"):
        assert dciodvfy_errors(dicom) == [], dicom.name
    # Run again: the resumed batch reuses its record and still names no one.
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(source), "--out", str(out),
                          "--anonymize", "--report", "--engine", "onnx-int8"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0 and "reused 2" in run.stderr, run.stderr
    assert _leaks(out) == []


def test_the_same_batch_without_anonymize_does_name_the_files(tmp_path):
    """The search above can find a name: without --anonymize the outputs hold it."""
    source, out = _sources(tmp_path), tmp_path / "own"
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(source), "--out", str(out),
                          "--report", "--engine", "onnx-int8"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    assert _leaks(out)
