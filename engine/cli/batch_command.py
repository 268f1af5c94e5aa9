"""``lantern-engine batch``: a folder or DICOMDIR through the batch, with exports, from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from engine.analysis import Analysis, LoadedModel, load_model
from engine.steps import Progress
from engine.exports.anonymize import Pseudonymizer
from engine.workflows.batch import BatchOptions, BatchResult, run_batch
from engine.workflows.batch_failures import NotAnalysed
from engine.workflows.batch_record import BatchItem, item_name
from engine.workflows.batch_sources import as_source, read_file_list, source_root
from engine.workflows.uncertainty_report import uncertainty_report, write_uncertainty_report
from engine.exports.dicom_objects import DICOM_OBJECT_KINDS, export_dicom_objects, model_manufacturer, parse_kinds
from engine.errors import LanternError
from engine.files import safe_name, unused_path, write_bytes_atomic
from engine.images import SourceImage
from engine.exports.overlay import encode_png
from engine.exports.pictures import side_by_side
from engine.exports.report import (ReportEntry, render_batch_summary, render_report, report_entry, study_details,
                                   write_report)
from engine.cam import DEFAULT_METHOD


class BatchExporter:
    """Per analysed image: the side-by-side PNG and the DICOM explanation; per study, one report,
    written as soon as the batch moves on to the next study (the scan keeps a study's images
    together), so a large batch never holds more than one study's pictures. Every file gets a
    fresh name (files.unused_path) and is written atomically."""

    def __init__(self, source: Path, out: Path, model: LoadedModel, *, png: bool, dicom: bool, report: bool,
                 method: str, dicom_objects: tuple[str, ...] = DICOM_OBJECT_KINDS):
        self.root = source_root(as_source(source))  # a folder's, or a list's files' common folder
        self.out, self.model = out, model
        self.png, self.dicom, self.report, self.method = png, dicom, report, method
        self.dicom_objects = dicom_objects  # which DICOM objects: sc, pm, sr (engine.exports.dicom_objects)
        # Source study -> its explanation series by kind ("sc", "sr", "pm0"...), shared by the study's images.
        self.series: dict[str, dict[str, str]] = {}
        self.counts: dict[str, int] = defaultdict(int)
        # The study in hand: (file label, title, details, entries), and its UID.
        self.study: tuple[str, str, list[tuple[str, str]], list[ReportEntry]] | None = None
        self.study_uid = ""
        self.pseudonyms: Pseudonymizer | None = None

    def __call__(self, image: SourceImage, analysis: Analysis, item: BatchItem,
                 pseudonyms: Pseudonymizer | None) -> list[Path]:
        self.pseudonyms = pseudonyms
        written = []
        if pseudonyms is None:
            name = item_name(item, self.root)
        else:  # shared exports must not carry folder or file names, which often name the patient
            name = pseudonyms.image_name(item.patient_id, item.path, item.frame)
        if self.png:
            picture = side_by_side(image, analysis, self.method)
            written.append(write_bytes_atomic(unused_path(self.out / "png" / f"{name}.png"), encode_png(picture)))
        if self.dicom:
            self.counts[item.study_uid] += 1
            written += export_dicom_objects(self.out / "dicom", image, analysis, self.dicom_objects, self.method,
                                            pseudonyms, name=name, series=self.series.setdefault(item.study_uid, {}),
                                            instance_number=self.counts[item.study_uid],
                                            model_manufacturer=model_manufacturer(self.model.bundle))
        if self.report:
            if self.study is not None and self.study_uid != item.study_uid:
                written += self.finish()
            self.study_uid = item.study_uid
            if self.study is None:
                meta = image.metadata
                if pseudonyms is not None:
                    anonymized = pseudonyms.patient(meta.patient_id, meta.patient_name)
                    label = f"{anonymized}_study-{pseudonyms.short('study', item.study_uid)}"
                else:
                    anonymized, label = None, "_".join(filter(None, (meta.patient_id, meta.study_date, item.study)))
                self.study = (label, *study_details(image, anonymized), [])
            self.study[3].append(report_entry(image, analysis, self.method,
                                              label=None if pseudonyms is None else name))
        return written

    def finish(self) -> list[Path]:
        """Write the report of the study in hand, if any."""
        if self.study is None:
            return []
        (label, title, details, entries), self.study = self.study, None
        name = safe_name(label, "study")
        html = render_report(title, details, entries, self.model.bundle, self.model.engine)
        return [write_report(self.out / "reports" / f"{name}.html", html)]


def _progress_printer(stream):
    started = time.perf_counter()

    def show(update: Progress) -> None:
        # The batch's stage names what became of the files so far: analysed, failed, skipped.
        done = int(30 * update.fraction)
        rate = update.step / max(time.perf_counter() - started, 1e-6)
        end = "\n" if update.step >= update.total or not stream.isatty() else ""
        print(f"\r[{'#' * done}{'.' * (30 - done)}] {update.step}/{update.total} done: {update.stage} "
              f"({rate:.0f} images/s)", end=end, file=stream, flush=True)
    return show


def _file_label(failure: NotAnalysed) -> str:
    return failure.name + ("" if failure.frame is None else f", frame {failure.frame + 1}")


def _write_summary_page(result: BatchResult, reports: list[Path], model: LoadedModel) -> Path:
    """The page that says what the batch analysed (linking the study reports) and what it did not."""
    counts = [("Model", f"{model.bundle.name} {model.bundle.version} ({model.engine} engine)"),
              ("Analysed in this run", str(result.analysed)), ("Analysed in earlier runs", str(result.reused)),
              ("Flagged (low confidence)", str(sum(r.flagged for r in result.rows))),
              ("Failed", str(len(result.failed))), ("Skipped (not images)", str(len(result.skipped)))]
    if result.failures_csv is not None:
        counts.append(("List of files not analysed", result.failures_csv.name))
    html = render_batch_summary("Lantern batch summary", counts, [(p.stem, f"reports/{p.name}") for p in reports],
                                [(_file_label(f), f.reason, f.retry) for f in result.failed],
                                [(_file_label(f), f.reason) for f in result.skipped])
    return write_report(result.out / "summary.html", html)  # beside reports/, not one of the studies


def _source_and_runner(args: argparse.Namespace):
    """The folder or the list of files (--files-from), and who computes: None for this process,
    else a Ray runner (--ray, --ray-workers; engine.workflows.ray_batch, imported only then)."""
    files_from, ray = getattr(args, "files_from", None), getattr(args, "ray", None)
    if args.source is None and files_from is None and ray not in (None, "local") and Path(ray).exists():
        # 'batch --ray DIR': argparse took the folder for --ray's optional address
        args.source, ray = Path(ray), "local"
    if (args.source is None) == (files_from is None):
        raise LanternError("give a folder (or DICOMDIR) or --files-from LIST: one of the two")
    source = read_file_list(files_from) if files_from is not None else args.source
    workers = getattr(args, "ray_workers", None)
    if ray is None:
        if workers is not None:
            raise LanternError("--ray-workers needs --ray")
        return source, None
    if workers is not None and workers < 1:
        raise LanternError("--ray-workers must be at least 1")
    from engine.workflows.ray_batch import ray_runner

    return source, ray_runner(None if ray == "local" else ray, workers)


def batch_command(args: argparse.Namespace) -> int:
    # --dicom-objects picks which DICOM objects (and implies --dicom); checked before the model loads.
    dicom_objects = parse_kinds(args.dicom_objects) if args.dicom_objects is not None else DICOM_OBJECT_KINDS
    dicom = args.dicom or args.dicom_objects is not None
    exporting = args.png or dicom or args.report
    method = args.method or (DEFAULT_METHOD if exporting else None)
    source, runner = _source_and_runner(args)
    model = load_model(args.model, args.engine)  # on a cluster too: the driver keys, names and exports the results
    options = BatchOptions(method=method, mc_samples=args.mc, confidence_threshold=args.threshold,
                           anonymize=args.anonymize)
    exporter = (BatchExporter(source, args.out, model, png=args.png, dicom=dicom, report=args.report,
                              method=method, dicom_objects=dicom_objects) if exporting else None)
    started = time.perf_counter()
    result = run_batch(source, args.out, model, options, exporter, progress=_progress_printer(sys.stderr),
                       runner=runner)
    written = list(result.written)
    if exporter is not None:
        written += exporter.finish()
    seconds = time.perf_counter() - started  # the analyses' rate, not the summary's
    # The dataset-wide view: the figure, the flagged images as CSV and JSON (and a page beside the
    # study reports when those are asked for). Always written: it costs a read of the results.
    uncertainty = (write_uncertainty_report(uncertainty_report(result.out, result.rows, args.threshold), result.out,
                                            html_page=args.report) if result.rows else [])
    if args.report:  # the study reports show what was analysed; this page also what was not
        reports = [p for p in written if p.parent == result.out / "reports" and p.suffix == ".html"]
        written.append(_write_summary_page(result, reports, model))
    # The terminal is the user's own: real paths here, pseudonyms only in what is written to share.
    for status, failures in (("failed", result.failed), ("skipped", result.skipped)):
        for failure in failures:
            frame = "" if failure.frame is None else f" (frame {failure.frame + 1})"
            print(f"{status}: {failure.path}{frame}: {failure.reason}", file=sys.stderr)
    flagged = sum(r.flagged for r in result.rows)
    print(f"Analysed {result.analysed} image(s), reused {result.reused} from earlier runs, "
          f"{len(result.failed)} failed, {len(result.skipped)} skipped (not images), {flagged} flagged, "
          f"in {seconds:.1f} s ({result.analysed / max(seconds, 1e-6):.1f} images/s, {model.engine}). "
          f"Worklist: {result.csv}; not analysed: {result.failures_csv}; {len(written)} export file(s) in {args.out}",
          file=sys.stderr)
    if uncertainty:
        print(f"Uncertainty report: {', '.join(p.name for p in uncertainty)} in {result.out}", file=sys.stderr)
    return 1 if result.failed else 0  # files that are not images are no failure of the batch
