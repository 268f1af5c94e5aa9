"""Knowing when not to answer: intended inputs from the tags, and the out-of-distribution score."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from engine.analysis import analyze, load_model
from engine.bundle import load_bundle, parse_manifest
from engine.errors import LanternError, ModelBundleError, NotAnImageError
from engine.images import load_image
from engine.intended_inputs import NO_OOD_CHECK, check_inputs
from engine.ood import OOD_FILE, fit_ood, load_ood, manifest_entry, save_ood
from engine.resources import DEMO_MODEL, DEMO_STUDIES, ROOT
from engine.synthetic.phantoms import make_dataset
from tests.conftest import dciodvfy_errors

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DEMO_ENGINES = ["torch", "onnx-int8"]


@pytest.fixture(scope="module")
def demo():
    return load_bundle(DEMO_MODEL)


@pytest.mark.parametrize("name, words", [
    ("CT_small.dcm", "this model was made for chest radiographs (DX, CR); this image is a CT slice"),
    ("MR_small.dcm", "this image is an MR slice"),
    ("examples_rgb_color.dcm", "this image is an ultrasound image"),
])
def test_tags_that_do_not_match_say_so(demo, name, words):
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom")
    reasons = demo.intended_inputs.mismatches(load_image(path))
    assert any(words in r for r in reasons), reasons


def test_the_demo_studies_are_what_the_demo_model_was_made_for(demo):
    for path in sorted(DEMO_STUDIES.glob("*.dcm")) + sorted(DEMO_STUDIES.glob("*.png")):
        assert demo.intended_inputs.mismatches(load_image(path)) == (), path.name


def test_objects_that_are_not_pictures_are_refused(tmp_path):
    with pytest.raises(NotAnImageError, match=r"segmentation \(SEG"):
        load_image(TEST_FILES / "liver_1frame.dcm")
    with pytest.raises(NotAnImageError, match="RT Dose"):
        load_image(TEST_FILES / "rtdose.dcm")


def test_intended_inputs_are_checked_in_plain_words(tmp_path):
    manifest = {"format_version": 1, "name": "m", "architecture": "resnet18", "classes": ["a", "b"],
                "input": {"channels": 1, "size": 64}, "weights": "model.safetensors"}
    for bad, words in [({"modalities": "DX"}, "must list DICOM values"), ({"colour": True}, "unknown keys colour"),
                       ({"min_size": [1]}, "min_size"), ({"non_dicom": "no"}, "true or false")]:
        with pytest.raises(ModelBundleError, match=words):
            parse_manifest({**manifest, "intended_inputs": bad}, tmp_path)
    bundle = parse_manifest({**manifest, "intended_inputs": {"modalities": ["dx"], "non_dicom": False}}, tmp_path)
    png = load_image(DEMO_STUDIES / "demo_nodule.png")
    assert "without DICOM tags" in bundle.intended_inputs.mismatches(png)[0]


@pytest.mark.parametrize("engine", DEMO_ENGINES)
def test_the_score_separates_a_phantom_from_a_ct_slice_on_every_engine(engine):
    model = load_model(DEMO_MODEL, engine)
    assert model.ood is not None and model.ood.threshold == model.ood.thresholds[engine]
    phantom = analyze(load_image(DEMO_STUDIES / "demo_normal.dcm"), model)
    ct = analyze(load_image(TEST_FILES / "CT_small.dcm"), model)
    assert not phantom.input_check.outside and phantom.input_check.score < model.ood.threshold
    assert ct.input_check.score > model.ood.threshold
    record = ct.to_dict("gradcam")["input_check"]
    assert record["outside_intended_use"] is True and record["ood_score"] > record["ood_threshold"]
    assert any("CT slice" in r for r in record["reasons"]) and any("score" in r for r in record["reasons"])


def test_a_bundle_without_statistics_says_so(tiny_bundle):
    model = load_model(tiny_bundle, "torch")
    assert model.ood is None
    result = analyze(load_image(DEMO_STUDIES / "demo_normal.dcm"), model).to_dict()
    assert result["input_check"]["ood_score"] is None
    assert result["input_check"]["note"] == NO_OOD_CHECK
    assert result["input_check"]["outside_intended_use"] is False


def test_statistics_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 16)) + np.repeat(np.eye(3, 16) * 4, 20, axis=0)
    labels = np.repeat(np.arange(3), 20)
    stats = fit_ood(features, labels, 3, other_engines={"onnx": features + 0.1})
    path = save_ood(stats, tmp_path)
    assert path.name == OOD_FILE
    head = path.read_bytes()[:16]
    assert not head.startswith((b"PK", b"\x80")), "a zip or pickle, not safetensors"
    loaded = load_ood(tmp_path, manifest_entry(stats), "onnx")
    np.testing.assert_allclose(loaded.means, stats.means)
    np.testing.assert_allclose(loaded.scores(features), stats.scores(features), rtol=1e-5)
    assert loaded.threshold == pytest.approx(stats.thresholds["onnx"], abs=1e-5)
    # About the stated share of in-distribution images lies above the threshold; far points all do.
    assert np.mean(stats.scores(features) > stats.threshold) <= 0.1
    assert (stats.scores(features + 50) > stats.threshold).all()
    with pytest.raises(ModelBundleError, match="could not be read"):
        (tmp_path / OOD_FILE).write_bytes(b"\x80\x04junk")
        load_ood(tmp_path, manifest_entry(stats))


def test_fitting_refuses_too_few_images():
    with pytest.raises(LanternError, match="at least 10 labelled images of every class; these have 12, 3"):
        fit_ood(np.zeros((15, 4)), np.r_[np.zeros(12), np.ones(3)].astype(int), 2)


def _labelled_folder(folder: Path, n: int) -> Path:
    images, _, labels = make_dataset(n, seed=777, size=128)
    folder.mkdir()
    lines = ["file,class"]
    for i, (image, label) in enumerate(zip(images, labels)):
        name = f"case{i:03d}.png"
        cv2.imwrite(str(folder / name), np.clip(image * 65535, 0, 65535).astype(np.uint16))
        lines.append(f"{name},{('normal', 'nodule', 'effusion')[label]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_evaluate_fits_and_stores_the_check_and_batch_reports_it(tmp_path, tiny_bundle):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    data = _labelled_folder(tmp_path / "data", 36)
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "evaluate", str(data), "--model", str(bundle),
                          "--engine", "torch", "--fit-ood", "--fit-temperature", "--out", str(tmp_path / "eval")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "fitted the out-of-distribution check on 36 images" in run.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["ood"]["file"] == OOD_FILE and "torch" in manifest["ood"]["thresholds"]
    assert "calibration" in manifest, "fitting one must not drop the other"
    # A random tiny model's features need not set a CT apart; its declared intended inputs do.
    manifest["intended_inputs"] = {"modalities": ["DX"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out, studies = tmp_path / "batch", tmp_path / "studies"
    studies.mkdir()
    for path in DEMO_STUDIES.glob("*.dcm"):
        shutil.copy(path, studies)
    shutil.copy(TEST_FILES / "CT_small.dcm", studies)
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(studies), "--out", str(out),
                          "--model", str(bundle), "--engine", "torch", "--mc", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    header, *rows = (out / "worklist.csv").read_text().splitlines()
    columns = header.split(",")
    assert {"outside_intended_use", "ood_score"} <= set(columns)
    assert rows and all(r.split(",")[columns.index("ood_score")] for r in rows)
    outside = {Path(r.split(",")[0]).name: r.split(",")[columns.index("outside_intended_use")] for r in rows}
    assert outside["CT_small.dcm"] == "yes"


def test_a_case_is_checked_image_by_image(demo):
    images = [load_image(DEMO_STUDIES / "demo_normal.dcm"), load_image(TEST_FILES / "CT_small.dcm")]
    check = check_inputs(demo.intended_inputs, images, None, None)
    assert check.outside and check.reasons[0].startswith("CT_small.dcm: ") and check.score is None


def test_reports_and_dicom_exports_carry_the_verdict(tmp_path):
    from engine.exports.dicom_export import export_dicom
    from engine.exports.report import render_report, report_entry

    model = load_model(DEMO_MODEL, "onnx-int8")
    image = load_image(TEST_FILES / "CT_small.dcm")
    analysis = analyze(image, model)
    html = render_report("t", [], [report_entry(image, analysis)], model.bundle, model.engine)
    assert "OUTSIDE WHAT THIS MODEL WAS MADE FOR: this model was made for chest radiographs" in html
    inside = analyze(load_image(DEMO_STUDIES / "demo_normal.dcm"), model)
    html = render_report("t", [], [report_entry(load_image(DEMO_STUDIES / "demo_normal.dcm"), inside)],
                         model.bundle, model.engine)
    assert "Within what the model was made for: out-of-distribution score" in html
    path = export_dicom(tmp_path / "ct-explained.dcm", image, analysis)
    ds = pydicom.dcmread(path)
    assert "OUTSIDE WHAT THE MODEL WAS MADE FOR" in ds.ImageComments and len(ds.DerivationDescription) <= 1024
    assert dciodvfy_errors(path) == []
