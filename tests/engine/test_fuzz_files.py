"""Hundreds of damaged files (seeded byte-level damage of real DICOM, JPEG, JPEG-LS, JPEG 2000,
RLE and PNG files: tests/engine/damaged_files.py) through the folder scan, the loader, the batch
and the viewer's folder browser: no crash, no exception, every file analysed or listed with why.

The scan, the loader and the batch run in a child process held to a few GB of address space:
a decoder that crashes the process (or would take the machine's memory, as openjpeg did) fails
the test and names the file, instead of taking pytest, or the machine, down with it.
"""

from __future__ import annotations

import csv
import json
import re
import resource
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from engine.resources import ROOT
from tests.engine.damaged_files import write_damaged_copies

MEMORY_LIMIT = 6 << 30  # bytes of address space for the child: onnxruntime and torch need ~3 GB of it
CHILD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("damaged") / "incoming"
    write_damaged_copies(folder)
    return folder


def run_held_to_memory_limit(args: list[str]) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          preexec_fn=limit)


def test_there_are_hundreds_of_damaged_files_in_every_compressed_syntax(damaged):
    names = [p.name for p in damaged.iterdir()]
    assert len(names) >= 300
    for source in ("jpeg_baseline", "jpeg_ls", "jpeg_2000", "rle", "demo_normal", "ct_explicit_le"):
        kinds = {n.split("-")[2].split(".")[0] for n in names if n.startswith(source + "-") and n.count("-") == 2}
        assert kinds >= {"flip", "flip_pixels", "truncate", "insert", "uv", "header"}, source


def test_the_scan_and_the_loader_never_crash_and_give_every_file_a_reason(damaged, tmp_path):
    log = tmp_path / "outcomes.jsonl"
    run = run_held_to_memory_limit([sys.executable, "-c", "import sys; from tests.engine.damaged_files import "
                                    "scan_and_load_each as go; go(sys.argv[1], sys.argv[2])", str(damaged), str(log)])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    started = [r["started"] for r in records if "started" in r]
    assert run.returncode == 0, f"the process died ({run.returncode}) on {started[-1]}: {run.stderr[-3000:]}"
    assert [r["unhandled"] for r in records if "unhandled" in r] == []

    scan = next(r for r in records if "listed" in r)
    files = {str(p) for p in damaged.iterdir()}
    listed, skipped, failed = set(scan["listed"]), scan["skipped"], scan["failed"]
    assert listed | set(skipped) | set(failed) == files, "a file neither listed nor given a reason"
    assert not listed & set(skipped) and not listed & set(failed) and not set(skipped) & set(failed)
    assert all(len(reason) > 10 for reason in [*skipped.values(), *failed.values()])
    # The damage that used to end the scan (pydicom's BytesLengthException): now the file's reason.
    for name in ("demo_normal-uv26.dcm", "plan_uv.dcm"):
        assert failed[str(damaged / name)] == ("its DICOM header is damaged: element (0008,0016) does not hold "
                                               "a valid UV value")

    outcomes = {(r["file"], r["frame"]): r for r in records if "file" in r}
    assert len(outcomes) >= len(files)
    assert all("loaded" in r or len(r["refused"]) > 10 for r in outcomes.values())
    for name in ("demo_normal.dcm", "ct_explicit_le.dcm", "jpeg_baseline.dcm", "jpeg_ls.dcm", "jpeg_2000.dcm",
                 "rle.dcm", "demo_png.png"):
        assert "loaded" in outcomes[(str(damaged / name), 0)], name  # the undamaged sources open
    assert sum("loaded" in r for r in outcomes.values()) >= 50
    # The codestream that made openjpeg allocate tens of GB is refused before it is decoded...
    huge = outcomes[(str(damaged / "jpeg_2000-huge-siz.dcm"), 0)]["refused"]
    assert "declares 100000 x 100000 pixels" in huge and "the DICOM header 64 x 64" in huge
    # ...and the Rust RLE decoder's panics (a BaseException) are reasons like any other.
    rle = [r["refused"] for (f, _), r in outcomes.items() if Path(f).name.startswith("rle-") and "refused" in r]
    assert any("index out of bounds" in reason for reason in rle)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_batch_analyses_or_lists_every_damaged_file(damaged, tmp_path, demo_bundle):
    out = tmp_path / "out"
    run = run_held_to_memory_limit([sys.executable, "-m", "engine.cli.main", "batch", str(damaged), "--out", str(out),
                                    "--model", str(demo_bundle), "--engine", "onnx-int8", "--mc", "2", "--report"])
    assert run.returncode == 1, f"expected 'some files failed' (1), got {run.returncode}: {run.stderr[-3000:]}"
    worklist, failures = read_csv(out / "worklist.csv"), read_csv(out / "failures.csv")
    analysed = {row["file"] for row in worklist}
    not_analysed = {row["file"] for row in failures}
    assert analysed | not_analysed == {str(p) for p in damaged.iterdir()}
    assert len(analysed) >= 50
    for row in failures:
        assert row["status"] in ("failed", "skipped") and len(row["reason"]) > 10
        assert row["worth_retrying"] in (("yes", "if changed") if row["status"] == "failed" else ("no",))
        assert datetime.fromisoformat(row["when"]).tzinfo is not None
    uv = next(row for row in failures if row["file"] == str(damaged / "demo_normal-uv26.dcm"))
    assert (uv["status"], uv["frame"], uv["worth_retrying"]) == ("failed", "", "if changed")

    summary = re.search(r"Analysed (\d+) image\(s\), reused 0 from earlier runs, (\d+) failed, (\d+) skipped",
                        run.stderr)
    assert summary, run.stderr[-2000:]
    counts = [sum(row["status"] == status for row in failures) for status in ("failed", "skipped")]
    assert [int(n) for n in summary.groups()] == [len(worklist), *counts]
    page = (out / "summary.html").read_text()
    assert f"Not analysed: {counts[0]} failed" in page and f"Skipped: {counts[1]} not images" in page
    assert "demo_normal-uv26.dcm" in page


def test_the_folder_browser_lists_every_damaged_file_or_says_why_not(qtbot, damaged, tmp_path):
    pytest.importorskip("PySide6")
    pytest.importorskip("pyqtgraph")
    from viewer.main_window import MainWindow
    from viewer.settings import Settings

    window = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.show()
    window.open_paths([damaged])  # the scan, the first image, then the thumbnails of 200 images
    qtbot.waitUntil(lambda: window.studies.thumbnails_shown, timeout=60_000)
    panel = window.studies
    assert "Could not scan" not in panel.info.text() and "unavailable" not in panel.info.text()
    shown = set(panel.image_paths())
    explained = {Path(path): reason for path, reason in panel.skipped}
    assert shown | set(explained) == set(damaged.iterdir())
    assert all(len(reason) > 10 for reason in explained.values())
    assert f"{len(explained)} files skipped" in panel.info.text()
