"""A batch never loses track of a file: damaged headers, truncated and unreadable files and
failed exports become failures.csv lines and record entries, counted apart from the files that
are simply not images; a resumed batch retries what may now work and leaves the rest unread."""

from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

import engine.studies
import engine.workflows.batch
from engine import ImageLoadError, load_model
from engine.cam import DEFAULT_METHOD
from engine.cli.main import main
from engine.dicom import DecoderUnavailableError
from engine.resources import DEMO_STUDIES
from engine.workflows.batch import BatchOptions, BatchProgress, batch_steps, run_batch
from engine.workflows.batch_failures import load_failure
from tests.engine.damaged_files import PYDICOM_FILES, non_image_with_uv_sop_class, uv_sop_class

GOOD = ("demo_nodule.dcm", "demo_normal.dcm", "demo_multiframe.dcm", "demo_nodule.png")  # 6 frames in all


@pytest.fixture(scope="module")
def int8_model(demo_bundle):
    return load_model(demo_bundle, "onnx-int8")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Good images, two damaged DICOM headers, a truncated image and two files that are not images."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in GOOD:
        shutil.copy(DEMO_STUDIES / name, folder / name)
    (folder / "effusion_uv.dcm").write_bytes(uv_sop_class((DEMO_STUDIES / "demo_effusion.dcm").read_bytes()))
    non_image_with_uv_sop_class(folder)  # plan_uv.dcm
    (folder / "truncated.dcm").write_bytes((DEMO_STUDIES / "demo_effusion.dcm").read_bytes()[:3000])
    (folder / "notes.txt").write_text("reading list\n")
    shutil.copy(PYDICOM_FILES / "rtplan.dcm", folder / "rtplan.dcm")
    return folder


FAILED = {"effusion_uv.dcm", "plan_uv.dcm", "truncated.dcm"}
SKIPPED = {"notes.txt", "rtplan.dcm"}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_damaged_header_no_longer_stops_the_batch_and_every_bad_file_is_in_failures_csv(folder, tmp_path,
                                                                                          int8_model):
    out = tmp_path / "out"
    result = run_batch(folder, out, int8_model, BatchOptions(chunk=3, mc_samples=4))

    assert sorted({r.path.name for r in result.rows}) == sorted(GOOD) and len(result.rows) == 6
    assert {row["file"] for row in read_csv(result.csv)} == {str(folder / name) for name in GOOD}
    assert {f.path.name for f in result.failed} == FAILED
    assert {f.path.name for f in result.skipped} == SKIPPED
    assert {p.name for p, _ in result.failures} == FAILED | SKIPPED  # the field callers already read

    assert result.failures_csv == out / "failures.csv"
    lines = {Path(row["file"]).name: row for row in read_csv(result.failures_csv)}
    assert set(lines) == FAILED | SKIPPED
    assert lines["effusion_uv.dcm"]["reason"] == ("its DICOM header is damaged: element (0008,0016) does not hold "
                                                  "a valid UV value")
    assert lines["plan_uv.dcm"]["reason"] == lines["effusion_uv.dcm"]["reason"]
    assert "truncated" in lines["truncated.dcm"]["reason"]
    assert "RT Plan" in lines["rtplan.dcm"]["reason"] and "not a DICOM" in lines["notes.txt"]["reason"]
    for name, row in lines.items():
        assert row["status"] == ("failed" if name in FAILED else "skipped")
        assert row["worth_retrying"] == ("if changed" if name in FAILED else "no")
        assert row["frame"] == ""  # single-frame files: the whole file
        assert datetime.fromisoformat(row["when"]).tzinfo is not None
    recorded = json.loads((out / ".lantern-batch.json").read_text())["failures"]
    assert sorted((v["status"], v["retry"]) for v in recorded.values()) == sorted(
        [("failed", "if changed")] * 3 + [("skipped", "no")] * 2)
    assert not any(str(folder) in key for key in recorded)  # keys are hashes, like the entries'


def test_progress_and_the_command_s_summary_count_analysed_failed_and_skipped_apart(folder, tmp_path, int8_model,
                                                                                     demo_bundle, capsys):
    steps = batch_steps(folder, tmp_path / "out", int8_model, BatchOptions(chunk=2, mc_samples=4))
    updates = []
    while True:
        try:
            updates.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    assert all(isinstance(u, BatchProgress) for u in updates)
    first, last = updates[0], updates[-1]
    # The scan already knows the damaged headers and the non-images; the truncated image fails on loading.
    assert (first.analysed, first.failed, first.skipped, first.step, first.total) == (0, 2, 2, 0, 7)
    assert (last.analysed, last.failed, last.skipped, last.step, last.total) == (6, 3, 2, 7, 7)
    assert last.stage == "6 analysed, 3 failed, 2 skipped"
    assert [u.analysed + u.failed for u in updates] == sorted(u.analysed + u.failed for u in updates)
    assert (len(result.rows), len(result.failed), len(result.skipped)) == (6, 3, 2)

    code = main(["batch", str(folder), "--out", str(tmp_path / "cli"), "--model", str(demo_bundle), "--engine",
                 "onnx-int8", "--mc", "4"])
    err = capsys.readouterr().err
    assert code == 1  # images failed
    assert "7/7 done: 6 analysed, 3 failed, 2 skipped" in err
    assert "Analysed 6 image(s), reused 0 from earlier runs, 3 failed, 2 skipped (not images)" in err
    for name in FAILED:
        assert f"failed: {folder / name}:" in err
    for name in SKIPPED:
        assert f"skipped: {folder / name}:" in err


def test_only_non_images_skipped_is_no_failure_of_the_command(tmp_path, demo_bundle, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(DEMO_STUDIES / "demo_nodule.dcm", folder)
    (folder / "notes.txt").write_text("reading list\n")
    code = main(["batch", str(folder), "--out", str(tmp_path / "out"), "--model", str(demo_bundle), "--engine",
                 "onnx-int8", "--mc", "4"])
    assert code == 0 and "0 failed, 1 skipped" in capsys.readouterr().err


class Spy:
    """Wraps a function and notes the file of each call."""

    def __init__(self, monkeypatch, module, name: str):
        self.calls: list[str] = []
        original = getattr(module, name)

        def spy(path, *args, **kwargs):
            self.calls.append(Path(path).name)
            return original(path, *args, **kwargs)
        monkeypatch.setattr(module, name, spy)


def test_a_resumed_batch_retries_a_replaced_file_but_does_not_reread_unchanged_ones(folder, tmp_path, int8_model,
                                                                                    monkeypatch):
    out = tmp_path / "out"
    options = BatchOptions(mc_samples=4)
    first = run_batch(folder, out, int8_model, options)
    when = {f.path.name: f.when for f in first.failed + first.skipped}

    shutil.copy(DEMO_STUDIES / "demo_effusion.dcm", folder / "truncated.dcm")  # the copy has finished
    headers = Spy(monkeypatch, engine.studies, "_read_header")
    loads = Spy(monkeypatch, engine.workflows.batch, "load_image")
    second = run_batch(folder, out, int8_model, options)

    assert not set(headers.calls) & (SKIPPED | {"effusion_uv.dcm", "plan_uv.dcm"}), "unchanged: not read again"
    assert loads.calls == ["truncated.dcm"]
    assert (second.analysed, second.reused) == (1, 6)
    assert next(r for r in second.rows if r.path.name == "truncated.dcm").predicted_class
    assert {f.path.name for f in second.failed} == {"effusion_uv.dcm", "plan_uv.dcm"}
    assert {f.path.name for f in second.skipped} == SKIPPED
    assert all(f.when == when[f.path.name] for f in second.failed + second.skipped)  # found then, not now
    assert (second.csv.name, second.failures_csv.name) == ("worklist-2.csv", "failures-2.csv")
    assert {Path(row["file"]).name for row in read_csv(second.failures_csv)} == (FAILED | SKIPPED) - {"truncated.dcm"}

    notes = folder / "notes.txt"
    os.utime(notes, ns=(notes.stat().st_atime_ns, notes.stat().st_mtime_ns + 10**9))  # edited since
    headers.calls.clear()
    third = run_batch(folder, out, int8_model, options)
    assert "notes.txt" in headers.calls and "rtplan.dcm" not in headers.calls
    assert {f.path.name for f in third.skipped} == SKIPPED and (third.analysed, third.reused) == (0, 7)


def test_a_read_error_is_retried_even_when_the_file_has_not_changed(folder, tmp_path, int8_model, monkeypatch):
    out = tmp_path / "out"
    load_image = engine.workflows.batch.load_image

    def unreadable_nodule(path, *args, **kwargs):
        if Path(path).name == "demo_nodule.dcm":
            raise ImageLoadError("permission denied: Lantern may not read this file", path) from PermissionError(13)
        return load_image(path, *args, **kwargs)
    monkeypatch.setattr(engine.workflows.batch, "load_image", unreadable_nodule)
    first = run_batch(folder, out, int8_model, BatchOptions(mc_samples=4))
    denied = next(f for f in first.failed if f.path.name == "demo_nodule.dcm")
    assert (denied.retry, denied.reason) == ("yes", "permission denied: Lantern may not read this file")

    monkeypatch.setattr(engine.workflows.batch, "load_image", load_image)  # permissions fixed, file unchanged
    second = run_batch(folder, out, int8_model, BatchOptions(mc_samples=4))
    assert (second.analysed, second.reused) == (1, 5)
    assert "demo_nodule.dcm" not in {f.path.name for f in second.failed}


def test_the_cause_of_a_failure_decides_whether_it_is_worth_retrying(tmp_path):
    path = tmp_path / "x.dcm"
    assert load_failure(DecoderUnavailableError("no decoder for it is installed", path))[1:] == ("failed", "yes")
    assert load_failure(MemoryError())[1:] == ("failed", "yes")
    assert load_failure(ImageLoadError("the file ends before its pixel data does", path))[1:] == (
        "failed", "if changed")
    assert load_failure(engine.NotAnImageError("a structured report", path))[1:] == ("skipped", "no")
    assert load_failure(ValueError("odd"))[0] == "could not be opened: odd"


def test_an_export_that_fails_costs_only_its_own_image_which_a_resumed_batch_redoes(tmp_path, int8_model):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("demo_nodule.dcm", "demo_normal.dcm"):
        shutil.copy(DEMO_STUDIES / name, folder / name)
    out = tmp_path / "out"
    options = BatchOptions(method=DEFAULT_METHOD, mc_samples=4)

    def exporter(image, analysis, item, pseudonyms):
        if item.path.name == "demo_normal.dcm":
            raise OSError(28, "No space left on device")
        return []
    first = run_batch(folder, out, int8_model, options, on_analysis=exporter)
    assert [r.path.name for r in first.rows] == ["demo_nodule.dcm"]
    (failed,) = first.failed
    assert failed.path.name == "demo_normal.dcm" and failed.retry == "yes"
    assert failed.reason.startswith("its exports could not be written:") and "No space left" in failed.reason
    second = run_batch(folder, out, int8_model, options, on_analysis=lambda *args: [])
    assert (second.analysed, second.reused, second.failed) == (1, 1, ())


def test_an_anonymized_failures_csv_names_no_file_or_folder(folder, tmp_path, int8_model):
    result = run_batch(folder, tmp_path / "out", int8_model, BatchOptions(anonymize=True, mc_samples=4))
    rows = read_csv(result.failures_csv)
    assert len(rows) == 5 and str(folder) not in result.failures_csv.read_text()
    assert all(row["file"].startswith(("ANON-", "unknown-patient_")) for row in rows)
    names = " ".join(row["file"] for row in rows)
    for word in ("incoming", "effusion", "truncated", "notes", "rtplan", "plan_uv"):
        assert word not in names


def test_a_missing_source_is_an_error_not_an_empty_batch(tmp_path, int8_model):
    with pytest.raises(engine.LanternError, match="does not exist"):
        run_batch(tmp_path / "nowhere", tmp_path / "out", int8_model)
