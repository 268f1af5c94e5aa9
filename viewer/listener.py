"""Lantern's DICOM listener as the window sees it: on, off or failed (and why), how many images
arrived and how many were refused, and the refusals themselves.

The engine's StorageSCP calls back on pynetdicom's association threads; each callback only emits
a Qt signal, which Qt queues to the GUI thread, where the counts change and the status bar and
the worklist hear of it. Nothing on a network thread touches a widget.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from viewer.jobs import user_message
from viewer.network_config import ListenerConfig

log = logging.getLogger("lantern.network")
KEPT_REFUSALS = 200  # the refusal list shows the latest; the log keeps them all

OFF, ON, FAILED = "off", "on", "failed"


class DicomListener(QObject):
    changed = Signal()  # state, counts or refusals changed (GUI thread)
    arrived = Signal(object)  # the Path of a newly stored image (GUI thread)
    _stored = Signal(object, object)  # emitted on pynetdicom's threads, delivered queued
    _refused = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.scp = None
        self.config: ListenerConfig | None = None
        self.state, self.failure = OFF, ""
        self.received = self.refused = 0
        self.refusals: collections.deque = collections.deque(maxlen=KEPT_REFUSALS)
        self._stored.connect(self._on_stored)
        self._refused.connect(self._on_refused)

    @property
    def running(self) -> bool:
        return self.state == ON

    @property
    def port(self) -> int | None:
        """The port actually listened on (the OS's choice when the settings say 0)."""
        return self.scp.port if self.scp is not None else None

    def start(self, config: ListenerConfig) -> bool:
        """Listen with ``config`` (stopping a listener already running); False, with the reason
        in ``failure``, when it cannot (port in use, bad TLS files, an AE title the engine refuses)."""
        from engine.network.storage_scp import StorageSCP

        self.stop(announce=False)
        self.config = config
        try:
            scp = StorageSCP(config.inbox_folder, ae_title=config.ae_title, port=config.port, bind=config.bind,
                             allowed_ae=config.allowed_ae, allowed_hosts=config.allowed_hosts,
                             allow_any=config.allow_any, min_free_bytes=config.min_free_mb * 2**20,
                             tls=config.tls(), on_stored=self._emit_stored, on_refused=self._emit_refused)
            scp.start()
        except Exception as exc:  # noqa: BLE001 - shown in the status bar, never a crash
            self.state, self.failure = FAILED, _reason(exc)
            log.warning("the DICOM listener did not start: %s", self.failure)
            self.changed.emit()
            return False
        self.scp, self.state, self.failure = scp, ON, ""
        self.received = self.refused = 0  # counts are "since it started listening"
        self.changed.emit()
        return True

    def stop(self, *, announce: bool = True) -> None:
        """Close the port; associations in progress are aborted (the sender retries later)."""
        scp, self.scp = self.scp, None
        if scp is not None:
            scp.stop()
        self.state, self.failure = OFF, ""
        if announce:
            self.changed.emit()

    def status_text(self) -> str:
        if self.state == ON:
            c = self.config
            return (f"Listening as {self.scp.node.ae_title} on {c.bind}:{self.port} — "
                    f"{self.received} received, {self.refused} refused")
        if self.state == FAILED:
            return f"DICOM listener failed: {self.failure}"
        return "DICOM listener off"

    def store_handler(self, config: ListenerConfig, peer_ae: str | None = None):
        """An EVT_C_STORE handler writing into the inbox, for a C-GET from ``peer_ae``: the running
        listener's, so retrieved images are counted and reach the worklist like any other;
        without one, a listener that is made but never started (it opens no port) stores the same
        way (the engine's storage checks, not a copy of them here)."""
        from engine.network.storage_scp import StorageSCP

        scp = self.scp
        if scp is None:
            scp = StorageSCP(config.inbox_folder, ae_title=config.ae_title, port=config.port, bind=config.bind,
                             allow_any=True, min_free_bytes=config.min_free_mb * 2**20,
                             on_stored=self._emit_stored, on_refused=self._emit_refused)
        return scp.retrieved_handler(peer_ae)

    # pynetdicom's threads --------------------------------------------------------------------
    def _emit_stored(self, path: Path, event) -> None:
        try:
            self._stored.emit(path, event)
        except RuntimeError:  # the window, and this object with it, is gone: the file is stored
            pass

    def _emit_refused(self, event) -> None:
        try:
            self._refused.emit(event)
        except RuntimeError:
            pass

    # the GUI thread --------------------------------------------------------------------------
    def _on_stored(self, path: Path, _event) -> None:
        self.received += 1
        self.changed.emit()
        self.arrived.emit(Path(path))

    def _on_refused(self, event) -> None:
        self.refused += 1
        self.refusals.append(event)
        self.changed.emit()


def _reason(exc: BaseException) -> str:
    from engine import LanternError

    if isinstance(exc, LanternError):
        return exc.message  # with the file's name when a file is the problem (TLS files)
    if isinstance(exc, OSError):  # the inbox folder cannot be made or written
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc.strerror or exc)
    return user_message(exc, "starting the DICOM listener")
