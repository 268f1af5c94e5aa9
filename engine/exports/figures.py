"""Evaluation figures as PNG, drawn with OpenCV (no plotting library, no Qt in the engine):
ROC curves, a confusion matrix and a reliability diagram, from ``build_report``'s plain data."""

from __future__ import annotations

import cv2
import numpy as np

from engine.exports.overlay import encode_png

WIDTH, HEIGHT = 640, 520
_LEFT, _TOP, _RIGHT, _BOTTOM = 70, 66, 20, 60
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK, _GREY, _LIGHT = (20, 20, 20), (150, 150, 150), (225, 225, 225)
# Colour-blind-safe (Okabe-Ito) RGB, one per class.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))


def _text(img, text: str, org, scale: float = 0.5, color=_BLACK, thickness: int = 1, center: bool = False):
    if center:
        (w, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        org = (int(org[0] - w / 2), int(org[1] + h / 2))
    cv2.putText(img, text, (int(org[0]), int(org[1])), _FONT, scale, color, thickness, cv2.LINE_AA)


class _UnitAxes:
    """A 0..1 by 0..1 plot area with ticks, grid and labels."""

    def __init__(self, img: np.ndarray, title: str, xlabel: str, ylabel: str):
        self.img = img
        self.x0, self.y0 = _LEFT, HEIGHT - _BOTTOM
        self.x1, self.y1 = WIDTH - _RIGHT, _TOP
        _text(img, title, (WIDTH / 2, 22), 0.6, center=True, thickness=2)
        for v in np.linspace(0, 1, 6):
            x, y = self.point(v, v)
            cv2.line(img, (x, self.y0), (x, self.y1), _LIGHT, 1)
            cv2.line(img, (self.x0, y), (self.x1, y), _LIGHT, 1)
            _text(img, f"{v:.1f}", (x, self.y0 + 14), 0.42, center=True)
            _text(img, f"{v:.1f}", (self.x0 - 34, y + 4), 0.42)
        cv2.rectangle(img, (self.x0, self.y1), (self.x1, self.y0), _BLACK, 1)
        _text(img, xlabel, ((self.x0 + self.x1) / 2, HEIGHT - 18), 0.5, center=True)
        _text(img, ylabel, (6, self.y1 - 12), 0.5)

    def point(self, x: float, y: float) -> tuple[int, int]:
        return (int(round(self.x0 + x * (self.x1 - self.x0))), int(round(self.y0 - y * (self.y0 - self.y1))))

    def polyline(self, xs, ys, color, thickness: int = 2) -> None:
        pts = np.array([self.point(x, y) for x, y in zip(xs, ys)], dtype=np.int32)
        cv2.polylines(self.img, [pts], False, color, thickness, cv2.LINE_AA)

    def dashed_diagonal(self) -> None:
        for a in np.arange(0, 1, 0.04):
            cv2.line(self.img, self.point(a, a), self.point(a + 0.02, a + 0.02), _GREY, 1, cv2.LINE_AA)

    def legend(self, entries: list[tuple[str, tuple]], corner: str = "bottom") -> None:
        x = self.x1 - 230
        y = self.y0 - 14 - 20 * (len(entries) - 1) if corner == "bottom" else self.y1 + 20
        for n, (label, color) in enumerate(entries):
            cv2.line(self.img, (x, y + 20 * n - 4), (x + 24, y + 20 * n - 4), color, 3)
            _text(self.img, label, (x + 32, y + 20 * n), 0.45)


def _canvas() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 255, np.uint8)


def roc_png(report: dict) -> bytes:
    img = _canvas()
    axes = _UnitAxes(img, "ROC curves (one class vs the rest)", "false positive rate (1 - specificity)",
                     "true positive rate (sensitivity)")
    axes.dashed_diagonal()
    entries = []
    for n, (name, roc) in enumerate(report["metrics"]["roc"].items()):
        color = PALETTE[n % len(PALETTE)]
        if roc is None:
            entries.append((f"{name}: needs both kinds", _GREY))
            continue
        axes.polyline(roc["fpr"], roc["tpr"], color)
        entries.append((f"{name}: AUC {roc['auc']:.3f}", color))
    axes.legend(entries)
    return encode_png(img)


def reliability_png(report: dict) -> bytes:
    img = _canvas()
    rel = report["reliability"]
    axes = _UnitAxes(img, "Reliability diagram", "confidence (top-class probability)", "accuracy")
    axes.dashed_diagonal()
    entries = []
    for key, color, shrink in (("before", (160, 190, 220), 0.0), ("after", (0, 114, 178), 0.25)):
        diagram = rel.get(key)
        if diagram is None:
            continue
        edges = diagram["edges"]
        for lo, hi, acc in zip(edges[:-1], edges[1:], diagram["accuracy"]):
            if acc is None:
                continue
            pad = (hi - lo) * shrink
            p0, p1 = axes.point(lo + pad, 0), axes.point(hi - pad, acc)
            cv2.rectangle(img, p0, p1, color, -1 if key == "before" else 2)
        label = "T = 1" if key == "before" else f"T = {report['temperature']:.3g}"
        entries.append((f"{key} ({label}): ECE {diagram['ece']:.3f}", color))
    axes.legend(entries, corner="top")
    return encode_png(img)


def confusion_png(report: dict) -> bytes:
    img = _canvas()
    confusion = report["metrics"]["confusion_matrix"]
    matrix = np.asarray(confusion["rows_true_columns_predicted"], dtype=np.int64)
    classes = confusion["classes"]
    n = len(classes)
    _text(img, "Confusion matrix (rows: true class, columns: predicted)", (WIDTH / 2, 22), 0.55,
          center=True, thickness=2)
    left, top = 150, 80
    cell = min((WIDTH - left - 20) // n, (HEIGHT - top - 40) // n)
    row_totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for r in range(n):
        _text(img, classes[r], (10, top + cell * r + cell / 2 + 5), 0.5)
        _text(img, classes[r], (left + cell * r + cell / 2, top - 14), 0.5, center=True)
        for c in range(n):
            share = matrix[r, c] / row_totals[r, 0]
            shade = tuple(int(255 - share * (255 - v)) for v in (0, 114, 178))
            p0 = (left + cell * c, top + cell * r)
            cv2.rectangle(img, p0, (p0[0] + cell, p0[1] + cell), shade, -1)
            cv2.rectangle(img, p0, (p0[0] + cell, p0[1] + cell), _GREY, 1)
            ink = (255, 255, 255) if share > 0.55 else _BLACK
            _text(img, str(matrix[r, c]), (p0[0] + cell / 2, p0[1] + cell / 2), 0.8, ink, 2, center=True)
    return encode_png(img)


FIGURES = {"roc.png": roc_png, "confusion.png": confusion_png, "reliability.png": reliability_png}
