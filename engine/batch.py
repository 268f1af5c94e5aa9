"""Batch triage: every image of a folder or DICOMDIR through one loaded model, resumably.

``batch_steps`` is a generator like ``analysis.analysis_steps``: it yields :class:`Progress`
between chunks of images (a caller cancels by closing it) and returns a :class:`BatchResult`.

What it computes is what a worklist needs: probabilities and the MC-dropout confidence that flags
an image, the same figures the viewer shows for it. Without ``method`` no maps are made and the
images go through the engine in batches (the ONNX engines return the head input with the logits,
so MC dropout reuses it); with ``method`` each image gets a full ``analyze`` with that one method,
and ``on_analysis`` receives it (exports).

Resuming: ``<out>/.lantern-batch.json`` records each finished image under a key made of its path,
size, modification time, frame, the model's name and version, the engine and the options. An
image whose key is recorded is not analysed again. Nothing is written outside ``out``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable

import numpy as np

from .analysis import Analysis, AnalysisOptions, LoadedModel, Progress, analyze
from .anonymize import Pseudonymizer
from .errors import LanternError
from .files import unused_path, write_bytes_atomic, write_json_atomic
from .images import SourceImage, load_image
from .preprocess import prepare_input
from .studies import scan_studies
from .uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD, UncertaintySummary, softmax

RECORD_NAME = ".lantern-batch.json"
RECORD_FORMAT = 1
CSV_NAME = "worklist.csv"
CSV_COLUMNS = ("file", "frame", "patient_id", "study", "study_date", "predicted_class", "probability",
               "confidence", "flagged", "result")


@dataclass(frozen=True)
class BatchOptions:
    method: str | None = None  # None: triage only (no maps, batched forward)
    mc_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    confidence_threshold: float = DEFAULT_THRESHOLD
    chunk: int = 16  # images per forward batch, and per progress step
    anonymize: bool = False


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

    def to_record(self) -> dict:
        return asdict(self) | {"path": str(self.path)}

    @classmethod
    def from_record(cls, data: dict) -> "BatchRow":
        return cls(**(data | {"path": Path(data["path"])}))


@dataclass(frozen=True)
class BatchResult:
    out: Path
    rows: tuple[BatchRow, ...]
    failures: tuple[tuple[Path, str], ...]  # files not analysed, with the reason in plain words
    analysed: int  # newly analysed in this run
    reused: int  # found in the record from an earlier run
    csv: Path | None = None
    written: tuple[Path, ...] = field(default=())  # exports made by ``on_analysis``


def batch_items(source: str | Path) -> tuple[list[BatchItem], list[tuple[Path, str]]]:
    """Every frame of every image under ``source`` (a folder or a DICOMDIR), and what was skipped."""
    scan = scan_studies(source)
    items = []
    for study in scan.studies:
        for series in study.series:
            for ref in series.images:
                for frame in range(ref.frames):
                    items.append(BatchItem(ref.path, frame, study.patient_id, study.description,
                                           study.study_date, study.study_uid, ref.sop_instance_uid))
    return items, list(scan.skipped)


def check_output_folder(source: Path, out: Path) -> None:
    """Results are never mixed with sources: refuse an output folder inside the scanned one."""
    root = source if source.is_dir() else source.parent
    if out.resolve() == root.resolve() or out.resolve().is_relative_to(root.resolve()):
        raise LanternError("the output folder is inside the folder being analysed; choose one outside it, "
                           "so that results are never written beside the source images", out)


def _item_key(item: BatchItem, model: LoadedModel, options: BatchOptions) -> str:
    stat = item.path.stat()
    parts = [str(item.path.resolve()), stat.st_size, stat.st_mtime_ns, item.frame, model.bundle.name,
             model.bundle.version, model.engine, options.method, options.mc_samples, options.seed,
             options.confidence_threshold, options.anonymize]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class BatchRecord:
    """The output folder's memory of finished images (and the anonymization salt)."""

    def __init__(self, out: Path):
        self.path = out / RECORD_NAME
        data = self._read()
        self.entries: dict[str, dict] = data.get("entries", {})
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
        write_json_atomic(self.path, {"format": RECORD_FORMAT, "salt": self.salt.hex(), "entries": self.entries})


def item_name(item: BatchItem, root: Path) -> str:
    """A file-name stem for an item's outputs: its path below the batch root, made safe."""
    try:
        relative = item.path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(item.path.name)
    stem = "__".join(relative.parts)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("_") or "image"
    return f"{stem}-frame{item.frame}" if item.frame else stem


def _triage_record(item: BatchItem, model: LoadedModel, logits: np.ndarray,
                   uncertainty: UncertaintySummary | None, note: str) -> dict:
    classes = model.bundle.classes
    probabilities = softmax(logits.astype(np.float64))
    return {
        "source": str(item.path), "frame": item.frame,
        "model": {"name": model.bundle.name, "version": model.bundle.version}, "engine": model.engine,
        "classes": list(classes),
        "logits": [round(float(v), 6) for v in logits],
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probabilities)},
        "predicted_class": classes[int(np.argmax(probabilities))],
        "methods": [],
        "uncertainty": uncertainty.to_dict() if uncertainty else None,
        "uncertainty_note": note,
    }


def _uncertainty(model: LoadedModel, head_input: np.ndarray, options: BatchOptions):
    if options.mc_samples <= 1:
        return None, "Monte-Carlo dropout was switched off for this batch."
    if not model.backend.has_dropout:
        return None, "This model has no dropout in its head, so MC-dropout uncertainty is unavailable."
    samples = model.backend.mc_logits(head_input, options.mc_samples, options.seed)
    return UncertaintySummary.from_logit_samples(samples, options.confidence_threshold), ""


def logits_and_head_inputs(model: LoadedModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, C) and head inputs (B, F) for a batch, in one engine call where the engine allows.

    The ONNX explain graph returns the head input beside the logits with its gradient branch
    off; the PyTorch engine has no such call, so it explains one image at a time.
    """
    if model.engine in ("onnx", "onnx-int8"):
        feed = {"input": np.ascontiguousarray(batch, dtype=np.float32), "with_gradients": np.array(False)}
        logits, head_input = model.backend.sessions.model.run(["logits", "head_input"], feed)
        return logits, head_input
    outputs = [model.backend.explain(batch[i : i + 1]) for i in range(len(batch))]
    return np.stack([o.logits for o in outputs]), np.stack([o.head_input for o in outputs])


def _row(item: BatchItem, record: dict, result_file: str, pseudonyms: Pseudonymizer | None) -> BatchRow:
    uncertainty = record["uncertainty"]
    predicted = record["predicted_class"]
    patient, study, study_date = item.patient_id, item.study, item.study_date
    if pseudonyms is not None and not item.study_uid.startswith("folder:"):  # a PNG folder has no PHI
        patient = pseudonyms.patient_id(patient)
        study, study_date = f"study {pseudonyms.short('study', item.study_uid)}", ""
    return BatchRow(
        path=item.path, frame=item.frame, patient_id=patient, study=study, study_date=study_date,
        predicted_class=predicted, probability=float(record["probabilities"][predicted]),
        confidence=float(uncertainty["confidence"]) if uncertainty else None,
        flagged=bool(uncertainty["flagged"]) if uncertainty else False,
        probabilities={k: float(v) for k, v in record["probabilities"].items()}, result=result_file)


def batch_steps(source: str | Path, out: str | Path, model: LoadedModel, options: BatchOptions = BatchOptions(),
                on_analysis: Callable[[SourceImage, Analysis, BatchItem, Pseudonymizer | None], Iterable[Path]] | None = None,
                ) -> Generator[Progress, None, BatchResult]:
    source, out = Path(source), Path(out)
    check_output_folder(source, out)
    items, failures = batch_items(source)
    out.mkdir(parents=True, exist_ok=True)
    record = BatchRecord(out)
    pseudonyms = Pseudonymizer(record.salt) if options.anonymize else None
    root = source if source.is_dir() else source.parent
    rows: dict[int, BatchRow] = {}
    todo: list[tuple[int, BatchItem, str]] = []
    for index, item in enumerate(items):
        try:
            key = _item_key(item, model, options)
        except OSError as exc:
            failures.append((item.path, f"could not be read: {exc.strerror or exc}"))
            continue
        if key in record.entries:
            rows[index] = BatchRow.from_record(record.entries[key])
        else:
            todo.append((index, item, key))
    reused, written = len(rows), []
    total = len(todo)
    yield Progress(f"{reused} already analysed, {total} to go", 0, max(total, 1))
    for start in range(0, total, options.chunk):
        chunk = todo[start : start + options.chunk]
        done = _analyse_chunk(chunk, model, options, on_analysis, pseudonyms, failures, written)
        for index, item, key, analysis_record in done:
            target = unused_path(out / "results" / f"{item_name(item, root)}.json")
            write_json_atomic(target, analysis_record)
            row = _row(item, analysis_record, target.relative_to(out).as_posix(), pseudonyms)
            rows[index] = row
            record.entries[key] = row.to_record()
        record.save()  # after every chunk: a cancelled batch resumes from here
        step = min(start + options.chunk, total)
        yield Progress(f"analysed {step} of {total}", step, total)
    ordered = tuple(rows[i] for i in sorted(rows))
    csv_path = write_bytes_atomic(unused_path(out / CSV_NAME), worklist_csv(ordered, out))
    return BatchResult(out, ordered, tuple(failures), len(ordered) - reused, reused, csv_path, tuple(written))


def _load(item: BatchItem, failures: list) -> SourceImage | None:
    try:
        return load_image(item.path, item.frame)
    except LanternError as exc:
        failures.append((item.path, exc.reason))
        return None


def _analyse_chunk(chunk, model: LoadedModel, options: BatchOptions, on_analysis, pseudonyms, failures,
                   written) -> list:
    loaded = [(index, item, key, _load(item, failures)) for index, item, key in chunk]
    loaded = [entry for entry in loaded if entry[3] is not None]
    if options.method is not None:
        analysis_options = AnalysisOptions(methods=(options.method,), mc_samples=options.mc_samples,
                                           seed=options.seed, confidence_threshold=options.confidence_threshold)
        done = []
        for index, item, key, image in loaded:
            analysis = analyze(image, model, analysis_options)
            if on_analysis is not None:
                written.extend(on_analysis(image, analysis, item, pseudonyms))
            done.append((index, item, key, analysis.to_dict() | {"method": options.method}))
        return done
    if not loaded:
        return []
    batch = np.concatenate([prepare_input(image, model.bundle.input).tensor for *_, image in loaded])
    logits, head_inputs = logits_and_head_inputs(model, batch)
    done = []
    for (index, item, key, _image), item_logits, head_input in zip(loaded, logits, head_inputs):
        uncertainty, note = _uncertainty(model, head_input, options)
        done.append((index, item, key, _triage_record(item, model, item_logits, uncertainty, note)))
    return done


def worklist_csv(rows: Iterable[BatchRow], out: Path) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([str(r.path), r.frame, r.patient_id, r.study, r.study_date, r.predicted_class,
                         f"{r.probability:.4f}", "" if r.confidence is None else f"{r.confidence:.4f}",
                         "yes" if r.flagged else "no", r.result])
    return buffer.getvalue().encode("utf-8")


def run_batch(source, out, model: LoadedModel, options: BatchOptions = BatchOptions(), on_analysis=None,
              progress: Callable[[Progress], None] | None = None) -> BatchResult:
    steps = batch_steps(source, out, model, options, on_analysis)
    while True:
        try:
            update = next(steps)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(update)
