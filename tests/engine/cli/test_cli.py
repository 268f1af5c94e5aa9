"""``lantern-engine`` end to end: real files in, result.json and overlays out."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from engine.cli.main import main
from engine.resources import DEMO_STUDIES

STUDY = DEMO_STUDIES


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_explain_writes_results_and_one_overlay_per_class(tiny_bundle, tmp_path, capsys):
    source = STUDY / "demo_nodule.dcm"
    before = digest(source)
    code = main(["explain", str(source), str(STUDY / "demo_nodule.png"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_bundle), "--engine", "torch", "--method", "gradcam++", "--mc", "8"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "demo_nodule" / "result.json").read_text())
    assert result["method"] == "gradcam++" and result["engine"] == "torch"
    assert set(result["probabilities"]) == {"normal", "nodule", "effusion"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result["uncertainty"]["samples"] == 8
    assert result["model"]["name"] == "tiny-test-model"
    overlays = sorted((tmp_path / "out" / "demo_nodule").glob("overlay-*.png"))
    assert [p.name for p in overlays] == ["overlay-0-normal.png", "overlay-1-nodule.png", "overlay-2-effusion.png"]
    assert cv2.imread(str(overlays[0])).shape[:2] == (512, 512)
    # The PNG of the same study gets its own folder rather than overwriting the DICOM's results.
    assert (tmp_path / "out" / "demo_nodule-2" / "result.json").is_file()
    assert digest(source) == before
    assert "Analysed 2 of 2" in capsys.readouterr().err


def test_bad_input_is_reported_and_the_rest_still_runs(tiny_bundle, tmp_path, capsys):
    junk = tmp_path / "broken.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\xff" * 20)
    code = main(["explain", str(junk), str(STUDY / "demo_normal.dcm"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_bundle), "--engine", "torch", "--mc", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.dcm" in err and "FAILED" in err
    assert "Analysed 1 of 2" in err
    assert (tmp_path / "out" / "demo_normal" / "result.json").is_file()


def test_missing_model_exits_with_a_message_not_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "explain", str(STUDY / "demo_nodule.png"),
                          "--out", str(tmp_path), "--model", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "not a model bundle" in run.stderr and "Traceback" not in run.stderr


def test_explain_on_the_demo_model(demo_bundle, tmp_path):
    code = main(["explain", str(STUDY / "demo_nodule.dcm"), "--out", str(tmp_path), "--model", str(demo_bundle)])
    assert code == 0
    result = json.loads((tmp_path / "demo_nodule" / "result.json").read_text())
    assert result["predicted_class"] == "nodule"
