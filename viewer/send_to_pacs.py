"""File > Send to PACS: the shown image's explanation as standard DICOM objects, written by the
engine's export (engine.exports.dicom_objects: the Secondary Capture File > Export > Explanation
as DICOM writes, one Parametric Map per class and the structured report, all in the source's
study), sent by C-STORE to the node the settings mark as the destination. A PACS is where
viewers that never saw Lantern read them, so it gets all of them.

The object is exported into a temporary folder that is removed once it is sent: the PACS keeps
the copy, the workstation keeps none. It is sent under the patient's own identifiers even when
"Anonymize exports" is on: a pseudonymized object would land in the PACS as a stray patient,
away from the study it explains.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QProgressDialog

from viewer.jobs import user_message
from viewer.network_config import load
from viewer.network_jobs import NetworkJob

SEND_JOB = "send"


class PacsSender:
    """Send to PACS for one main window; the network runner is the window's (network_menu.py)."""

    def __init__(self, window, runner):
        self.window, self.runner = window, runner
        self.last_result = None  # the SendResult of the last send that ended (tests, status)
        self.dialog: QProgressDialog | None = None

    def send(self) -> None:
        window = self.window
        session = window.session
        if session.analysis is None or session.image is None:
            window.show_error("Nothing to send yet: open an image and wait for its analysis.")
            return
        config = load(window.settings)
        node = config.node_named(config.destination)
        if node is None:
            window.show_error("No PACS to send to: in Network > DICOM nodes…, add it and tick "
                              "“Send to PACS sends to this node”.")
            return
        if self.runner.running(SEND_JOB):
            window.show_status("Already sending to the PACS; wait for it to finish or cancel it.")
            return
        image, analysis = session.image.source, session.analysis
        method, class_index = window.shown_method(analysis), window.class_index
        target, calling = node.dicom_node(), config.listener.ae_title
        stem = Path(analysis.source).stem + (f"-frame{analysis.frame + 1}" if analysis.frame else "")
        bundle = session.model.bundle if session.model is not None else None

        def work(progress, cancel):
            from engine.exports.dicom_objects import export_dicom_objects, model_manufacturer
            from engine.network.send import send_files

            with tempfile.TemporaryDirectory(prefix="lantern-send-") as folder:
                paths = export_dicom_objects(folder, image, analysis, method=method, class_index=class_index,
                                             name=f"{stem}-lantern",
                                             model_manufacturer=model_manufacturer(bundle) if bundle else None)
                if cancel.is_set():
                    return None  # the runner reports the cancellation; nothing was sent
                return send_files(target, calling, paths, progress=progress, cancel=cancel)

        self.dialog = QProgressDialog(f"Sending to {node.name}…", "Cancel", 0, 0, window)
        self.dialog.setWindowTitle("Send to PACS")
        self.dialog.setWindowModality(Qt.WindowModality.NonModal)  # reading goes on meanwhile
        self.dialog.setMinimumDuration(500)  # a quick send does not flash a dialog
        self.dialog.canceled.connect(lambda: self.runner.cancel(SEND_JOB))
        window.show_status(f"Sending the explanation of {Path(analysis.source).name} to {node.name}…")
        self.runner.start(NetworkJob(work, "sending to the PACS"), key=SEND_JOB,
                          on_done=lambda result: self._sent(result, node.name), on_failed=self._failed,
                          on_progress=self._progress, on_cancelled=self._cancelled)

    def _progress(self, progress) -> None:
        if self.dialog is not None:
            self.dialog.setMaximum(progress.total)
            self.dialog.setValue(progress.step)
            self.dialog.setLabelText(progress.stage)

    def _close_dialog(self) -> None:
        if self.dialog is not None:
            self.dialog.canceled.disconnect()
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None

    def _sent(self, result, name: str) -> None:
        self._close_dialog()
        self.last_result = result
        if not result.failed:
            self.window.show_status(f"Send to PACS: {len(result.sent)} sent to {name}.")
            return
        why = "; ".join(f"{path.name}: {reason}" for path, reason in result.failed)
        self.window.show_error(f"Send to PACS: {len(result.sent)} sent to {name}, {len(result.failed)} not sent ({why})")

    def _failed(self, exc: BaseException) -> None:
        self._close_dialog()
        self.window.show_error(f"Send to PACS failed: {user_message(exc, 'sending to the PACS')}")

    def _cancelled(self) -> None:
        self._close_dialog()
        self.window.show_status("Send to PACS cancelled.")
