"""What a batch remembers and writes besides per-image results: one row per analysed frame, the
record that makes a batch resumable, the worklist CSV, and the files it did not analyse.

The record (``<out>/.lantern-batch.json``) maps a key per image (path, size, modification time,
frame, model name and version, engine, options) to its finished row, and keeps the batch's
anonymization salt, so that a resumed batch gives the same pseudonyms. Its ``failures`` map a
key per file (or frame) to why it was not analysed, with the file's size and modification time
then: from them batch_failures.py decides what a resumed batch tries again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from engine.exports.anonymize import Pseudonymizer
from engine.errors import LanternError
from engine.files import safe_name, write_json_atomic

RECORD_NAME = ".lantern-batch.json"
RECORD_FORMAT = 1
CSV_COLUMNS = ("file", "frame", "patient_id", "study", "study_date", "predicted_class", "probability",
               "confidence", "flagged", "outside_intended_use", "ood_score", "result")


@dataclass(frozen=True)
class BatchItem:
    """One frame to analyse, with what the scan already knows about its study."""

    path: Path
    frame: int
    patient_id: str
    study: str
    study_date: str
    study_uid: str
    sop_instance_uid: str
    frames: int = 1  # in the file


@dataclass(frozen=True)
class BatchRow:
    path: Path
    frame: int
    patient_id: str  # a pseudonym when the batch is anonymized; "" when the file has none
    study: str
    study_date: str
    predicted_class: str
    probability: float
    confidence: float | None  # None when the model has no dropout or MC is off
    flagged: bool
    probabilities: dict[str, float]
    result: str  # the per-image result file, relative to the output folder
    # Outside what the model was made for (tags or out-of-distribution score), and why.
    outside: bool = False
    ood_score: float | None = None  # None: the model has no statistics
    outside_reasons: tuple[str, ...] = ()

    def to_record(self) -> dict:
        return asdict(self) | {"path": str(self.path)}

    @classmethod
    def from_record(cls, data: dict) -> "BatchRow":
        return cls(**(data | {"path": Path(data["path"]), "outside_reasons": tuple(data.get("outside_reasons", ()))}))


class BatchRecord:
    """The output folder's memory of finished images (and the anonymization salt)."""

    def __init__(self, out: Path):
        self.path = out / RECORD_NAME
        data = self._read()
        self.entries: dict[str, dict] = data.get("entries", {})
        # Files and frames not analysed, by failure_key (a record without them is an older one).
        self.failures: dict[str, dict] = data.get("failures", {})
        self.salt = bytes.fromhex(data["salt"]) if "salt" in data else secrets.token_bytes(16)

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LanternError(f"the batch record could not be read ({exc}); move it away to start over",
                               self.path) from exc
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise LanternError("the batch record is not one this Lantern wrote; move it away to start over",
                               self.path)
        return data

    def save(self) -> None:
        write_json_atomic(self.path, {"format": RECORD_FORMAT, "salt": self.salt.hex(), "entries": self.entries,
                                      "failures": self.failures})


def item_name(item: BatchItem, root: Path) -> str:
    """A file-name stem for an item's outputs: its path below the batch root, made safe."""
    try:
        relative = item.path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(item.path.name)
    stem = "__".join(relative.parts)
    stem = safe_name(stem, "image")
    return f"{stem}-frame{item.frame}" if item.frame else stem


def make_row(item: BatchItem, record: dict, result_file: str, pseudonyms: Pseudonymizer | None) -> BatchRow:
    """The worklist row for an item from its result record (analysis.to_dict() or the triage
    subset of it); with ``pseudonyms`` the patient and study are replaced, the date dropped."""
    uncertainty = record["uncertainty"]
    check = record.get("input_check") or {}
    predicted = record["predicted_class"]
    path, patient, study, study_date = item.path, item.patient_id, item.study, item.study_date
    if pseudonyms is not None:  # a folder of PNGs too: its name may be the patient's
        path = Path(pseudonyms.image_name(item.patient_id, item.path, item.frame))
        patient = pseudonyms.patient_id(patient)
        study, study_date = f"study {pseudonyms.short('study', item.study_uid)}", ""
    return BatchRow(
        path=path, frame=item.frame, patient_id=patient, study=study, study_date=study_date,
        predicted_class=predicted, probability=float(record["probabilities"][predicted]),
        confidence=float(uncertainty["confidence"]) if uncertainty else None,
        flagged=bool(uncertainty["flagged"]) if uncertainty else False,
        probabilities={k: float(v) for k, v in record["probabilities"].items()}, result=result_file,
        outside=bool(check.get("outside_intended_use")), ood_score=check.get("ood_score"),
        outside_reasons=tuple(check.get("reasons", ())))


def worklist_csv(rows: Iterable[BatchRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([str(r.path), r.frame, r.patient_id, r.study, r.study_date, r.predicted_class,
                         f"{r.probability:.4f}", "" if r.confidence is None else f"{r.confidence:.4f}",
                         "yes" if r.flagged else "no", "yes" if r.outside else "no",
                         "" if r.ood_score is None else f"{r.ood_score:.4f}", r.result])
    return buffer.getvalue().encode("utf-8")


def item_key(item: BatchItem, identity: list) -> str:
    """The record key: the file as it is now (path, size, mtime), the frame, and ``identity`` (model,
    engine, options): a changed file, model or option is new work, never mistaken for done."""
    stat = item.path.stat()
    parts = [str(item.path.resolve()), stat.st_size, stat.st_mtime_ns, item.frame, *identity]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def failure_key(path: Path, frame: int | None) -> str:
    """The record key of a file (``frame`` None) or frame not analysed: its path alone, as whether
    the file changed since is told by the size and time kept beside the failure. Hashed, like the
    entries' keys, so the record lists no path."""
    return hashlib.sha256(json.dumps(["failure", os.path.realpath(path), frame]).encode()).hexdigest()


def file_state(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns), or None when the file cannot be looked at."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns
