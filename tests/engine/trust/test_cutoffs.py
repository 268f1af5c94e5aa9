import json

import pytest

from engine.bundle import DEFAULT_CUTOFF, parse_manifest
from engine.trust.calibration import calibration_status, evaluation_reliability, reliability_diagram
from engine.errors import LanternError, ModelBundleError

BASE = {
    "format_version": 1, "name": "m", "architecture": "resnet18", "classes": ["normal", "nodule", "effusion"],
    "input": {"channels": 1, "size": [64, 64]}, "onnx": {"int8": "model.int8.onnx"},
}


def test_cutoffs_default_to_one_half_and_override_per_class(tmp_path):
    bundle = parse_manifest({**BASE, "cutoffs": {"nodule": 0.3}}, tmp_path)
    assert [bundle.cutoff(i) for i in range(3)] == [DEFAULT_CUTOFF, 0.3, DEFAULT_CUTOFF]
    assert parse_manifest(BASE, tmp_path).cutoffs == {}


@pytest.mark.parametrize("cutoffs, words", [
    ({"pneumonia": 0.5}, "not one of the classes"),
    ({"nodule": 1.5}, "probability in 0..1"),
    ({"nodule": True}, "probability in 0..1"),
    ([0.5], "should map class names"),
])
def test_bad_cutoffs_are_named(tmp_path, cutoffs, words):
    with pytest.raises(ModelBundleError, match=words):
        parse_manifest({**BASE, "cutoffs": cutoffs}, tmp_path)


def test_calibration_status_from_the_bundle(tmp_path):
    never = calibration_status(parse_manifest(BASE, tmp_path))
    assert not never.calibrated and "never been calibrated" in never.warning
    diagram = reliability_diagram([0.9, 0.8, 0.6], [1, 1, 0], bins=5)
    measured = calibration_status(parse_manifest({**BASE, "model_card": {"reliability": diagram.to_dict()}}, tmp_path))
    assert measured.calibrated and measured.warning == ""
    assert measured.ece == pytest.approx(diagram.ece, abs=1e-6) and measured.diagram.total == 3
    fitted = calibration_status(parse_manifest(
        {**BASE, "calibration": {"temperature": 1.7, "ece_after": 0.03, "fitted_on": "labels.csv", "cases": 40}},
        tmp_path))
    assert fitted.calibrated and fitted.ece == 0.03 and "labels.csv" in fitted.source
    with pytest.raises(ModelBundleError, match="model_card.reliability"):
        calibration_status(parse_manifest({**BASE, "model_card": {"reliability": {"edges": [0, 1]}}}, tmp_path))


def test_reliability_from_an_evaluation_file(tmp_path):
    diagram = reliability_diagram([0.9, 0.4], [1, 0], bins=4)
    good = tmp_path / "metrics.json"
    good.write_text(json.dumps({"reliability": {"before": diagram.to_dict(), "after": None}}))
    assert evaluation_reliability(good).counts.tolist() == diagram.counts.tolist()
    broken = tmp_path / "other.json"
    broken.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(LanternError, match="other.json: holds no reliability diagram"):
        evaluation_reliability(broken)
    with pytest.raises(LanternError, match="not a JSON file"):
        evaluation_reliability(tmp_path / "x.json" if (tmp_path / "x.json").write_bytes(b"\xff\x00") else None)
