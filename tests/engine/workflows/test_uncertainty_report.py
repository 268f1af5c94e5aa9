"""The dataset-level uncertainty report of a batch: its figures from rows worked by hand, the
flagged files, anonymity, and ``lantern-engine batch`` writing it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli.main import main
from engine.files import write_json_atomic
from engine.resources import DEMO_STUDIES
from engine.workflows.batch_record import BatchRow
from engine.workflows.uncertainty_report import (CSV_NAME, HTML_NAME, JSON_NAME, PNG_NAME, uncertainty_report,
                                                 write_uncertainty_report)

CLASSES = ("normal", "nodule", "effusion")
THRESHOLD = 0.85


def make_row(out: Path, n: int, predicted: str, confidence: float | None, entropy: float = 0.2,
             mi: float = 0.01, write: bool = True) -> BatchRow:
    """A row and its result file, as a batch leaves them (only the uncertainty part matters here)."""
    probabilities = {c: (0.8 if c == predicted else 0.1) for c in CLASSES}
    uncertainty = None if confidence is None else {
        "samples": 20, "confidence": confidence, "predictive_entropy": entropy, "mutual_information": mi,
        "threshold": THRESHOLD, "flagged": confidence < THRESHOLD}
    result = f"results/image{n}.json"
    if write:
        write_json_atomic(out / result, {"predicted_class": predicted, "probabilities": probabilities,
                                         "uncertainty": uncertainty})
    return BatchRow(path=Path(f"/ward/image{n}.dcm"), frame=0, patient_id=f"P{n}", study="chest", study_date="20240101",
                    predicted_class=predicted, probability=0.8, confidence=confidence,
                    flagged=confidence is not None and confidence < THRESHOLD, probabilities=probabilities,
                    result=result)


@pytest.fixture
def batch(tmp_path) -> tuple[Path, list[BatchRow]]:
    out = tmp_path / "out"
    rows = [make_row(out, 0, "normal", 0.96, entropy=0.05, mi=0.001),
            make_row(out, 1, "normal", 0.625, entropy=0.40, mi=0.030),
            make_row(out, 2, "nodule", 0.845, entropy=0.17, mi=0.004),
            make_row(out, 3, "nodule", 0.91, entropy=0.10, mi=0.002),
            make_row(out, 4, "effusion", 0.325, entropy=0.77, mi=0.080),
            make_row(out, 5, "effusion", None),  # MC off for this one: no uncertainty
            make_row(out, 6, "normal", 0.99, entropy=0.01, mi=0.0005, write=False)]  # its result file is gone
    return out, rows


def test_figures_match_the_rows_worked_by_hand(batch):
    out, rows = batch
    report = uncertainty_report(out, rows)
    s = report.summary
    assert (s["images"], s["with_uncertainty"], s["unreadable_results"]) == (7, 6, 1)
    assert s["threshold"] == THRESHOLD  # read from the result files
    assert s["flagged"] == 3 and s["flagged_by_class"] == {"normal": 1, "nodule": 1, "effusion": 1}
    confidence = s["histograms"]["confidence"]
    assert confidence["edges"][0] == 0.0 and confidence["edges"][-1] == 1.0 and len(confidence["edges"]) == 21
    # bins of 0.05 (no value on an edge, where float rounding decides): 0.325 -> bin 6,
    # 0.625 -> 12, 0.845 -> 16, 0.91 -> 18, 0.96 -> 19, 0.99 -> 19
    assert [i for i, n in enumerate(confidence["counts"]["normal"]) if n] == [12, 19]
    assert confidence["counts"]["normal"][19] == 2
    assert [i for i, n in enumerate(confidence["counts"]["nodule"]) if n] == [16, 18]
    assert [i for i, n in enumerate(confidence["counts"]["effusion"]) if n] == [6]
    entropy = s["histograms"]["predictive_entropy"]
    assert entropy["edges"][-1] == pytest.approx(np.log(3), abs=1e-6)  # entropy's ceiling, log C
    assert sum(map(sum, entropy["counts"].values())) == 5  # the row whose result is gone has none
    mi = s["histograms"]["mutual_information"]
    assert mi["edges"][-1] == pytest.approx(0.08)  # the largest value seen
    curve = s["threshold_curve"]
    at = dict(zip(curve["thresholds"], curve["flagged"]))
    assert (at[0.0], at[0.32], at[0.33], at[0.62], at[0.63], at[0.84], at[0.85], at[1.0]) == (0, 0, 1, 1, 2, 2, 3, 6)
    assert curve["flagged"] == sorted(curve["flagged"])


def test_flagged_files_list_the_flagged_least_confident_first_and_never_overwrite(batch):
    out, rows = batch
    report = uncertainty_report(out, rows)
    written = write_uncertainty_report(report, out)
    assert [p.name for p in written] == [PNG_NAME, CSV_NAME, JSON_NAME]
    with open(out / CSV_NAME, newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["file"] for t in table] == ["/ward/image4.dcm", "/ward/image1.dcm", "/ward/image2.dcm"]
    assert [t["confidence"] for t in table] == ["0.3250", "0.6250", "0.8450"]
    assert table[0]["predicted_class"] == "effusion" and table[0]["p_effusion"] == "0.8000"
    assert table[0]["predictive_entropy"] == "0.7700" and table[0]["mutual_information"] == "0.0800"
    data = json.loads((out / JSON_NAME).read_text())
    assert data["flagged"] == 3 and [c["patient_id"] for c in data["cases"]] == ["P4", "P1", "P2"]
    assert data["cases"][0]["probabilities"] == {"normal": 0.1, "nodule": 0.1, "effusion": 0.8}
    picture = cv2.imread(str(out / PNG_NAME))
    assert picture.shape == (1040, 1280, 3) and (picture < 250).any()
    again = write_uncertainty_report(report, out, html_page=True)
    assert [p.name for p in again] == ["uncertainty-report-2.png", "flagged-2.csv", "flagged-2.json", HTML_NAME]
    assert (out / CSV_NAME).read_bytes() == (out / "flagged-2.csv").read_bytes()
    page = (out / HTML_NAME).read_text()
    assert "not for primary diagnosis" in page and page.index("image4.dcm") < page.index("image1.dcm")
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]


def test_without_any_uncertainty_nothing_is_flagged_and_the_figure_still_draws(tmp_path):
    out = tmp_path / "out"
    rows = [make_row(out, n, "normal", None) for n in range(3)]
    report = uncertainty_report(out, rows)
    assert report.summary["with_uncertainty"] == 0 and report.flagged == []
    assert report.summary["threshold_curve"]["flagged"][-1] == 0
    write_uncertainty_report(report, out)
    assert (out / CSV_NAME).read_text().count("\n") == 1  # the header alone


@pytest.fixture
def ward(tmp_path) -> Path:
    folder = tmp_path / "Doe_John_ward"  # a folder named after a patient, as they often are
    folder.mkdir()
    for name in ("demo_nodule.dcm", "demo_normal.dcm", "demo_effusion.dcm", "demo_nodule.png"):
        shutil.copy(DEMO_STUDIES / name, folder / name)
    return folder


def test_batch_command_writes_the_report_beside_the_worklist(ward, tmp_path, demo_bundle, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(ward), "--model", str(demo_bundle), "--engine", "onnx-int8", "--out", str(out)]) == 0
    assert {PNG_NAME, CSV_NAME, JSON_NAME} <= {p.name for p in out.iterdir()}
    assert not (out / HTML_NAME).exists()  # a page only where reports are asked for
    with open(out / "worklist.csv", newline="") as f:
        worklist = list(csv.DictReader(f))
    with open(out / CSV_NAME, newline="") as f:
        flagged = list(csv.DictReader(f))
    assert sorted(r["file"] for r in flagged) == sorted(r["file"] for r in worklist if r["flagged"] == "yes")
    assert f"Uncertainty report: {PNG_NAME}" in capsys.readouterr().err


def test_an_anonymized_batch_report_names_no_patient_file_or_folder(ward, tmp_path, demo_bundle):
    out = tmp_path / "out"
    # threshold 1: every image is flagged, so every image's identity passes through the lists
    assert main(["batch", str(ward), "--model", str(demo_bundle), "--engine", "onnx-int8", "--out", str(out),
                 "--anonymize", "--report", "--threshold", "1.0"]) == 0
    data = json.loads((out / JSON_NAME).read_text())
    assert data["flagged"] == len(data["cases"]) == 4
    texts = {name: (out / name).read_text() for name in (CSV_NAME, JSON_NAME, HTML_NAME)}
    for name, text in texts.items():
        for identifying in ("LANTERN-DEMO", "DEMO^", "demo_nodule", "demo_normal", "Doe_John", "20240315",
                            str(ward)):
            assert identifying not in text, (name, identifying)
    with open(out / "worklist.csv", newline="") as f:
        pseudonyms = {r["patient_id"] for r in csv.DictReader(f)}
    assert {c["patient_id"] for c in data["cases"]} <= pseudonyms  # the worklist's own pseudonyms
