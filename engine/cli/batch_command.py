"""``lantern-engine batch``: a folder or DICOMDIR through the batch, with exports, from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from pydicom.uid import generate_uid

from engine.analysis import Analysis, LoadedModel, load_model
from engine.steps import Progress
from engine.exports.anonymize import Pseudonymizer
from engine.workflows.batch import BatchOptions, run_batch
from engine.workflows.batch_record import BatchItem, item_name
from engine.workflows.uncertainty_report import uncertainty_report, write_uncertainty_report
from engine.exports.dicom_export import export_dicom
from engine.files import safe_name, unused_path, write_bytes_atomic
from engine.images import SourceImage
from engine.exports.overlay import encode_png
from engine.exports.pictures import side_by_side
from engine.exports.report import ReportEntry, render_report, report_entry, study_details, write_report
from engine.cam import DEFAULT_METHOD


class BatchExporter:
    """Per analysed image: the side-by-side PNG and the DICOM explanation; per study, one report,
    written as soon as the batch moves on to the next study (the scan keeps a study's images
    together), so a large batch never holds more than one study's pictures. Every file gets a
    fresh name (files.unused_path) and is written atomically."""

    def __init__(self, source: Path, out: Path, model: LoadedModel, *, png: bool, dicom: bool, report: bool,
                 method: str):
        self.root = source if source.is_dir() else source.parent
        self.out, self.model = out, model
        self.png, self.dicom, self.report, self.method = png, dicom, report, method
        self.series: dict[str, str] = {}  # source study -> its explanation series (one per study)
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
            series = self.series.setdefault(item.study_uid, generate_uid())
            self.counts[item.study_uid] += 1
            written.append(export_dicom(self.out / "dicom" / f"{name}.dcm", image, analysis, self.method,
                                        series_uid=series, instance_number=self.counts[item.study_uid],
                                        pseudonyms=pseudonyms))
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
        done = int(30 * update.fraction)
        rate = update.step / max(time.perf_counter() - started, 1e-6)
        end = "\n" if update.step >= update.total or not stream.isatty() else ""
        print(f"\r[{'#' * done}{'.' * (30 - done)}] {update.step}/{update.total} {update.stage} "
              f"({rate:.0f} images/s)", end=end, file=stream, flush=True)
    return show


def batch_command(args: argparse.Namespace) -> int:
    exporting = args.png or args.dicom or args.report
    method = args.method or (DEFAULT_METHOD if exporting else None)
    model = load_model(args.model, args.engine)
    options = BatchOptions(method=method, mc_samples=args.mc, confidence_threshold=args.threshold,
                           anonymize=args.anonymize)
    exporter = (BatchExporter(args.source, args.out, model, png=args.png, dicom=args.dicom, report=args.report,
                              method=method) if exporting else None)
    started = time.perf_counter()
    result = run_batch(args.source, args.out, model, options, exporter, progress=_progress_printer(sys.stderr))
    written = list(result.written)
    if exporter is not None:
        written += exporter.finish()
    seconds = time.perf_counter() - started  # the analyses' rate, not the summary's
    # The dataset-wide view: the figure, the flagged images as CSV and JSON (and a page beside the
    # study reports when those are asked for). Always written: it costs a read of the results.
    uncertainty = (write_uncertainty_report(uncertainty_report(result.out, result.rows, args.threshold), result.out,
                                            html_page=args.report) if result.rows else [])
    for path, reason in result.failures:
        print(f"not analysed: {path}: {reason}", file=sys.stderr)
    flagged = sum(r.flagged for r in result.rows)
    print(f"Analysed {result.analysed} image(s), reused {result.reused} from earlier runs, "
          f"{len(result.failures)} file(s) not analysed, {flagged} flagged, in {seconds:.1f} s "
          f"({result.analysed / max(seconds, 1e-6):.1f} images/s, {model.engine}). "
          f"Worklist: {result.csv}; {len(written)} export file(s) in {args.out}", file=sys.stderr)
    if uncertainty:
        print(f"Uncertainty report: {', '.join(p.name for p in uncertainty)} in {result.out}", file=sys.stderr)
    return 1 if result.failures else 0
