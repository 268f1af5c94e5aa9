"""Evaluation metrics against hand-computed values, temperature scaling, and the evaluate command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.trust.calibration import reliability_diagram
from engine.workflows.evaluation import (class_metrics, confusion_matrix, metrics, pointing_hit, pointing_tolerance,
                               roc_curve)
from engine.trust.temperature import fit_temperature, nll
from engine.uncertainty import calibrated_probabilities as tempered
from engine.resources import TEACHING_SET

CLASSES = ("normal", "nodule", "effusion")
TEACHING = TEACHING_SET

# Six cases worked by hand (see the comments in the test).
TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1],  # normal, called normal
    [0.4, 0.5, 0.1],  # normal, called nodule
    [0.2, 0.6, 0.2],  # nodule, called nodule
    [0.1, 0.3, 0.6],  # nodule, called effusion
    [0.1, 0.1, 0.8],  # effusion, called effusion
    [0.3, 0.3, 0.4],  # effusion, called effusion
])


def test_metrics_match_hand_computed_values():
    result = metrics(TRUE, PROBS, CLASSES)
    assert result["cases"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    normal, nodule, effusion = (result["per_class"][c] for c in CLASSES)
    # normal: TP 1, FN 1, FP 0, TN 4
    assert (normal["tp"], normal["fn"], normal["fp"], normal["tn"]) == (1, 1, 0, 4)
    assert (normal["sensitivity"], normal["specificity"], normal["ppv"]) == (0.5, 1.0, 1.0)
    assert normal["npv"] == pytest.approx(0.8)
    # nodule: TP 1, FN 1, FP 1, TN 3
    assert (nodule["sensitivity"], nodule["specificity"], nodule["ppv"], nodule["npv"]) == (0.5, 0.75, 0.5, 0.75)
    # effusion: TP 2, FN 0, FP 1, TN 3
    assert effusion["sensitivity"] == 1.0 and effusion["specificity"] == 0.75
    assert effusion["ppv"] == pytest.approx(2 / 3) and effusion["npv"] == 1.0
    # AUC, pairs of (positive, negative) won: every normal outranks every other case on p(normal);
    # nodule 0.6 wins 4 of 4, nodule 0.3 beats 0.2 and 0.1, ties 0.3 (half), loses to 0.5: 6.5 of 8;
    # effusion 0.8 wins 4, effusion 0.4 loses to one negative (0.6): 7 of 8.
    assert normal["auc"] == 1.0
    assert nodule["auc"] == pytest.approx(6.5 / 8)
    assert effusion["auc"] == pytest.approx(7 / 8)


def test_undefined_ratios_are_none_not_zero():
    # No case is ever called nodule: its PPV has nothing to count.
    (m,) = [class_metrics(confusion_matrix([0, 1], [0, 0], 3))[1]]
    assert m.tp == 0 and m.fp == 0 and m.ppv is None and m.sensitivity == 0.0
    assert metrics(np.array([0, 0]), np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]]), CLASSES)["roc"]["nodule"] is None


def test_roc_with_tied_scores_by_hand():
    roc = roc_curve(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool))
    # Thresholds inf, 0.9, 0.5 (the tie is one step), 0.1.
    assert roc.fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert roc.tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert roc.auc == pytest.approx(0.875)  # 2 + 1 + 0.5 (tie) of 4 pairs


def test_auc_equals_the_mann_whitney_probability():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(60), 1)  # rounded: plenty of ties
    positive = rng.random(60) < 0.4
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_curve(scores, positive).auc == pytest.approx(pairs / (len(pos) * len(neg)))


def test_pointing_game_tolerance_rule():
    mask = np.zeros((448, 448), bool)
    mask[100:120, 100:120] = True
    assert pointing_tolerance(224) == 15.0 and pointing_tolerance(448) == 30.0
    assert pointing_hit(mask, (110, 110), 0)
    assert not pointing_hit(mask, (110, 140), 0)  # 21 px right of the lesion
    assert pointing_hit(mask, (110, 140), pointing_tolerance(448))
    assert not pointing_hit(mask, (110, 160), pointing_tolerance(448))  # 41 px away
    assert not pointing_hit(np.zeros((10, 10), bool), (5, 5), 3.0)


def test_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(6000, 3))
    labels = np.array([rng.choice(3, p=p) for p in tempered(logits, 2.0)])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.08)
    assert nll(logits, labels, t) < min(nll(logits, labels, 1.0), nll(logits, labels, t * 1.2),
                                        nll(logits, labels, t / 1.2))
    # Temperature never changes the winner.
    assert (tempered(logits, t).argmax(1) == logits.argmax(1)).all()


def _copy_teaching(folder: Path) -> Path:
    shutil.copytree(TEACHING, folder)
    return folder


@pytest.mark.slow
def test_evaluate_command_writes_json_and_figures_and_never_overwrites(tmp_path, tiny_bundle, capsys):
    from engine.cli.main import main

    out = tmp_path / "out"
    assert main(["evaluate", str(TEACHING), "--model", str(tiny_bundle), "--engine", "torch", "--out", str(out)]) == 0
    assert main(["evaluate", str(TEACHING), "--model", str(tiny_bundle), "--engine", "torch", "--out", str(out)]) == 0
    first, second = out / "evaluation-teaching", out / "evaluation-teaching-2"
    for folder in (first, second):
        assert sorted(p.name for p in folder.iterdir()) == ["confusion.png", "metrics.json", "mistakes.csv",
                                                            "mistakes.png", "pr.png", "reliability.png", "roc.png"]
        for png in set(folder.glob("*.png")) - {folder / "mistakes.png"}:  # the contact sheet grows with them
            assert cv2.imread(str(png)).shape == (520, 640, 3)
    report = json.loads((first / "metrics.json").read_text())
    m = report["metrics"]
    assert m["cases"] == 14 and not report["skipped"]
    matrix = np.array(m["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.sum() == 14 and matrix.sum(axis=1).tolist() == [5, 5, 4]
    assert m["accuracy"] == pytest.approx(np.trace(matrix) / 14)
    # The reliability diagram is engine.trust.calibration's, from the same probabilities.
    probs = np.array([[c["probabilities"][k] for k in CLASSES] for c in report["cases"]])
    truth = np.array([CLASSES.index(c["true"]) for c in report["cases"]])
    expected = reliability_diagram(probs.max(1), probs.argmax(1) == truth)
    assert report["reliability"]["before"]["ece"] == pytest.approx(expected.ece, abs=1e-5)
    assert report["reliability"]["after"] is None and report["temperature"] == 1.0
    # Every lesion case (9) is scored by each of the three methods.
    assert set(report["pointing_game"]) == {"gradcam", "gradcam++", "layercam"}
    assert all(v["cases"] == 9 for v in report["pointing_game"].values())
    assert "accuracy" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_temperature_is_stored_in_the_bundle_and_applied_by_analyze(tmp_path, tiny_bundle):
    from engine import analyze, load_image, load_model
    from engine.bundle import load_bundle
    from engine.cli.main import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    image = load_image(TEACHING / "images" / "case01.png")
    before = analyze(image, load_model(bundle, "torch"))
    data = _copy_teaching(tmp_path / "set")
    (data / "images" / "case03.png").write_bytes(b"not an image")  # one unreadable case is skipped
    code = main(["evaluate", str(data), "--model", str(bundle), "--engine", "torch", "--out",
                 str(tmp_path / "out"), "--fit-temperature"])
    assert code == 1  # a case was skipped
    report = json.loads((tmp_path / "out" / "evaluation-set" / "metrics.json").read_text())
    assert [s["line"] for s in report["skipped"]] == [4] and report["metrics"]["cases"] == 13
    stored = load_bundle(bundle)
    t = stored.temperature
    assert t != 1.0 and stored.manifest["calibration"]["temperature"] == pytest.approx(t)
    assert stored.manifest["calibration"]["cases"] == 13
    assert report["temperature"] == pytest.approx(t, rel=1e-5)
    assert report["reliability"]["after"]["ece"] == pytest.approx(stored.manifest["calibration"]["ece_after"], abs=1e-5)
    after = analyze(image, load_model(bundle, "torch"))
    np.testing.assert_allclose(after.logits, before.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after.probabilities, tempered(before.logits, t), rtol=1e-4, atol=1e-6)
