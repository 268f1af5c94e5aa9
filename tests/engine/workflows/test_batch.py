"""Batch triage over real folders: good, corrupt and non-image files mixed; resuming; the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import AnalysisOptions, LanternError, analyze, load_image, load_model
from engine.workflows.batch import BatchOptions, batch_steps, run_batch
from engine.cli.main import main
from engine.resources import DEMO_STUDIES

STUDY = DEMO_STUDIES
GOOD = ("demo_nodule.dcm", "demo_normal.dcm", "demo_multiframe.dcm", "demo_nodule.png")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    for name in GOOD[:2]:
        shutil.copy(STUDY / name, folder / name)
    shutil.copy(STUDY / GOOD[2], folder / "sub" / GOOD[2])
    shutil.copy(STUDY / GOOD[3], folder / "sub" / GOOD[3])
    whole = (STUDY / "demo_effusion.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[:3000])  # a valid header, pixel data cut off
    (folder / "notes.txt").write_text("reading list\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.dcm").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def int8_model(demo_bundle):
    return load_model(demo_bundle, "onnx-int8")


def test_every_good_image_is_analysed_every_bad_file_listed_and_nothing_written_beside_sources(
        mixed_folder, tmp_path, int8_model):
    before = snapshot(mixed_folder)
    out = tmp_path / "out"
    result = run_batch(mixed_folder, out, int8_model, BatchOptions(chunk=4))

    analysed = sorted((r.path.name, r.frame) for r in result.rows)
    assert analysed == sorted([("demo_nodule.dcm", 0), ("demo_normal.dcm", 0), ("demo_nodule.png", 0),
                               ("demo_multiframe.dcm", 0), ("demo_multiframe.dcm", 1), ("demo_multiframe.dcm", 2)])
    reasons = {p.name: why for p, why in result.failures}
    assert set(reasons) == {"truncated.dcm", "notes.txt", "broken.png", "empty.dcm"}
    assert all(len(why) > 8 for why in reasons.values())
    assert snapshot(mixed_folder) == before  # nothing added, nothing changed

    with open(result.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6
    assert {row["patient_id"] for row in table} >= {"LANTERN-DEMO-1", "LANTERN-DEMO-3", "LANTERN-DEMO-4"}
    for row, batch_row in zip(table, result.rows):
        assert row["flagged"] == ("yes" if batch_row.flagged else "no")
        saved = json.loads((out / row["result"]).read_text())
        assert saved["predicted_class"] == row["predicted_class"]
        assert saved["uncertainty"]["flagged"] == batch_row.flagged


def test_batch_figures_match_a_full_analysis_of_the_same_image(tmp_path, int8_model):
    result = run_batch(STUDY / "demo_nodule.dcm", tmp_path / "out", int8_model)
    (row,) = result.rows
    full = analyze(load_image(STUDY / "demo_nodule.dcm"), int8_model, AnalysisOptions(mc_samples=20))
    assert row.predicted_class == full.predicted_class
    assert row.probability == pytest.approx(float(full.probabilities[full.predicted]), abs=1e-4)
    assert row.confidence == pytest.approx(full.uncertainty.confidence, abs=1e-4)
    assert row.flagged == full.uncertainty.flagged


def test_a_second_run_reuses_finished_images_and_redoes_only_changed_ones(mixed_folder, tmp_path, int8_model):
    out = tmp_path / "out"
    first = run_batch(mixed_folder, out, int8_model)
    assert (first.analysed, first.reused) == (6, 0)
    second = run_batch(mixed_folder, out, int8_model)
    assert (second.analysed, second.reused) == (6 - 6, 6)
    assert [r.probabilities for r in second.rows] == [r.probabilities for r in first.rows]
    assert second.csv != first.csv and first.csv.is_file()  # an earlier worklist is never overwritten
    changed = mixed_folder / "demo_normal.dcm"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = run_batch(mixed_folder, out, int8_model)
    assert (third.analysed, third.reused) == (1, 5)


def test_a_cancelled_batch_resumes_where_it_stopped(mixed_folder, tmp_path, int8_model):
    out = tmp_path / "out"
    steps = batch_steps(mixed_folder, out, int8_model, BatchOptions(chunk=2))
    assert next(steps).step == 0
    assert next(steps).step == 2  # one chunk done...
    steps.close()  # ...then the user cancels
    finished = len(json.loads((out / ".lantern-batch.json").read_text())["entries"])
    assert 1 <= finished <= 2  # the first chunk may hold one of the broken files
    resumed = run_batch(mixed_folder, out, int8_model, BatchOptions(chunk=2))
    assert (resumed.analysed, resumed.reused) == (6 - finished, finished)


def test_other_options_or_engines_are_not_mistaken_for_finished_work(tmp_path, int8_model):
    out = tmp_path / "out"
    run_batch(STUDY / "demo_normal.dcm", out, int8_model)
    again = run_batch(STUDY / "demo_normal.dcm", out, int8_model, BatchOptions(mc_samples=5))
    assert (again.analysed, again.reused) == (1, 0)
    assert again.rows[0].confidence is not None


def test_the_torch_engine_gives_the_same_rows_one_image_at_a_time(tmp_path):
    from tests.conftest import make_bundle

    # A fitted temperature must shape the batch's figures exactly as it shapes the viewer's.
    bundle = make_bundle(tmp_path / "tempered", calibration={"temperature": 2.5})
    model = load_model(bundle, "torch")
    assert model.bundle.temperature == 2.5
    result = run_batch(STUDY / "demo_nodule.png", tmp_path / "out", model, BatchOptions(mc_samples=8))
    full = analyze(load_image(STUDY / "demo_nodule.png"), model, AnalysisOptions(mc_samples=8))
    (row,) = result.rows
    assert np.allclose(list(row.probabilities.values()), full.probabilities, atol=1e-5)
    assert row.confidence == pytest.approx(full.uncertainty.confidence, abs=1e-5)


def test_an_output_folder_inside_the_sources_is_refused(mixed_folder, int8_model):
    with pytest.raises(LanternError, match="inside the folder being analysed"):
        run_batch(mixed_folder, mixed_folder / "results", int8_model)
    assert not (mixed_folder / "results").exists()


def test_anonymized_worklist_has_consistent_pseudonyms_and_no_ids(tmp_path, int8_model):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("demo_nodule.dcm", "demo_multiframe.dcm"):
        shutil.copy(STUDY / name, folder / name)
    result = run_batch(folder, tmp_path / "out", int8_model, BatchOptions(anonymize=True))
    text = result.csv.read_text()
    assert "LANTERN-DEMO" not in text and "20240315" not in text
    assert "demo_" not in text, "file names often name the patient: an anonymized worklist has none"
    images: dict[str, list[str]] = {}
    for r in result.rows:  # each image's pseudonymous name, its later frames suffixed
        images.setdefault(r.path.name.split("-frame")[0], []).append(r.patient_id)
    frames = max(images.values(), key=len)
    assert len(images) == 2 and len(frames) == 3 and len(set(frames)) == 1 and frames[0].startswith("ANON-")
    assert len({r.patient_id for r in result.rows}) == 2


def test_cli_batch_writes_worklist_exports_and_lists_failures(mixed_folder, tmp_path, demo_bundle, capsys):
    before = snapshot(mixed_folder)
    out = tmp_path / "out"
    code = main(["batch", str(mixed_folder), "--out", str(out), "--model", str(demo_bundle), "--engine",
                 "onnx-int8", "--png", "--dicom", "--report", "--anonymize", "--mc", "10"])
    err = capsys.readouterr().err
    assert code == 1  # some files were not analysed
    for name in ("truncated.dcm", "notes.txt", "broken.png", "empty.dcm"):
        assert f"{name}:" in err
    assert "Analysed 6 image(s)" in err and "images/s" in err
    assert len(list((out / "png").glob("*.png"))) == 6
    # Per image: the secondary capture, a parametric map per class (3) and the structured report.
    assert len(list((out / "dicom").glob("*.dcm"))) == 6 * 5
    assert len(list((out / "dicom").glob("*-sr.dcm"))) == 6
    reports = list((out / "reports").glob("*.html"))
    assert len(reports) == 4  # three DICOM studies and the PNG folder
    for report in reports:
        html = report.read_text()
        assert "not for primary diagnosis" in html and "data:image/png;base64," in html
        assert "LANTERN-DEMO" not in html and "DEMO^" not in html
    assert snapshot(mixed_folder) == before
    exported = [p.name for p in (out / "png").iterdir()] + [p.name for p in (out / "dicom").iterdir()]
    assert all(name.startswith("ANON-") and "demo" not in name for name in exported)


def test_a_dicomdir_is_batched_through_the_files_it_lists(tmp_path, int8_model):
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for name in ("demo_nodule.dcm", "demo_effusion.dcm"):
        fileset.add(STUDY / name)
    media = tmp_path / "media"
    fileset.write(media)
    result = run_batch(media / "DICOMDIR", tmp_path / "out", int8_model)
    assert sorted(r.predicted_class for r in result.rows) == ["effusion", "nodule"]
    assert result.failures == ()


def test_rows_are_reported_as_they_are_made_reused_ones_first(mixed_folder, tmp_path, int8_model):
    out = tmp_path / "out"
    run_batch(mixed_folder / "sub", out, int8_model)  # the multi-frame file and the PNG: 4 rows
    heard = []
    steps = batch_steps(mixed_folder, tmp_path / "out2", int8_model, BatchOptions(chunk=2), on_row=heard.append)
    next(steps)
    assert heard == []
    next(steps)
    assert 1 <= len(heard) <= 2  # the first chunk's rows, before the batch is over
    steps.close()
    again = []
    result = None
    steps = batch_steps(mixed_folder / "sub", out, int8_model, on_row=again.append)
    next(steps)
    assert len(again) == 4  # everything reused is reported at once, before any new work
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result = done.value
    assert [r.path for r in again] == [r.path for r in result.rows]


def test_a_triage_record_and_a_full_analysis_share_one_result_schema(tmp_path, int8_model):
    result = run_batch(STUDY / "demo_nodule.dcm", tmp_path / "triage", int8_model)
    (row,) = result.rows
    triage = json.loads((tmp_path / "triage" / row.result).read_text())
    mapped = run_batch(STUDY / "demo_nodule.dcm", tmp_path / "mapped", int8_model, BatchOptions(method="gradcam++"))
    full = json.loads((tmp_path / "mapped" / mapped.rows[0].result).read_text())
    explained = analyze(load_image(STUDY / "demo_nodule.dcm"), int8_model).to_dict()
    assert set(triage) == set(full) == set(explained)
    assert triage["schema"] == full["schema"] == explained["schema"] == "lantern.result/1"
    assert triage["methods"] == [] and triage["map_peaks"] == {} and triage["method"] is None
    assert full["methods"] == ["gradcam++"] and full["method"] == "gradcam++"
    assert set(full["map_peaks"]["gradcam++"]) == set(int8_model.bundle.classes)
    for name, p in triage["probabilities"].items():
        assert p == pytest.approx(full["probabilities"][name], abs=1e-4)
