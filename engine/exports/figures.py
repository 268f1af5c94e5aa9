"""Figures as PNG, drawn with OpenCV (no plotting library, no Qt in the engine), from plain data:
an evaluation's ROC and precision-recall curves, confusion matrix and reliability diagram
(``build_report``), a contact sheet of its mistakes, and a batch's uncertainty report
(engine/workflows/uncertainty_report.py). OpenCV's fonts are ASCII only: so is every label."""

from __future__ import annotations

from dataclasses import dataclass

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


class _Axes:
    """A plot area in ``box`` (left, top, right, bottom pixels of the image; default all of it)
    over ``xlim`` by ``ylim``, with ticks, grid and labels."""

    def __init__(self, img: np.ndarray, title: str, xlabel: str, ylabel: str, box=None, xlim=(0.0, 1.0),
                 ylim=(0.0, 1.0), xfmt: str = "{:.1f}", yfmt: str = "{:.1f}"):
        left, top, right, bottom = box or (0, 0, WIDTH, HEIGHT)
        self.img, self.xlim, self.ylim = img, xlim, ylim
        self.x0, self.y0 = left + _LEFT, bottom - _BOTTOM
        self.x1, self.y1 = right - _RIGHT, top + _TOP
        _text(img, title, ((left + right) / 2, top + 22), 0.6, center=True, thickness=2)
        for u, v in zip(np.linspace(*xlim, 6), np.linspace(*ylim, 6)):
            x, y = self.point(u, v)
            cv2.line(img, (x, self.y0), (x, self.y1), _LIGHT, 1)
            cv2.line(img, (self.x0, y), (self.x1, y), _LIGHT, 1)
            _text(img, xfmt.format(u), (x, self.y0 + 14), 0.42, center=True)
            label = yfmt.format(v)
            (w, _), _ = cv2.getTextSize(label, _FONT, 0.42, 1)
            _text(img, label, (self.x0 - 6 - w, y + 4), 0.42)  # right-aligned on the axis
        cv2.rectangle(img, (self.x0, self.y1), (self.x1, self.y0), _BLACK, 1)
        _text(img, xlabel, ((self.x0 + self.x1) / 2, bottom - 18), 0.5, center=True)
        _text(img, ylabel, (left + 6, self.y1 - 12), 0.5)

    def point(self, x: float, y: float) -> tuple[int, int]:
        fx = (x - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1.0)
        fy = (y - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1.0)
        return (int(round(self.x0 + fx * (self.x1 - self.x0))), int(round(self.y0 - fy * (self.y0 - self.y1))))

    def polyline(self, xs, ys, color, thickness: int = 2) -> None:
        pts = np.array([self.point(x, y) for x, y in zip(xs, ys)], dtype=np.int32)
        cv2.polylines(self.img, [pts], False, color, thickness, cv2.LINE_AA)

    def dashed_diagonal(self) -> None:
        for a in np.arange(0, 1, 0.04):
            cv2.line(self.img, self.point(a, a), self.point(a + 0.02, a + 0.02), _GREY, 1, cv2.LINE_AA)

    def legend(self, entries: list[tuple[str, tuple]], corner: str = "bottom") -> None:
        """``corner``: top or bottom (right side), top-left or bottom-left."""
        x = self.x0 + 14 if corner.endswith("-left") else self.x1 - 230
        y = self.y1 + 20 if corner.startswith("top") else self.y0 - 14 - 20 * (len(entries) - 1)
        for n, (label, color) in enumerate(entries):
            cv2.line(self.img, (x, y + 20 * n - 4), (x + 24, y + 20 * n - 4), color, 3)
            _text(self.img, label, (x + 32, y + 20 * n), 0.45)


def _canvas() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 255, np.uint8)


def roc_png(report: dict) -> bytes:
    img = _canvas()
    axes = _Axes(img, "ROC curves (one class vs the rest)", "false positive rate (1 - specificity)",
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


def pr_steps(recall, precision) -> tuple[list[float], list[float]]:
    """A precision-recall curve as drawn: precision[k] holds over the recall step
    (recall[k-1], recall[k]], the rectangles the average precision sums (so the picture and
    the AP agree; a straight line between points would show more area than AP counts)."""
    xs, ys = [float(recall[0])], [float(precision[0])]
    for k in range(1, len(recall)):
        xs += [float(recall[k - 1]), float(recall[k])]
        ys += [float(precision[k])] * 2
    return xs, ys


def pr_png(report: dict) -> bytes:
    img = _canvas()
    axes = _Axes(img, "Precision-recall curves (one class vs the rest)", "recall (sensitivity)",
                 "precision (PPV)")
    entries = []
    for n, (name, pr) in enumerate(report["metrics"]["precision_recall"].items()):
        color = PALETTE[n % len(PALETTE)]
        if pr is None:
            entries.append((f"{name}: no positive case", _GREY))
            continue
        axes.polyline(*pr_steps(pr["recall"], pr["precision"]), color)
        entries.append((f"{name}: AP {pr['average_precision']:.3f}", color))
    axes.legend(entries, corner="bottom-left")
    return encode_png(img)


def reliability_png(report: dict) -> bytes:
    img = _canvas()
    rel = report["reliability"]
    axes = _Axes(img, "Reliability diagram", "confidence (top-class probability)", "accuracy")
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


FIGURES = {"roc.png": roc_png, "pr.png": pr_png, "confusion.png": confusion_png, "reliability.png": reliability_png}


def nice_ceiling(value: float) -> int:
    """A count axis's top: a multiple of 5 (at least 5), so its six ticks are whole numbers."""
    return max(5, int(np.ceil(value / 5.0)) * 5)


def _histogram(img, box, title: str, xlabel: str, histogram: dict, classes: list[str]) -> _Axes:
    edges = histogram["edges"]
    counts = np.array([histogram["counts"][c] for c in classes], dtype=np.int64).reshape(len(classes), -1)
    axes = _Axes(img, title, xlabel, "images", box, (edges[0], edges[-1]), (0, nice_ceiling(counts.sum(0).max())),
                 xfmt="{:.2g}", yfmt="{:.0f}")
    bottom = np.zeros(counts.shape[1], dtype=np.int64)
    for n, row in enumerate(counts):  # stacked: one colour per predicted class
        for lo, hi, base, count in zip(edges[:-1], edges[1:], bottom, row):
            if count:
                cv2.rectangle(img, axes.point(lo, base), axes.point(hi, base + count), PALETTE[n % len(PALETTE)], -1)
                cv2.rectangle(img, axes.point(lo, base), axes.point(hi, base + count), (255, 255, 255), 1)
        bottom += row
    return axes


def uncertainty_png(summary: dict) -> bytes:
    """A batch's uncertainty (engine/workflows/uncertainty_report.summarize): a stacked histogram
    per measure, one colour per predicted class, and the flagged count against the threshold."""
    img = np.full((2 * HEIGHT, 2 * WIDTH, 3), 255, np.uint8)
    classes = summary["classes"]
    boxes = [(0, 0, WIDTH, HEIGHT), (WIDTH, 0, 2 * WIDTH, HEIGHT), (0, HEIGHT, WIDTH, 2 * HEIGHT)]
    for box, (measure, histogram) in zip(boxes, summary["histograms"].items()):
        counted = sum(map(sum, histogram["counts"].values()))  # fewer than all if a result was unreadable
        axes = _histogram(img, box, f"{histogram['title']} ({counted} images)", histogram["label"], histogram, classes)
        if measure == "confidence":
            axes.legend([(f"predicted {c}", PALETTE[n % len(PALETTE)]) for n, c in enumerate(classes)], "top")
    curve, threshold = summary["threshold_curve"], summary["threshold"]
    axes = _Axes(img, "Flagged images against the threshold", "flag when confidence is below", "flagged images",
                 (WIDTH, HEIGHT, 2 * WIDTH, 2 * HEIGHT), (0.0, 1.0),
                 (0, nice_ceiling(max(curve["flagged"][-1], 1))), yfmt="{:.0f}")
    axes.polyline(curve["thresholds"], curve["flagged"], PALETTE[0])
    for y in np.linspace(0, axes.ylim[1], 40)[::2]:  # the batch's threshold, dashed
        cv2.line(img, axes.point(threshold, y), axes.point(threshold, y + axes.ylim[1] / 40), _GREY, 1)
    cv2.circle(img, axes.point(threshold, summary["flagged"]), 6, PALETTE[1], -1, cv2.LINE_AA)
    axes.legend([(f"{summary['flagged']} of {summary['images']} flagged at {threshold:.2f}", PALETTE[1])], "top-left")
    return encode_png(img)


@dataclass(frozen=True)
class Tile:
    picture: np.ndarray | None  # uint8 RGB, at most TILE pixels a side; None: could not be read
    lines: tuple[str, ...]  # caption, ASCII
    color: tuple[int, int, int]  # frame colour (RGB)


TILE, COLUMNS_PER_SHEET = 150, 6


def contact_sheet_png(title: str, tiles: list[Tile]) -> bytes:
    """Tiles in rows of COLUMNS_PER_SHEET: each picture framed in its colour, its caption below."""
    cell_w, cell_h = TILE + 24, TILE + 26 + 16 * max((len(t.lines) for t in tiles), default=0)
    rows = max(1, -(-len(tiles) // COLUMNS_PER_SHEET))
    img = np.full((50 + rows * cell_h, max(WIDTH, COLUMNS_PER_SHEET * cell_w + 20), 3), 255, np.uint8)
    _text(img, title, (img.shape[1] / 2, 22), 0.6, center=True, thickness=2)
    for n, tile in enumerate(tiles):
        x, y = 20 + (n % COLUMNS_PER_SHEET) * cell_w, 50 + (n // COLUMNS_PER_SHEET) * cell_h
        cv2.rectangle(img, (x - 3, y - 3), (x + TILE + 2, y + TILE + 2), tile.color, 3)
        if tile.picture is None:
            cv2.rectangle(img, (x, y), (x + TILE - 1, y + TILE - 1), _LIGHT, -1)
            _text(img, "not readable", (x + TILE / 2, y + TILE / 2), 0.45, _GREY, center=True)
        else:
            h, w = tile.picture.shape[:2]
            top, left = y + (TILE - h) // 2, x + (TILE - w) // 2
            img[top:top + h, left:left + w] = tile.picture
        for k, line in enumerate(tile.lines):
            _text(img, line, (x, y + TILE + 20 + 16 * k), 0.42)
    return encode_png(img)
