"""Every figure Lantern computes by hand with numpy, checked against scikit-learn's (the dev extra;
the packaged app never imports it): ROC curve and AUC, precision-recall curve and average
precision, the confusion matrix and the calibration curve, on random scores and on scores with
many ties (rounded), where step conventions differ most."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_curve as sk_precision_recall_curve
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from engine.trust.calibration import reliability_diagram
from engine.workflows.evaluation import confusion_matrix, metrics, precision_recall_curve, roc_curve

CLASSES = ("normal", "nodule", "effusion", "mass")


def scored_cases(seed: int, ties: bool, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Scores in 0..1 and a boolean truth that follows them loosely; ``ties``: scores rounded to
    one decimal, so most thresholds hold several cases of both kinds."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    positive = rng.random(n) < 0.25 + 0.5 * scores
    return (np.round(scores, 1) if ties else scores), positive


CASES = [(seed, ties) for seed in range(4) for ties in (False, True)]


@pytest.mark.parametrize("seed,ties", CASES)
def test_roc_curve_and_auc_match_sklearn(seed, ties):
    scores, positive = scored_cases(seed, ties)
    roc = roc_curve(scores, positive)
    fpr, tpr, thresholds = sk_roc_curve(positive, scores, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr)
    np.testing.assert_allclose(roc.tpr, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], thresholds[1:])  # the first is inf (or max + 1) in both
    assert roc.auc == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    if ties:
        assert len(roc.fpr) <= 12  # one point per distinct score (11) after the start: ties are one step


@pytest.mark.parametrize("seed,ties", CASES)
def test_precision_recall_curve_and_average_precision_match_sklearn(seed, ties):
    scores, positive = scored_cases(seed, ties)
    pr = precision_recall_curve(scores, positive)
    precision, recall, thresholds = sk_precision_recall_curve(positive, scores)
    # scikit-learn lists the points from the lowest threshold up and ends at (recall 0, precision 1);
    # Lantern starts there and goes down the thresholds: the same points, reversed.
    np.testing.assert_allclose(pr.recall, recall[::-1])
    np.testing.assert_allclose(pr.precision, precision[::-1])
    np.testing.assert_allclose(pr.thresholds[1:], thresholds[::-1])
    assert pr.average_precision == pytest.approx(average_precision_score(positive, scores), abs=1e-12)


def test_average_precision_by_hand_and_the_edge_cases():
    pr = precision_recall_curve(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool))
    # thresholds 0.9 (1 of 1 right, recall 1/2), 0.5 (the tie: 2 of 3, recall 1), 0.1 (2 of 4)
    assert pr.recall.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert pr.precision.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert pr.average_precision == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert precision_recall_curve(np.array([0.3, 0.7]), np.array([False, False])) is None  # recall undefined
    only_positives = precision_recall_curve(np.array([0.3, 0.7]), np.array([True, True]))
    assert only_positives.average_precision == average_precision_score([1, 1], [0.3, 0.7]) == 1.0


@pytest.mark.parametrize("seed,ties", CASES)
def test_per_class_figures_of_a_report_match_sklearn_one_vs_rest(seed, ties):
    rng = np.random.default_rng(100 + seed)
    true = rng.integers(0, len(CLASSES), 150)
    logits = rng.normal(size=(150, len(CLASSES))) + 1.5 * np.eye(len(CLASSES))[true]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if ties:
        probabilities = np.round(probabilities, 1)  # argmax ties too: both take the first maximum
    result = metrics(true, probabilities, CLASSES)
    predicted = probabilities.argmax(1)
    assert result["confusion_matrix"]["rows_true_columns_predicted"] == sk_confusion_matrix(
        true, predicted, labels=range(len(CLASSES))).tolist()
    for c, name in enumerate(CLASSES):
        figures = result["per_class"][name]
        assert figures["auc"] == pytest.approx(roc_auc_score(true == c, probabilities[:, c]), abs=1e-12)
        assert figures["average_precision"] == pytest.approx(
            average_precision_score(true == c, probabilities[:, c]), abs=1e-12)
        assert result["precision_recall"][name]["average_precision"] == figures["average_precision"]


def test_confusion_matrix_matches_sklearn_with_classes_never_seen():
    rng = np.random.default_rng(7)
    true = rng.choice([0, 2, 3], 80)  # class 1 never true
    predicted = rng.choice([0, 1, 3], 80)  # class 2 never predicted
    ours = confusion_matrix(true, predicted, 4)
    np.testing.assert_array_equal(ours, sk_confusion_matrix(true, predicted, labels=[0, 1, 2, 3]))
    assert ours[1].sum() == 0 and ours[:, 2].sum() == 0


@pytest.mark.parametrize("seed,ties", CASES)
def test_reliability_bins_match_sklearns_calibration_curve(seed, ties):
    rng = np.random.default_rng(200 + seed)
    confidence = rng.random(300)
    if ties:
        # Tied at the bins' centres (0.05, 0.15, ...). Not on their edges: there the two differ
        # by float rounding alone (0.3 is just below the 0.30000000000000004 numpy's linspace
        # makes, so scikit-learn bins it low, while Lantern's index 0.3 * 10 rounds up to 3).
        confidence = np.floor(confidence * 10) / 10 + 0.05
    correct = rng.random(300) < confidence
    ours = reliability_diagram(confidence, correct, bins=10)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform", pos_label=True)
    filled = ours.counts > 0  # scikit-learn leaves empty bins out
    np.testing.assert_allclose(ours.accuracy[filled], accuracy)
    np.testing.assert_allclose(ours.mean_confidence[filled], mean_confidence)
