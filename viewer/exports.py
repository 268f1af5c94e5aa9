"""File > Export: the side-by-side picture (PNG at the source's resolution, with the reader's
window, colormap, opacity and threshold), the result (JSON), the explanation as DICOM (Secondary
Capture, a Parametric Map per class and a structured report, in the source's study) and a one-page
HTML report.

Each asks where through a save dialog that proposes a name no file has yet; if the chosen name
exists by the time it is written, the export takes a fresh name beside it (files.unused_path):
nothing is ever overwritten, least of all a source. "Anonymize exports" pseudonymizes DICOM and
report exports with one salt per run of Lantern, so exports of one patient stay together; the
picture carries no corner text at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog

from engine.exports.anonymize import Pseudonymizer
from engine import unused_path, write_bytes_atomic, write_json_atomic
from viewer.actions import _action
from viewer.jobs import CallJob, user_message
from viewer.menus import menu_named

log = logging.getLogger("lantern.exports")
KINDS = {  # kind -> (menu text, file suffix, dialog filter)
    "png": ("Side-by-side picture (PNG)…", ".png", "PNG image (*.png)"),
    "json": ("Result (JSON)…", ".json", "JSON (*.json)"),
    "dicom": ("Explanation as DICOM…", ".dcm", "DICOM (*.dcm)"),
    "report": ("Report (HTML)…", ".html", "HTML report (*.html)"),
}


class Exporter:
    """The export actions of one main window."""

    def __init__(self, window):
        self.window = window
        self.pseudonyms = Pseudonymizer()  # one salt per run: consistent across this session's exports
        self.anonymize = False
        self.last_written: Path | None = None

    def ready(self) -> bool:
        session = self.window.session
        if session.analysis is None or session.image is None:
            self.window.show_error("Nothing to export yet: open an image and wait for its analysis.")
            return False
        return True

    def proposed_path(self, kind: str) -> Path:
        folder = self.window.settings.q.value("export/folder", "") or QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.DocumentsLocation)
        analysis = self.window.session.analysis
        stem = Path(analysis.source).stem + (f"-frame{analysis.frame + 1}" if analysis.frame else "")
        return unused_path(Path(folder) / f"{stem}-lantern{KINDS[kind][1]}")

    def ask(self, kind: str) -> None:
        """Menu slot: ask where, then export."""
        if not self.ready():
            return
        text, suffix, file_filter = KINDS[kind]
        chosen, _ = QFileDialog.getSaveFileName(
            self.window, text.rstrip("…"), str(self.proposed_path(kind)), file_filter,
            options=QFileDialog.Option.DontConfirmOverwrite)  # never overwritten: a taken name gets a new one
        if chosen:
            path = Path(chosen)
            self.window.settings.set("export/folder", str(path.parent))
            self.export(kind, path if path.suffix else path.with_suffix(suffix))

    def export(self, kind: str, path: Path) -> None:
        """Write ``kind`` to ``path`` (or a fresh name beside it) off the GUI thread."""
        window = self.window
        image, analysis = window.session.image.source, window.session.analysis
        method, class_index = window.shown_method(analysis), window.class_index
        pseudonyms = self.pseudonyms if self.anonymize else None
        if kind == "png":
            # At the source's resolution (not the window's), as the reader set window, colormap,
            # opacity and threshold; no corner text, so nothing identifying either way.
            c = window.controls
            style = {"colormap": c.colormap.currentText(), "opacity": c.opacity_value(),
                     "threshold": c.threshold_value(), "window": window.window_cw, "invert": window.invert}

            def job():
                from engine.exports.overlay import encode_png
                from engine.exports.pictures import side_by_side

                picture = side_by_side(image, analysis, method, class_index, **style)
                return write_bytes_atomic(unused_path(path), encode_png(picture))
        elif kind == "json":
            record = analysis.to_dict(method) | {"shown": {"method": method, "class": analysis.classes[class_index]}}
            job = lambda: write_json_atomic(unused_path(path), record)  # noqa: E731
        elif kind == "dicom":
            bundle = window.session.model.bundle if window.session.model is not None else None

            def job():
                # Imported here, off the GUI thread: highdicom takes a moment to load.
                from engine.exports.dicom_objects import export_dicom_objects, model_manufacturer

                # The Secondary Capture at the chosen name, each class's Parametric Map and the
                # structured report beside it (name-pm-1-class.dcm, name-sr.dcm); the SC is reported.
                maker = model_manufacturer(bundle) if bundle is not None else None
                return export_dicom_objects(path.parent, image, analysis, method=method, class_index=class_index,
                                            pseudonyms=pseudonyms, name=path.stem, model_manufacturer=maker)[0]
        else:
            bundle = window.session.model.bundle if window.session.model is not None else None
            job = lambda: write_html_report(path, image, analysis, bundle, method, class_index, pseudonyms)  # noqa: E731
        window.show_status(f"Exporting {path.name}…")
        # No key: each export is its own request, and none replaces another.
        window.session.runner.start(CallJob(job, f"exporting {kind}"), on_done=self._written, on_failed=self._failed)

    def _written(self, path: Path) -> None:
        self.last_written = Path(path)
        self.window.show_status(f"Exported {Path(path).name} to {Path(path).parent}")

    def _failed(self, exc: BaseException) -> None:
        self.window.show_error(f"Export failed: {user_message(exc, 'exporting')}")


def write_html_report(path: Path, image, analysis, bundle, method: str, class_index: int,
                      pseudonyms: Pseudonymizer | None) -> Path:
    from engine.exports.report import render_report, report_entry, study_details, write_report

    meta = image.metadata
    anonymized = pseudonyms.patient(meta.patient_id, meta.patient_name) if pseudonyms else None
    title, details = study_details(image, anonymized)
    label = pseudonyms.image_name(meta.patient_id, image.path, image.frame) if pseudonyms else None
    html = render_report(title, details, [report_entry(image, analysis, method, class_index, label)], bundle,
                         analysis.engine)
    return write_report(path, html)


def install(window) -> None:
    exporter = Exporter(window)
    window.exporter = exporter
    menu = menu_named(window, "&File")
    export_menu = menu.addMenu("Export")
    recent = getattr(window, "recent_menu", None)
    if recent is not None:  # next to the other file commands, above Quit
        menu.insertMenu(recent.menuAction(), export_menu)
    for kind, (text, _suffix, _filter) in KINDS.items():
        action = _action(window, text, lambda kind=kind: exporter.ask(kind))
        export_menu.addAction(action)
        window.actions_[f"export_{kind}"] = action
    export_menu.addSeparator()
    anonymize = _action(window, "Anonymize exports", lambda: setattr(exporter, "anonymize", anonymize.isChecked()),
                        checkable=True, tip="DICOM and report exports carry a pseudonym, no name, ID or dates")
    export_menu.addAction(anonymize)
    window.actions_["export_anonymize"] = anonymize
