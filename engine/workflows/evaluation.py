"""Classification metrics from true labels and predicted probabilities, written with numpy.

One-vs-rest per class: sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP),
NPV TN/(TN+FN); a ratio with nothing to count (0/0) is ``None``, never a made-up 0. ROC and
precision-recall curves rank cases by the class probability; tied scores form one step (one
threshold), so the AUC equals the Mann-Whitney probability that a random positive outranks a
random negative (ties count half), and the average precision is the step sum
AP = sum_k (R_k - R_{k-1}) P_k over the thresholds, without interpolation (the figure
scikit-learn's ``average_precision_score`` gives; tests/engine/workflows checks every figure
here against scikit-learn, which the packaged app does not ship).
The pointing game (Zhang et al.) is shared with the demo model's card (engine/making/training.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The original pointing game allows 15 pixels at 224-pixel scale.
POINTING_TOLERANCE_AT_224 = 15.0


def pointing_tolerance(width: int) -> float:
    """The original game's 15-pixel tolerance, scaled to an image ``width`` pixels wide."""
    return POINTING_TOLERANCE_AT_224 * width / 224.0


def pointing_hit(mask: np.ndarray, peak: tuple[int, int], tolerance: float) -> bool:
    """Zhang et al.'s pointing game: the map's peak lies on the lesion, or within ``tolerance``
    pixels of it (0 = strictly inside)."""
    if mask[peak]:
        return True
    if tolerance <= 0 or not mask.any():
        return False
    rows, cols = np.nonzero(mask)
    return bool(np.min((rows - peak[0]) ** 2 + (cols - peak[1]) ** 2) <= tolerance**2)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


@dataclass(frozen=True)
class ClassMetrics:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def sensitivity(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fn)

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "sensitivity": self.sensitivity, "specificity": self.specificity,
                "ppv": self.ppv, "npv": self.npv}


def class_metrics(matrix: np.ndarray) -> list[ClassMetrics]:
    total = int(matrix.sum())
    out = []
    for c in range(matrix.shape[0]):
        tp = int(matrix[c, c])
        fn = int(matrix[c].sum()) - tp
        fp = int(matrix[:, c].sum()) - tp
        out.append(ClassMetrics(tp, fp, fn, total - tp - fn - fp))
    return out


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray  # from 0 to 1
    tpr: np.ndarray
    thresholds: np.ndarray  # score at or above which a case is called positive (inf first)
    auc: float

    def to_dict(self) -> dict:
        return {"auc": self.auc, "fpr": [round(float(v), 6) for v in self.fpr],
                "tpr": [round(float(v), 6) for v in self.tpr],
                "thresholds": [None if not np.isfinite(t) else round(float(t), 6) for t in self.thresholds]}


def _ranked_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct score from the highest down: that score, and the true and false
    positives among the cases scored at or above it (the one ranking ROC and PR curves share)."""
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    # The last index of every run of equal scores: one point per distinct threshold.
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tps = np.cumsum(p)[ends]
    return s[ends], tps, (ends + 1) - tps


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> RocCurve | None:
    """The ROC curve of ``scores`` for the boolean ``positive``; None without both kinds."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    thresholds, tps, fps = _ranked_counts(scores, positive)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return RocCurve(fpr, tpr, np.r_[np.inf, thresholds], auc)


@dataclass(frozen=True)
class PrecisionRecallCurve:
    recall: np.ndarray  # from 0 up to 1, one point per threshold after the (0, 1) start
    precision: np.ndarray  # precision[k] holds on the recall step (recall[k-1], recall[k]]
    thresholds: np.ndarray  # score at or above which a case is called positive (inf first)
    average_precision: float

    def to_dict(self) -> dict:
        return {"average_precision": self.average_precision,
                "recall": [round(float(v), 6) for v in self.recall],
                "precision": [round(float(v), 6) for v in self.precision],
                "thresholds": [None if not np.isfinite(t) else round(float(t), 6) for t in self.thresholds]}


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> PrecisionRecallCurve | None:
    """The precision-recall curve of ``scores`` for the boolean ``positive``, with its average
    precision; None without a positive case (recall is then undefined). It starts at recall 0,
    precision 1, as a plot of it does (scikit-learn's last point, its arrays being reversed)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    thresholds, tps, fps = _ranked_counts(scores, positive)
    recall = np.r_[0.0, tps / n_pos]
    precision = np.r_[1.0, tps / (tps + fps)]  # tps + fps >= 1 at every threshold
    ap = float(np.sum(np.diff(recall) * precision[1:]))
    return PrecisionRecallCurve(recall, precision, np.r_[np.inf, thresholds], ap)


def metrics(true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, confusion matrix, per-class one-vs-rest metrics, ROC and precision-recall
    curves, as plain data."""
    true = np.asarray(true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(true, predicted, len(classes))
    per_class = class_metrics(matrix)
    rocs = {name: roc_curve(probabilities[:, c], true == c) for c, name in enumerate(classes)}
    prs = {name: precision_recall_curve(probabilities[:, c], true == c) for c, name in enumerate(classes)}
    return {
        "cases": int(len(true)),
        "accuracy": float(np.mean(predicted == true)) if len(true) else None,
        "confusion_matrix": {"rows_true_columns_predicted": matrix.tolist(), "classes": list(classes)},
        "per_class": {name: m.to_dict() | {"auc": rocs[name].auc if rocs[name] else None,
                                           "average_precision": prs[name].average_precision if prs[name] else None}
                      for name, m in zip(classes, per_class)},
        "roc": {name: roc.to_dict() if roc else None for name, roc in rocs.items()},
        "precision_recall": {name: pr.to_dict() if pr else None for name, pr in prs.items()},
    }
