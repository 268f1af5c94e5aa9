"""Batch triage: every image of a folder or DICOMDIR through one loaded model, resumably.

``batch_steps`` is a generator like ``analysis.analysis_steps``: it yields :class:`Progress`
between chunks of images (a caller cancels by closing it) and returns a :class:`BatchResult`.

What it computes is what a worklist needs: probabilities and the MC-dropout confidence that flags
an image, the same figures the viewer shows for it. Without ``method`` no maps are made and the
images go through the engine in batches (the ONNX engines return the head input with the logits,
so MC dropout reuses it); with ``method`` each image gets a full ``analyze`` with that one method,
and ``on_analysis`` receives it (exports).

Three stages overlap: one thread loads and prepares the next chunk while the engine runs the
current one, and another writes results (each file fsync'ed by files.py) behind them. The record
(batch_record.py) is saved every few seconds and when the batch ends or is closed, so a
cancelled batch resumes where it stopped. Nothing is written outside ``out``.

No one file stops a batch: whatever goes wrong while scanning, reading, decoding, analysing or
exporting it becomes that file's reason, in ``failures.csv`` beside the worklist and in the
record, which tells a resumed batch what is worth trying again (batch_failures.py).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable

import numpy as np

from engine.analysis import Analysis, AnalysisOptions, LoadedModel, analyze, mc_uncertainty
from engine.result import result_record
from engine.steps import Progress, run_to_end
from engine.exports.anonymize import Pseudonymizer
from engine.workflows.batch_failures import (FAILED, RETRY_ALWAYS, SKIPPED, CSV_NAME as FAILURES_CSV_NAME, FailureLog,
                                             NotAnalysed, belongs_to_one_file, failures_csv, load_failure)
from engine.workflows.batch_record import BatchItem, BatchRecord, BatchRow, item_key, item_name, make_row, worklist_csv
from engine.dicom_header import short_cause
from engine.errors import LanternError
from engine.files import unused_path, write_bytes_atomic, write_json_atomic
from engine.images import SourceImage, load_image
from engine.intended_inputs import check_inputs
from engine.preprocess import prepare_input
from engine.studies import ScanResult
from engine.workflows.batch_sources import BatchSource, as_source, scan_source, source_exists, source_root
from engine.uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD, calibrated_probabilities

CSV_NAME = "worklist.csv"
SAVE_EVERY_S = 3.0  # record saves: often enough to lose little on a crash, rare enough to cost little

Exporter = Callable[[SourceImage, Analysis, BatchItem, "Pseudonymizer | None"], Iterable[Path]]
# (chunks, model, options, keep images and analyses for exports) -> per chunk, in order: (done, failures).
ChunkRunner = Callable[[list, "LoadedModel", "BatchOptions", bool], Generator[tuple[list, list], None, None]]


@dataclass(frozen=True)
class BatchOptions:
    method: str | None = None  # None: triage only (no maps, batched forward)
    mc_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    confidence_threshold: float = DEFAULT_THRESHOLD
    chunk: int = 16  # images per forward batch, and per progress step
    anonymize: bool = False

    def identity(self) -> list:
        """What, besides the file and the model, makes a result what it is."""
        return [self.method, self.mc_samples, self.seed, self.confidence_threshold, self.anonymize]


@dataclass(frozen=True)
class BatchResult:
    out: Path
    rows: tuple[BatchRow, ...]
    failures: tuple[tuple[Path, str], ...]  # files (or frames) not analysed, failed and skipped, with the reason
    analysed: int  # newly analysed in this run
    reused: int  # found in the record from an earlier run
    csv: Path | None = None
    written: tuple[Path, ...] = field(default=())  # exports made by ``on_analysis``
    failed: tuple[NotAnalysed, ...] = ()  # images (or so they seemed) that could not be read, decoded or analysed
    skipped: tuple[NotAnalysed, ...] = ()  # files that are not images
    failures_csv: Path | None = None


@dataclass(frozen=True)
class BatchProgress(Progress):
    """A batch's progress with its counts so far: frames analysed in this run and found done
    in the record; files (or frames) failed and skipped, earlier runs' unchanged ones included."""

    analysed: int = 0
    reused: int = 0
    failed: int = 0
    skipped: int = 0


def batch_items(source: BatchSource, leave_out=None) -> tuple[list[BatchItem], ScanResult]:
    """Every frame of every image under ``source`` (a folder, a DICOMDIR or a FileList), and the
    scan (what it skipped or could not read). ``leave_out``: see :func:`engine.studies.scan_studies`."""
    scan = scan_source(as_source(source), leave_out=leave_out)
    items = []
    for study in scan.studies:
        for series in study.series:
            for ref in series.images:
                for frame in range(ref.frames):
                    items.append(BatchItem(ref.path, frame, study.patient_id, study.description,
                                           study.study_date, study.study_uid, ref.sop_instance_uid, ref.frames))
    return items, scan


def check_output_folder(source: BatchSource, out: Path) -> None:
    """Results are never mixed with sources: refuse an output folder inside the scanned one."""
    root = source_root(as_source(source)).resolve()
    if out.resolve() == root or out.resolve().is_relative_to(root):
        raise LanternError("the output folder is inside the folder being analysed; choose one outside it, "
                           "so that results are never written beside the source images", out)


def _triage_record(item: BatchItem, model: LoadedModel, logits: np.ndarray, options: BatchOptions,
                   head_input: np.ndarray, image: SourceImage) -> dict:
    """A triage's result (no maps) in the one result schema."""
    uncertainty, note = mc_uncertainty(model, head_input, options.mc_samples, options.seed,
                                       options.confidence_threshold)
    bundle = model.bundle
    return result_record(source=item.path, frame=item.frame, model_name=bundle.name, model_version=bundle.version,
                         engine=model.engine, classes=bundle.classes, logits=logits,
                         probabilities=calibrated_probabilities(logits, bundle.temperature),
                         uncertainty=uncertainty, uncertainty_note=note,
                         input_check=check_inputs(bundle.intended_inputs, [image], model.ood, head_input))


def _load_chunk(chunk, model: LoadedModel, options: BatchOptions):
    """Runs on the loader thread: images (and, for triage, model inputs), and each failure as
    (item, reason, status, retry)."""
    loaded, failures = [], []
    for index, item, key in chunk:
        try:
            image = load_image(item.path, item.frame, with_tags=False)  # a batch never shows them
        except BaseException as exc:
            if not belongs_to_one_file(exc):
                raise
            failures.append((item, *load_failure(exc)))
            continue
        try:
            tensor = prepare_input(image, model.bundle.input).tensor if options.method is None else None
        except Exception as exc:
            failures.append((item, f"could not be prepared for the model: {short_cause(exc)}", FAILED, RETRY_ALWAYS))
            continue
        loaded.append((index, item, key, image, tensor))
    return loaded, failures


def _analysis_failed(item: BatchItem, what: str, exc: Exception) -> tuple:
    # The model, its engine or the exports may be what failed, not the file: worth trying again.
    return item, f"{what}: {short_cause(exc)}", FAILED, RETRY_ALWAYS


def _analyse(loaded, model: LoadedModel, options: BatchOptions, keep: bool = False) -> tuple[list[tuple], list]:
    """The results of the images in ``loaded`` as (index, item, key, result, image, analysis),
    the image and Analysis only with ``keep`` (for exports), and the failures (as _load_chunk's)."""
    done, failures = [], []
    if options.method is not None:
        analysis_options = AnalysisOptions(methods=(options.method,), mc_samples=options.mc_samples,
                                           seed=options.seed, confidence_threshold=options.confidence_threshold)
        for index, item, key, image, _ in loaded:
            try:
                analysis = analyze(image, model, analysis_options)
            except Exception as exc:
                failures.append(_analysis_failed(item, "the analysis failed", exc))
                continue
            kept = (image, analysis) if keep else (None, None)  # only exports need them, and cost a transfer
            done.append((index, item, key, analysis.to_dict(options.method), *kept))
        return done, failures
    if not loaded:
        return done, failures
    try:
        outputs = list(zip(loaded, *model.backend.forward_features(np.concatenate([entry[4] for entry in loaded]))))
    except Exception:  # one image must not cost the others of its chunk their results: each alone
        outputs = []
        for entry in loaded:
            try:
                logits, head_inputs = model.backend.forward_features(entry[4])
                outputs.append((entry, logits[0], head_inputs[0]))
            except Exception as exc:
                failures.append(_analysis_failed(entry[1], "the analysis failed", exc))
    for (index, item, key, image, _), item_logits, head_input in outputs:
        try:
            done.append((index, item, key, _triage_record(item, model, item_logits, options, head_input, image),
                         None, None))
        except Exception as exc:
            failures.append(_analysis_failed(item, "the analysis failed", exc))
    return done, failures


def analyse_chunk(chunk, model: LoadedModel, options: BatchOptions, keep: bool = False) -> tuple[list, list]:
    """One chunk of (index, item, key) from file to result, as a Ray worker runs it
    (engine.workflows.ray_batch): the same two steps the local batch overlaps on two threads."""
    loaded, failures = _load_chunk(chunk, model, options)
    done, more = _analyse(loaded, model, options, keep)
    return done, failures + more


def local_chunks(chunks, model: LoadedModel, options: BatchOptions, keep: bool):
    """The local batch's results, chunk by chunk in order: a loader thread prepares the next
    chunk while the engine runs this one. A ChunkRunner, as ray_batch.ray_runner's are."""
    loader = ThreadPoolExecutor(1, thread_name_prefix="lantern-batch-load")
    try:
        upcoming = loader.submit(_load_chunk, chunks[0], model, options) if chunks else None
        for n in range(len(chunks)):
            loaded, load_failures = upcoming.result()
            if n + 1 < len(chunks):
                upcoming = loader.submit(_load_chunk, chunks[n + 1], model, options)
            done, analysis_failures = _analyse(loaded, model, options, keep)
            yield done, load_failures + analysis_failures
    finally:  # a cancelled batch does not wait for chunks nobody will see
        loader.shutdown(wait=True, cancel_futures=True)


def _export(done: list, on_analysis: Exporter, pseudonyms: Pseudonymizer | None, written: list) -> tuple[list, list]:
    """On the thread running the batch, wherever the analyses ran: an image is not done unless its
    exports are written (a resumed batch redoes it)."""
    kept, failures = [], []
    for entry in done:
        try:
            written.extend(on_analysis(entry[4], entry[5], entry[1], pseudonyms))
        except Exception as exc:
            failures.append(_analysis_failed(entry[1], "its exports could not be written", exc))
            continue
        kept.append(entry)
    return kept, failures


def _failed_frame(item: BatchItem) -> int | None:
    """The frame a failure names: None (the whole file) when the file has only the one, so that
    a resumed batch need not even scan an unchanged file that failed."""
    return item.frame if item.frames > 1 else None


def _fresh_path(path: Path, claimed: set[Path]) -> Path:
    """unused_path, also avoiding names this run has handed out but not yet written."""
    candidate, n = unused_path(path), 2
    while candidate in claimed:
        candidate, n = unused_path(path.with_name(f"{path.stem}-{n}{path.suffix}")), n + 1
    claimed.add(candidate)
    return candidate


def _write_result(record: BatchRecord, key: str, row: BatchRow, target: Path, data: dict) -> None:
    """Runs on the writer thread, which alone touches the record until the batch ends."""
    write_json_atomic(target, data)
    record.entries[key] = row.to_record()


def _raise_failed_writes(writes: list[Future]) -> None:
    for future in [f for f in writes if f.done()]:
        future.result()  # re-raises a failed write (disk full, permissions) here
        writes.remove(future)


def batch_steps(source: BatchSource, out: str | Path, model: LoadedModel, options: BatchOptions = BatchOptions(),
                on_analysis: Exporter | None = None, on_row: Callable[[BatchRow], None] | None = None,
                runner: ChunkRunner | None = None) -> Generator[Progress, None, BatchResult]:
    """``on_row`` hears of every row as soon as it is known (reused ones first), on the thread
    running the batch: a worklist fills while the batch runs. ``runner`` computes the chunks'
    results (default local_chunks; engine.workflows.ray_batch on a cluster); this thread alone
    exports and writes them."""
    source, out = as_source(source), Path(out)
    model.bundle.require_single_input("a batch over a folder")
    if not source_exists(source):
        raise LanternError("the folder or file to analyse does not exist", source)
    check_output_folder(source, out)
    out.mkdir(parents=True, exist_ok=True)
    record = BatchRecord(out)
    pseudonyms = Pseudonymizer(record.salt) if options.anonymize else None
    failures = FailureLog(record.failures, pseudonyms)
    items, scan = batch_items(source, leave_out=failures.still_holds)
    failures.add_scan(scan)
    root = source_root(source)
    identity = [model.bundle.name, model.bundle.version, model.bundle.temperature, model.engine,
                model.ood.threshold if model.ood else None, *options.identity()]
    rows: dict[int, BatchRow] = {}
    todo: list[tuple[int, BatchItem, str]] = []
    for index, item in enumerate(items):
        if failures.still_holds(item.path, _failed_frame(item), item.patient_id):
            continue
        try:
            key = item_key(item, identity)
        except Exception as exc:  # OSError mostly: gone or unreadable since the scan
            reason = f"could not be read: {getattr(exc, 'strerror', None) or short_cause(exc)}"
            failures.add(item.path, _failed_frame(item), reason, FAILED, RETRY_ALWAYS, item.patient_id)
            continue
        if key in record.entries:
            rows[index] = BatchRow.from_record(record.entries[key])
        else:
            todo.append((index, item, key))
    record.failures = failures.take_pending()  # this run's replace the last run's; the writer is not started yet
    reused, written, claimed, writes = len(rows), [], set(), []
    report_row = on_row or (lambda _row: None)
    for index in sorted(rows):
        report_row(rows[index])
    chunks = [todo[start : start + options.chunk] for start in range(0, len(todo), options.chunk)]

    def progress(step: int) -> BatchProgress:
        analysed, failed, skipped = len(rows) - reused, failures.count(FAILED), failures.count(SKIPPED)
        stage = f"{analysed} analysed, {failed} failed, {skipped} skipped"
        stage += f", {reused} done before" if reused else ""
        stage += f"; {len(todo) - step} to go" if step < len(todo) else ""
        return BatchProgress(stage, step, max(len(todo), 1), analysed, reused, failed, skipped)

    yield progress(0)
    writer = ThreadPoolExecutor(1, thread_name_prefix="lantern-batch-write")
    exporting = on_analysis is not None and options.method is not None
    results = (runner or local_chunks)(chunks, model, options, exporting)  # in order, whoever computes them
    try:
        last_save, step = time.monotonic(), 0
        for chunk, (done, chunk_failures) in zip(chunks, results):
            if exporting:
                done, export_failures = _export(done, on_analysis, pseudonyms, written)
                chunk_failures = chunk_failures + export_failures
            for item, reason, status, retry in chunk_failures:
                failures.add(item.path, _failed_frame(item), reason, status, retry, item.patient_id)
            for index, item, key, data, *_ in done:
                if pseudonyms is not None:  # shared outputs never carry file or folder names
                    name = pseudonyms.image_name(item.patient_id, item.path, item.frame)
                    data = {**data, "source": name}
                else:
                    name = item_name(item, root)
                target = _fresh_path(out / "results" / f"{name}.json", claimed)
                rows[index] = make_row(item, data, target.relative_to(out).as_posix(), pseudonyms)
                report_row(rows[index])
                writes.append(writer.submit(_write_result, record, key, rows[index], target, data))
            if failures.pending:  # the writer alone touches the record while the batch runs
                writes.append(writer.submit(record.failures.update, failures.take_pending()))
            if time.monotonic() - last_save > SAVE_EVERY_S:
                writes.append(writer.submit(record.save))
                last_save = time.monotonic()
            _raise_failed_writes(writes)
            step += len(chunk)
            yield progress(step)
    finally:  # also when the caller closes the generator (cancel): keep what is done
        results.close()
        writer.shutdown(wait=True)
        record.failures.update(failures.take_pending())
        record.save()
    for future in writes:
        future.result()
    ordered = tuple(rows[i] for i in sorted(rows))
    csv_path = write_bytes_atomic(unused_path(out / CSV_NAME), worklist_csv(ordered))
    # Named after its worklist (worklist-2.csv, failures-2.csv): the two of one run go together.
    failures_path = write_bytes_atomic(unused_path(out / csv_path.name.replace(Path(CSV_NAME).stem,
                                                                               Path(FAILURES_CSV_NAME).stem, 1)),
                                       failures_csv(failures.found))
    return BatchResult(out, ordered, tuple((f.path, f.reason) for f in failures.found), len(ordered) - reused,
                       reused, csv_path, tuple(written),
                       failed=tuple(f for f in failures.found if f.status == FAILED),
                       skipped=tuple(f for f in failures.found if f.status == SKIPPED), failures_csv=failures_path)


def run_batch(source, out, model: LoadedModel, options: BatchOptions = BatchOptions(),
              on_analysis: Exporter | None = None, progress: Callable[[Progress], None] | None = None,
              runner: ChunkRunner | None = None) -> BatchResult:
    return run_to_end(batch_steps(source, out, model, options, on_analysis, runner=runner), progress)
