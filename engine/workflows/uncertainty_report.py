"""A batch's uncertainty, dataset-wide: how confidence, predictive entropy and mutual information
spread over the images (per predicted class), how many images the threshold flags and how that
count moves with the threshold, and the flagged images themselves as CSV and JSON.

The figures come from the batch's rows and the per-image result files they point to (a row keeps
only the confidence; entropy and mutual information are in the result). What identifies an image
is the row's own path, patient and study, which are already pseudonyms when the batch was
anonymized, so an anonymized batch's report stays anonymous: nothing else is read into it.
Shared by ``lantern-engine batch`` and the viewer's worklist.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from engine.exports.figures import uncertainty_png
from engine.exports.pictures import NOT_FOR_DIAGNOSIS
from engine.files import unused_path, write_bytes_atomic, write_json_atomic
from engine.uncertainty import DEFAULT_THRESHOLD
from engine.workflows.batch_record import BatchRow

PNG_NAME, HTML_NAME = "uncertainty-report.png", "uncertainty-report.html"
CSV_NAME, JSON_NAME = "flagged.csv", "flagged.json"
BINS = 20
CURVE_POINTS = 101  # thresholds 0, 0.01, ..., 1
# measure -> (title, axis label); the confidence runs 0..1, entropy 0..log C, mutual information
# over the range it takes (it is usually far below log C, which would squeeze it into one bin).
MEASURES = {"confidence": ("Confidence", "confidence (1 - entropy / log C)"),
            "predictive_entropy": ("Predictive entropy", "predictive entropy (nats)"),
            "mutual_information": ("Mutual information", "mutual information (nats, the model's own)")}


@dataclass(frozen=True)
class UncertaintyReport:
    images: tuple[dict, ...]  # one record per row: identity, prediction, uncertainty (see image_record)
    summary: dict  # histograms and the threshold curve (summarize)

    @property
    def flagged(self) -> list[dict]:
        return [image for image in self.images if image["flagged"]]


def image_record(row: BatchRow, uncertainty: dict | None) -> dict:
    """What the report says about one image; ``uncertainty`` is its result file's, if readable."""
    u = uncertainty or {}
    return {"file": str(row.path), "frame": row.frame, "patient_id": row.patient_id, "study": row.study,
            "study_date": row.study_date, "predicted_class": row.predicted_class, "probability": row.probability,
            "probabilities": dict(row.probabilities), "confidence": row.confidence,
            "predictive_entropy": u.get("predictive_entropy"), "mutual_information": u.get("mutual_information"),
            "mc_samples": u.get("samples", 0), "flagged": row.flagged, "outside_intended_use": row.outside,
            "result": row.result}


def _read_uncertainty(out: Path, row: BatchRow) -> tuple[dict | None, bool]:
    """(the result file's uncertainty, whether the file could be read)."""
    try:
        return json.loads((out / row.result).read_text(encoding="utf-8")).get("uncertainty"), True
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None, False


def summarize(images: list[dict], classes: list[str], threshold: float, unreadable: int = 0) -> dict:
    """Plain data for the figures: stacked histograms (counts per predicted class) and the count
    of images whose confidence is below each threshold from 0 to 1."""
    measured = [i for i in images if i["confidence"] is not None]
    histograms = {}
    for measure, (title, label) in MEASURES.items():
        values = np.array([i[measure] for i in measured if i[measure] is not None], dtype=np.float64)
        top = {"confidence": 1.0, "predictive_entropy": float(np.log(len(classes)))}.get(measure)
        top = top if top is not None else max(float(values.max()) if values.size else 0.0, 1e-3)
        edges = np.linspace(0.0, top, BINS + 1)
        counts = {c: np.histogram([i[measure] for i in measured if i["predicted_class"] == c
                                   and i[measure] is not None], edges)[0].tolist() for c in classes}
        histograms[measure] = {"title": title, "label": label, "edges": [round(float(e), 6) for e in edges],
                               "counts": counts}
    confidences = np.sort([i["confidence"] for i in measured])
    thresholds = np.linspace(0.0, 1.0, CURVE_POINTS)
    flagged_at = np.searchsorted(confidences, thresholds, side="left")  # confidence < t is flagged
    return {"images": len(images), "with_uncertainty": len(measured), "unreadable_results": unreadable,
            "threshold": threshold, "flagged": sum(i["flagged"] for i in images),
            "flagged_by_class": {c: sum(i["flagged"] for i in images if i["predicted_class"] == c) for c in classes},
            "classes": list(classes), "histograms": histograms,
            "threshold_curve": {"thresholds": [round(float(t), 6) for t in thresholds],
                                "flagged": [int(n) for n in flagged_at]}}


def uncertainty_report(out: str | Path, rows: Iterable[BatchRow], threshold: float | None = None) -> UncertaintyReport:
    """The report of a batch written to ``out``. ``threshold``: the batch's (default: the one its
    result files record, else DEFAULT_THRESHOLD); the rows' flags were set with it."""
    out, rows = Path(out), list(rows)
    images, unreadable, recorded = [], 0, None
    for row in rows:
        uncertainty, readable = _read_uncertainty(out, row)
        unreadable += not readable
        if uncertainty and recorded is None:
            recorded = uncertainty.get("threshold")
        images.append(image_record(row, uncertainty))
    threshold = float(threshold if threshold is not None else recorded if recorded is not None else DEFAULT_THRESHOLD)
    classes = list(rows[0].probabilities) if rows else []
    return UncertaintyReport(tuple(images), summarize(images, classes, threshold, unreadable))


def _number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def flagged_csv(report: UncertaintyReport) -> bytes:
    """The flagged images, least confident first: identity, prediction, each class's probability
    and the uncertainty."""
    classes = report.summary["classes"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "frame", "patient_id", "study", "study_date", "predicted_class", "probability",
                     *(f"p_{c}" for c in classes), "confidence", "predictive_entropy", "mutual_information",
                     "mc_samples", "outside_intended_use", "result"])
    for i in sorted(report.flagged, key=lambda i: i["confidence"]):
        writer.writerow([i["file"], i["frame"], i["patient_id"], i["study"], i["study_date"], i["predicted_class"],
                         _number(i["probability"]), *(_number(i["probabilities"].get(c)) for c in classes),
                         _number(i["confidence"]), _number(i["predictive_entropy"]),
                         _number(i["mutual_information"]), i["mc_samples"],
                         "yes" if i["outside_intended_use"] else "no", i["result"]])
    return buffer.getvalue().encode("utf-8")


def flagged_json(report: UncertaintyReport) -> dict:
    s = report.summary
    return {"threshold": s["threshold"], "images": s["images"], "with_uncertainty": s["with_uncertainty"],
            "flagged": s["flagged"], "flagged_by_class": s["flagged_by_class"],
            "cases": sorted(report.flagged, key=lambda i: i["confidence"])}


def _image_label(image: dict) -> str:
    return image["file"] + (f", frame {image['frame'] + 1}" if image["frame"] else "")


def report_html(report: UncertaintyReport, png: bytes) -> str:
    """One self-contained page: the counts, the figure (embedded) and the flagged images."""
    s, e = report.summary, html.escape
    rows = "".join(f"<tr><td>{e(_image_label(i))}</td>"
                   f"<td>{e(i['patient_id'])}</td><td>{e(i['study'])}</td><td>{e(i['predicted_class'])}</td>"
                   f"<td>{i['probability']:.1%}</td><td>{_number(i['confidence'], 3)}</td>"
                   f"<td>{_number(i['predictive_entropy'], 3)}</td><td>{_number(i['mutual_information'], 3)}</td></tr>"
                   for i in flagged_json(report)["cases"])
    by_class = ", ".join(f"{e(c)} {n}" for c, n in s["flagged_by_class"].items())
    notice = f"<p style='background:#fff3cd;padding:6px'><b>{e(NOT_FOR_DIAGNOSIS)}</b>. Made by Lantern.</p>"
    missing = s["images"] - s["with_uncertainty"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Lantern uncertainty report"
            "</title><style>body{font:13px/1.4 system-ui,sans-serif;max-width:1300px;margin:18px auto}"
            "img{width:100%}td,th{padding:2px 10px 2px 0;text-align:left}</style></head><body>"
            f"<h1>Uncertainty over the batch</h1>{notice}<p>{s['images']} image(s); {s['flagged']} flagged "
            f"(confidence below {s['threshold']:.2f}): {by_class}."
            + (f" {missing} image(s) without an MC-dropout estimate." if missing else "")
            + f"</p><img alt='uncertainty histograms and flagged count against the threshold' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'><h2>Flagged images, least "
            f"confident first</h2><table><tr><th>Image</th><th>Patient</th><th>Study</th><th>Predicted</th>"
            f"<th>Probability</th><th>Confidence</th><th>Entropy</th><th>Mutual information</th></tr>{rows}"
            f"</table>{notice}</body></html>\n")


def write_uncertainty_report(report: UncertaintyReport, out: str | Path, html_page: bool = False) -> list[Path]:
    """The figure, flagged.csv and flagged.json in ``out`` (and, with ``html_page``, the page),
    each under a fresh name (an earlier report is never overwritten) and written atomically."""
    out = Path(out)
    png = uncertainty_png(report.summary)
    written = [write_bytes_atomic(unused_path(out / PNG_NAME), png),
               write_bytes_atomic(unused_path(out / CSV_NAME), flagged_csv(report)),
               write_json_atomic(unused_path(out / JSON_NAME), flagged_json(report))]
    if html_page:
        written.append(write_bytes_atomic(unused_path(out / HTML_NAME), report_html(report, png).encode("utf-8")))
    return written
