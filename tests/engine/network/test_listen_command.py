"""``lantern-engine listen`` end to end: a subprocess on an ephemeral port, the demo studies sent
with storescu, the worklist filled by the batch, then SIGTERM and a clean exit."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from engine.cli.main import main
from engine.resources import ROOT
from tests.engine.network.storage_peers import CALLING, demo_files, needs_dcmtk, storescu, structured_report

pytestmark = [needs_dcmtk, pytest.mark.slow]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_listen_receives_analyses_and_stops_cleanly(tmp_path, demo_bundle, capsys):
    inbox, out, log = tmp_path / "inbox", tmp_path / "out", tmp_path / "listen.log"
    with log.open("wb") as sink:
        listener = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.main", "listen", "--port", "0", "--inbox", str(inbox), "--out", str(out),
             "--allow", CALLING, "--model", str(demo_bundle), "--engine", "onnx-int8", "--min-free-mb", "0"],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        port = int(wait_for(lambda: re.search(r"Listening as LANTERN on 127\.0\.0\.1:(\d+)", log.read_text()),
                            60, "the listener to start").group(1))
        sent = storescu(port, [*demo_files(), structured_report(tmp_path)])
        assert sent.returncode == 0, sent.stderr
        assert storescu(port, demo_files()[:1], calling="STRANGER").returncode != 0

        frames = sum(int(pydicom.dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1)) for p in demo_files())
        rows = wait_for(lambda: len(found := read_csv(out / "worklist.csv")) == frames and found, 60,
                        "the worklist to list every frame")
        expected = {f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in demo_files()}
        assert {Path(row["file"]).name for row in rows} == expected
        assert all((out / row["result"]).is_file() for row in rows)
        refusals = wait_for(lambda: len(found := read_csv(out / "network-refusals.csv")) == 2 and found, 10,
                            "the refusals file")
        assert ({(r["sender_ae"], r["status"]) for r in refusals}
                == {(CALLING, "0xA900"), ("STRANGER", "A-ASSOCIATE-RJ")})
        assert all(r["address"] == "127.0.0.1" for r in refusals)
    finally:
        listener.send_signal(signal.SIGTERM)
        code = listener.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert text.count(" received ") == len(demo_files()) and "refused association from STRANGER" in text
    assert "Stopped." in text and "Traceback" not in text
    assert sorted(p.name for p in out.glob("worklist*.csv")) == ["worklist.csv"]

    # What --out holds is the batch's own: the batch over the inbox reuses every result.
    assert main(["batch", str(inbox), "--out", str(out), "--model", str(demo_bundle), "--engine", "onnx-int8"]) == 0
    assert f"Analysed 0 image(s), reused {frames} from earlier runs" in capsys.readouterr().err


def test_listen_refuses_to_start_without_an_allow_list_or_with_the_output_in_the_inbox(tmp_path, demo_bundle, capsys):
    inbox = tmp_path / "inbox"
    assert main(["listen", "--port", "0", "--inbox", str(inbox), "--out", str(tmp_path / "out")]) == 2
    assert "--allow-any" in capsys.readouterr().err
    assert main(["listen", "--port", "0", "--ae", "BACK\\SLASH", "--inbox", str(inbox), "--out", str(tmp_path / "out"),
                 "--allow", CALLING]) == 2
    assert "backslash" in capsys.readouterr().err
    assert main(["listen", "--port", "0", "--inbox", str(inbox), "--out", str(inbox / "results"), "--allow", CALLING,
                 "--model", str(demo_bundle), "--engine", "onnx-int8"]) == 2
    assert "output folder is inside the folder being analysed" in capsys.readouterr().err


def test_the_listen_benchmark_runs_end_to_end(demo_bundle, capsys):
    # Its figures are for `lantern-engine bench --listen`; here only that it measures what it says.
    assert main(["bench", "--listen", "--instances", "8", "--model", str(demo_bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["instances"] == 8 and report["engine"] == "onnx-int8" and report["batch_runs"] >= 1
    assert report["received_per_s"] > 0 and report["analysed_seconds"] >= report["received_seconds"]
