"""The files and frames a batch did not analyse: why, whether trying again is worth it, failures.csv.

Two kinds: *failed*, files that are (or should be) images but could not be read, decoded or
analysed; *skipped*, files that are not images (text, RT plans, reports, a DICOMDIR's index).
Whether a resumed batch tries one again is its ``retry``:

- ``yes``: the cause may be gone while the file is unchanged (a read error, a decoder not
  installed, too little memory, an analysis or export that failed): tried again every run;
- ``if changed``: the file itself is damaged, and the same bytes fail the same way: tried again
  once its size or modification time differ (a copy that has since finished, a replaced file);
- ``no``: not an image: also looked at again once it changes, but said plainly for the reader.

The batch record keeps each with the file's size and modification time when it was found; an
unchanged file whose retry is not ``yes`` is not even opened again (nor scanned).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable

from engine.dicom import DecoderUnavailableError
from engine.dicom_header import short_cause
from engine.errors import LanternError, NotAnImageError
from engine.exports.anonymize import Pseudonymizer
from engine.studies import ScanResult
from engine.workflows.batch_record import failure_key, file_state

FAILED, SKIPPED = "failed", "skipped"
RETRY_ALWAYS, RETRY_IF_CHANGED, RETRY_NEVER = "yes", "if changed", "no"
CSV_NAME = "failures.csv"
CSV_COLUMNS = ("file", "frame", "status", "reason", "when", "worth_retrying")


@dataclass(frozen=True)
class NotAnalysed:
    """A file (``frame`` None: all of it) or one frame that the batch did not analyse, and why."""

    path: Path
    frame: int | None
    reason: str  # plain words
    status: str  # FAILED or SKIPPED
    retry: str  # RETRY_ALWAYS, RETRY_IF_CHANGED or RETRY_NEVER
    when: str  # when it was found (an earlier run's time for one carried over), ISO 8601
    name: str  # what shared outputs call it: the path, or a pseudonym in an anonymized batch


def belongs_to_one_file(exc: BaseException) -> bool:
    """True for an exception that is one file's failure, to be listed: every Exception, and the
    panics of Rust decoders (pyo3's PanicException is a BaseException); not Ctrl-C or exit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def load_failure(exc: BaseException) -> tuple[str, str, str]:
    """(reason, status, retry) for what went wrong opening one frame."""
    if isinstance(exc, NotAnImageError):
        return exc.reason, SKIPPED, RETRY_NEVER
    if isinstance(exc, MemoryError):
        return "there was not enough memory to open it", FAILED, RETRY_ALWAYS
    if isinstance(exc, LanternError):
        transient = isinstance(exc, DecoderUnavailableError) or isinstance(exc.__cause__, OSError)
        return exc.reason, FAILED, RETRY_ALWAYS if transient else RETRY_IF_CHANGED
    return f"could not be opened: {short_cause(exc)}", FAILED, RETRY_IF_CHANGED


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class FailureLog:
    """This run's files and frames not analysed, and the ones an earlier run recorded."""

    def __init__(self, earlier: dict[str, dict], pseudonyms: Pseudonymizer | None):
        self.earlier = earlier
        self.pseudonyms = pseudonyms
        self.found: list[NotAnalysed] = []
        self.pending: dict[str, dict] = {}  # for the record, not yet handed to it

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.found)

    def still_holds(self, path: Path, frame: int | None = None, patient_id: str | None = None) -> bool:
        """True when an earlier run's failure of this file (or frame) is not worth trying again
        now: its retry is not ``yes`` and the file has not changed. It is carried into this run."""
        if not self.earlier:  # a first run: no path to resolve and hash for every file
            return False
        key = failure_key(path, frame)
        entry = self.earlier.get(key)
        if not isinstance(entry, dict) or entry.get("retry") == RETRY_ALWAYS:
            return False
        state = file_state(path)
        if state is None or [entry.get("size"), entry.get("mtime_ns")] != list(state):
            return False
        try:
            failure = NotAnalysed(path, frame, str(entry["reason"]), str(entry["status"]), str(entry["retry"]),
                                  str(entry["when"]), self._name(path, frame, patient_id))
        except KeyError:  # a record from an older Lantern that lacks a field: try the file again
            return False
        self._add(key, failure, state)
        return True

    def add(self, path: Path, frame: int | None, reason: str, status: str, retry: str,
            patient_id: str | None = None) -> None:
        """``patient_id`` None: the file's header was never read (a scan failure)."""
        failure = NotAnalysed(path, frame, reason, status, retry, _now(), self._name(path, frame, patient_id))
        self._add(failure_key(path, frame), failure, file_state(path))

    def add_scan(self, scan: ScanResult) -> None:
        """What the folder scan did not list: not images (skipped) and damaged or unreadable files."""
        for path, reason in scan.skipped:
            self.add(path, None, reason, SKIPPED, RETRY_NEVER)
        for failure in scan.failed:
            self.add(failure.path, None, failure.reason, FAILED,
                     RETRY_ALWAYS if failure.read_error else RETRY_IF_CHANGED)

    def take_pending(self) -> dict[str, dict]:
        pending, self.pending = self.pending, {}
        return pending

    def _add(self, key: str, failure: NotAnalysed, state: tuple[int, int] | None) -> None:
        self.found.append(failure)
        size, mtime_ns = state if state is not None else (None, None)
        self.pending[key] = {"frame": failure.frame, "reason": failure.reason, "status": failure.status,
                             "retry": failure.retry, "when": failure.when, "size": size, "mtime_ns": mtime_ns}

    def _name(self, path: Path, frame: int | None, patient_id: str | None) -> str:
        if self.pseudonyms is None:
            return str(path)
        if patient_id is not None:  # the name its worklist row and exports would have had
            return self.pseudonyms.image_name(patient_id, path, frame or 0)
        # No patient known (its header was never read): still never the file or folder names.
        label = self.pseudonyms.short("image", os.path.realpath(path))
        return f"unknown-patient_{label}" + (f"-frame{frame}" if frame else "")


def failures_csv(failures: Iterable[NotAnalysed]) -> bytes:
    """One line per file or frame not analysed, failed ones first; ``frame`` empty for a whole
    file, else numbered from 0 as in the worklist."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in sorted(failures, key=lambda f: (f.status != FAILED, f.name, -1 if f.frame is None else f.frame)):
        writer.writerow([f.name, "" if f.frame is None else f.frame, f.status, f.reason, f.when, f.retry])
    return buffer.getvalue().encode("utf-8")
