"""A one-page report per study: self-contained HTML (pictures embedded as PNG data URIs), so it
opens in any browser offline, prints on one A4 page for a single image, and needs no PDF library.

Each image of the study gets its original and explanation side by side, the class
probabilities, the MC-dropout uncertainty, and the model card summary closes the page, with the
not-for-diagnosis notice at the top and bottom. A batch adds one summary page beside its study
reports (:func:`render_batch_summary`): what it analysed, and every file it did not, with why.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.analysis import Analysis
from engine.bundle import ModelBundle
from engine.errors import LanternError
from engine.files import unused_path, write_bytes_atomic
from engine.images import SourceImage
from engine.exports.overlay import encode_png
from engine.exports.pictures import NOT_FOR_DIAGNOSIS, chosen_map, side_by_side
from engine.cam import method_label

PICTURE_WIDTH = 1000  # px of the embedded side-by-side picture: sharp in print, small in bytes


@dataclass(frozen=True)
class ReportEntry:
    """One analysed image, reduced to what the report shows (kept small across a batch)."""

    label: str
    picture_png: bytes
    method: str
    class_name: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    uncertainty: dict | None
    uncertainty_note: str
    input_check: dict  # InputCheck.to_dict(): outside what the model was made for, and why


def report_entry(image: SourceImage, analysis: Analysis, method: str | None = None,
                 class_index: int | None = None, label: str | None = None) -> ReportEntry:
    """``label``: the entry's heading (default: the file name; an anonymized report passes the
    image's pseudonymous name, as file names often name the patient)."""
    method, index, _ = chosen_map(analysis, method, class_index)
    picture = side_by_side(image, analysis, method, index)
    if picture.shape[1] > PICTURE_WIDTH:
        height = round(picture.shape[0] * PICTURE_WIDTH / picture.shape[1])
        picture = cv2.resize(picture, (PICTURE_WIDTH, height), interpolation=cv2.INTER_AREA)
    if label is None:
        label = Path(image.path).name + (f", frame {image.frame + 1}" if image.n_frames > 1 else "")
    return ReportEntry(label, encode_png(np.ascontiguousarray(picture)), method, analysis.classes[index],
                       analysis.classes, tuple(float(p) for p in analysis.probabilities),
                       analysis.uncertainty.to_dict() if analysis.uncertainty else None, analysis.uncertainty_note,
                       analysis.input_check.to_dict())


_CSS = """
body { font: 13px/1.4 system-ui, sans-serif; color: #111; margin: 18px auto; max-width: 1000px; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 14px 0 4px; }
.notice { background: #fff3cd; border: 1px solid #e0b800; padding: 6px 10px; font-weight: 600; }
img { width: 100%; border: 1px solid #999; }
table { border-collapse: collapse; margin: 4px 0; } td, th { padding: 2px 10px 2px 0; text-align: left; }
.flag { color: #a00; font-weight: 600; } .muted { color: #555; }
@page { size: A4; margin: 12mm; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _entry_html(entry: ReportEntry) -> str:
    uri = "data:image/png;base64," + base64.b64encode(entry.picture_png).decode("ascii")
    rows = "".join(f"<tr><td>{_e(c)}</td><td>{p:.1%}</td></tr>" for c, p in zip(entry.classes, entry.probabilities))
    u = entry.uncertainty
    if u is None:
        uncertainty = f"<p class='muted'>{_e(entry.uncertainty_note or 'No uncertainty estimate.')}</p>"
    else:
        flag = ("<span class='flag'>FLAGGED: low confidence, review carefully</span>" if u["flagged"]
                else "not flagged")
        uncertainty = (f"<table><tr><td>Confidence</td><td>{u['confidence']:.2f} (flag below {u['threshold']:.2f}): "
                       f"{flag}</td></tr><tr><td>Predictive entropy</td><td>{u['predictive_entropy']:.3f} nats</td></tr>"
                       f"<tr><td>Mutual information</td><td>{u['mutual_information']:.3f} nats (the model's own "
                       f"uncertainty)</td></tr><tr><td>MC-dropout samples</td><td>{u['samples']}</td></tr></table>")
    check = entry.input_check
    if check["outside_intended_use"]:
        checked = ("<p class='flag'>OUTSIDE WHAT THIS MODEL WAS MADE FOR: " + _e("; ".join(check["reasons"]))
                   + ". The map explains the model's answer, which means little here.</p>")
    elif check["ood_score"] is None:
        checked = f"<p class='muted'>{_e(check['note'])}.</p>"
    else:
        checked = (f"<p class='muted'>Within what the model was made for: out-of-distribution score "
                   f"{check['ood_score']:.1f} (threshold {check['ood_threshold']:.1f}).</p>")
    return (f"<h2>{_e(entry.label)}</h2>{checked}<img alt='original and {_e(method_label(entry.method))} explanation' "
            f"src='{uri}'><p>Left: the image. Right: the {_e(method_label(entry.method))} map for class "
            f"<b>{_e(entry.class_name)}</b>.</p><table><tr><th>Class</th><th>Probability</th></tr>{rows}</table>"
            f"{uncertainty}")


def _model_card_html(bundle: ModelBundle, engine: str) -> str:
    card = bundle.model_card
    metrics = card.get("metrics") or {}
    lines = [("Model", f"{bundle.name} {bundle.version} ({bundle.architecture}, {engine} engine)"),
             ("Classes", ", ".join(bundle.classes)),
             ("Intended use", bundle.intended_use or "not stated"),
             ("Summary", card.get("summary", "")),
             ("Reported accuracy", f"{metrics['accuracy']:.1%} on {metrics.get('heldout_phantoms', '?')} held-out "
                                   f"images" if isinstance(metrics.get("accuracy"), (int, float)) else ""),
             ("Limitations", card.get("limitations", ""))]
    if bundle.synthetic_demo:
        lines.append(("Training data", "synthetic phantoms only: says nothing about real patients"))
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in lines if v)
    return f"<h2>Model card</h2><table>{rows}</table>"


def render_report(title: str, details: list[tuple[str, str]], entries: list[ReportEntry], bundle: ModelBundle,
                  engine: str) -> str:
    """The report's HTML. ``details`` are the study's (label, value) lines, already anonymized
    when the export is."""
    if not entries:
        raise LanternError("a report needs at least one analysed image")
    head = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in details)
    body = "".join(_entry_html(e) for e in entries)
    notice = f"<p class='notice'>{_e(NOT_FOR_DIAGNOSIS)}. Made by Lantern from a local model.</p>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{notice}<table>{head}</table>{body}"
            f"{_model_card_html(bundle, engine)}{notice}</body></html>\n")


def render_batch_summary(title: str, counts: list[tuple[str, str]], reports: list[tuple[str, str]],
                         failed: list[tuple[str, str, str]], skipped: list[tuple[str, str]]) -> str:
    """A batch's summary page: ``counts`` as (label, value) lines, links to the study ``reports``
    as (label, href), and every file not analysed, so a reader of the reports knows what is
    missing from them: ``failed`` as (file, reason, worth retrying), ``skipped`` (not images) as
    (file, reason). File labels are already pseudonyms when the batch is anonymized."""
    head = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in counts)
    links = "".join(f"<li><a href='{_e(href)}'>{_e(label)}</a></li>" for label, href in reports)
    parts = [f"<h2>Study reports</h2><ul>{links}</ul>" if links else ""]
    if failed:
        rows = "".join(f"<tr><td>{_e(f)}</td><td>{_e(why)}</td><td>{_e(retry)}</td></tr>" for f, why, retry in failed)
        parts.append(f"<h2 class='flag'>Not analysed: {len(failed)} failed</h2><p>These should be images but could "
                     "not be read, decoded or analysed; they are in none of the reports.</p><table><tr><th>File</th>"
                     f"<th>Reason</th><th>Worth retrying</th></tr>{rows}</table>")
    if skipped:
        rows = "".join(f"<tr><td>{_e(f)}</td><td>{_e(why)}</td></tr>" for f, why in skipped)
        parts.append(f"<h2>Skipped: {len(skipped)} not images</h2><table><tr><th>File</th><th>Reason</th></tr>"
                     f"{rows}</table>")
    if not failed and not skipped:
        parts.append("<p class='muted'>Every file found was analysed.</p>")
    notice = f"<p class='notice'>{_e(NOT_FOR_DIAGNOSIS)}. Made by Lantern from a local model.</p>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{notice}<table>{head}</table>{''.join(parts)}"
            f"{notice}</body></html>\n")


def write_report(path: str | Path, html_text: str) -> Path:
    return write_bytes_atomic(unused_path(path), html_text.encode("utf-8"))


def study_details(image: SourceImage, anonymized_id: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The report's title and study lines from the image's own metadata; with ``anonymized_id``
    (a pseudonym) no name, ID, date or description of the patient's study appears."""
    meta = image.metadata
    if anonymized_id is not None:  # before anything else: a folder's name may be the patient's
        return f"Lantern report: {anonymized_id}", [("Patient", anonymized_id), ("Modality", meta.modality or "—")]
    if not meta.study_uid:  # PNG/JPEG/TIFF: no patient data in the file
        return f"Lantern report: {Path(image.path).parent.name}", [("Source", "image file without patient data")]
    details = [("Patient", f"{meta.patient_name} ({meta.patient_id})"), ("Study", meta.study_description),
               ("Study date", meta.study_date), ("Modality", meta.modality)]
    return f"Lantern report: {meta.study_description or meta.patient_id or 'study'}", [d for d in details if d[1]]
