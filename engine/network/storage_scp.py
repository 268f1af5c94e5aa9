"""Receiving images: a DICOM Storage SCP (and Verification, C-ECHO) on pynetdicom.

Safe by default:

* It listens on loopback unless told otherwise, and accepts associations only from the calling
  AE titles it is given (``start()`` opens no port without them, unless ``allow_any=True`` says
  so on purpose) and, when given, only from those peer addresses. Anyone else gets A-ASSOCIATE-RJ at association (permanent, by the
  service user, "calling AE title not recognised" or "no reason given" for an address), before
  a single data set is sent.
* Every storage SOP class is accepted at association, images or not: a modality that sends a
  structured dose report with its images would otherwise lose the whole association. What
  Lantern cannot analyse is then refused one instance at a time, with a status and, in the
  response's Error Comment, the reason:

  ======  ==================================================================================
  0xA900  not an image Lantern can analyse (no pixel data; SR, SEG, RT, PR, KOS...)
  0xC210  cannot understand: the data set could not be parsed
  0xA700  out of resources: the inbox's disk would fall below the free-space floor (or is full)
  0x0110  processing failure: anything unexpected (logged with its traceback)
  ======  ==================================================================================

* A second copy of an instance already in the inbox (same SOP Instance UID) is answered
  success and not written again: the first copy stays as it was (inbox.py).

Every refusal is one log line on ``lantern.network`` naming the sender and the SOP Instance
UID, and a :class:`NetworkEvent` in :meth:`StorageSCP.recent_events` and ``on_refused``.
Handlers run on pynetdicom's association threads and never raise.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path
from typing import Callable, Iterable

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from engine.dicom_header import PIXEL_TAGS, describe_non_image, not_a_picture
from engine.errors import LanternError
from engine.network.dataset_check import decodable_transfer_syntaxes, read_through, structure_problem
from engine.network.inbox import Inbox, OutOfSpace
from engine.network.network_events import NetworkEvent, now, printable
from engine.network.nodes import (DicomNode, HandshakeOnFirstRead, TlsSettings, check_address, check_ae_title,
                                  peer_address, server_tls_context)

log = logging.getLogger("lantern.network")

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
NOT_AN_IMAGE = 0xA900
CANNOT_UNDERSTAND = 0xC210
DEFAULT_MIN_FREE_BYTES = 500 * 2**20
RECENT_EVENTS = 1000
# What a peer may send in one PDU: pynetdicom's default (16 KiB) cuts a radiograph into ~30 PDUs,
# each decoded in Python; 1 MiB measured 1.3-1.8x the images/s (bench --listen) while bounding what
# one PDU can make the listener hold in memory (0, unlimited, would not).
MAX_PDU_BYTES = 2**20
_ERROR_COMMENT_CHARS = 64  # Error Comment (0000,0902) is LO


def _error_comment(reason: str) -> str:
    text = reason.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    return text if len(text) <= _ERROR_COMMENT_CHARS else text[: _ERROR_COMMENT_CHARS - 3] + "..."


class StorageSCP:
    """A listener writing received images into ``inbox``. ``start()`` returns at once (pynetdicom
    serves on its own threads); ``stop()`` closes the port and aborts associations in progress.
    ``on_stored(path, event)`` and ``on_refused(event)`` are called on pynetdicom's threads:
    they must be quick (hand the work to another thread). Without ``start()`` it opens no port
    and only stores what :meth:`retrieved_handler` is given (a C-GET)."""

    def __init__(self, inbox: str | Path, *, ae_title: str = "LANTERN", port: int = 11112, bind: str = "127.0.0.1",
                 allowed_ae: Iterable[str] = (), allowed_hosts: Iterable[str] = (), allow_any: bool = False,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, tls: TlsSettings | None = None,
                 on_stored: Callable[[Path, NetworkEvent], None] | None = None,
                 on_refused: Callable[[NetworkEvent], None] | None = None):
        self.node = DicomNode(ae_title, bind, port, tls, listening=True)
        self.allowed_ae = frozenset(check_ae_title(title) for title in allowed_ae)
        self.allowed_hosts = tuple(check_address(host) for host in allowed_hosts)
        self.allow_any = allow_any
        self.inbox = Inbox(inbox, min_free_bytes)
        self.on_stored, self.on_refused = on_stored, on_refused
        # Built now so that unusable TLS files are reported before anything listens.
        self._tls_context = HandshakeOnFirstRead(server_tls_context(tls)) if tls else None
        self._events: collections.deque[NetworkEvent] = collections.deque(maxlen=RECENT_EVENTS)
        self._events_lock = threading.Lock()
        self._ae: AE | None = None
        self._server = None

    # -- running -------------------------------------------------------------------------------

    def start(self) -> StorageSCP:
        if not self.allowed_ae and not self.allow_any:
            raise LanternError("say which calling AE titles may send images (an allow-list), or allow any "
                               "AE title explicitly")
        ae = AE(ae_title=self.node.ae_title)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        syntaxes = decodable_transfer_syntaxes()
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        if not self.allow_any:
            ae.require_calling_aet = sorted(self.allowed_ae)  # pynetdicom's own check, behind ours
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store)]
        address = (self.node.host, self.node.port)
        try:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=self._tls_context)
        except OSError as exc:
            raise LanternError(f"cannot listen on {self.node.host}:{self.node.port}: {exc.strerror or exc}") from exc
        self._ae = ae
        log.info("listening as %s on %s:%d%s, writing to %s", self.node.ae_title, self.node.host, self.port,
                 " (TLS)" if self._tls_context else "", self.inbox.folder)
        return self

    @property
    def port(self) -> int:
        """The port actually bound (the OS's choice when 0 was asked for)."""
        return int(self._server.server_address[1]) if self._server else self.node.port

    def stop(self) -> None:
        if self._ae is None:
            return
        ae, server, self._ae, self._server = self._ae, self._server, None, None
        server.shutdown()  # no new connections
        for assoc in ae.active_associations:
            try:
                if assoc.is_established:
                    assoc.abort()
                elif assoc.dul.socket is not None:
                    # Not associated yet: pynetdicom cannot abort it (an A-ABORT is invalid before the
                    # request) but a closed connection ends it, so it cannot associate after the stop.
                    assoc.dul.socket.close()
            except Exception:
                log.exception("ending an association while stopping failed")

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def recent_events(self) -> list[NetworkEvent]:
        with self._events_lock:
            return list(self._events)

    # -- association --------------------------------------------------------------------------

    def association_refusal(self, calling_ae: str, address: str) -> tuple[int, str] | None:
        """(A-ASSOCIATE-RJ diagnostic, plain words) when this peer may not associate, else None."""
        if not self.allow_any and calling_ae.strip() not in self.allowed_ae:
            return 0x03, f"calling AE title {calling_ae!r} is not on the allow-list"
        if self.allowed_hosts:
            peer = peer_address(address)
            if peer is None or not any(peer in network for network in self.allowed_hosts):
                return 0x01, f"address {address} is not on the allow-list"
        return None

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling_ae, address = "?", "?"
        try:
            calling_ae, address = printable(assoc.requestor.primitive.calling_ae_title), str(assoc.requestor.address)
            refusal = self.association_refusal(calling_ae, address)
        except Exception as exc:  # fail closed: a peer we could not check is not let in
            log.exception("checking an association request failed")
            refusal = 0x01, f"the request could not be checked ({exc})"
        if refusal is None:
            return
        diagnostic, reason = refusal
        # Recorded first: once the peer has its answer, the refusal is already there to be read.
        self._record(NetworkEvent(now(), "rejected", calling_ae, address, reason=reason))
        try:
            assoc.acse.send_reject(0x01, 0x01, diagnostic)  # rejected-permanent, by the service user
            assoc.kill()  # as pynetdicom does after its own rejections: waits until the RJ is out
        except Exception:
            log.exception("rejecting the association of %s at %s failed", calling_ae, address)

    # -- storage -------------------------------------------------------------------------------

    def retrieved_handler(self, peer_ae: str | None = None) -> Callable:
        """The EVT_C_STORE handler for images Lantern retrieves itself (a C-GET, on an association
        it requested): the same checks, names, writing, events and callbacks as for a sender. The
        allow-lists do not apply: Lantern chose that peer. ``peer_ae`` names it in the events."""
        return lambda event: self._on_store(event, peer_ae)

    def _on_store(self, event, peer_ae: str | None = None) -> Dataset | int:
        calling_ae, address, sop_uid = "?", "?", ""
        try:
            remote = event.assoc.remote  # the sender: the requestor here, the acceptor of a C-GET
            calling_ae, address = printable(peer_ae or remote["ae_title"]), str(remote["address"])
            sop_uid = printable(event.request.AffectedSOPInstanceUID or "")
            return self._store(event, calling_ae, address, sop_uid)
        except Exception as exc:
            log.exception("storing %s from %s at %s failed", sop_uid or "an instance", calling_ae, address)
            return self._refuse(calling_ae, address, sop_uid, PROCESSING_FAILURE,
                                f"Lantern could not store it ({type(exc).__name__}: {exc})")

    def _store(self, event, calling_ae: str, address: str, sop_uid: str) -> Dataset | int:
        problem = structure_problem(event.encoded_dataset(include_meta=False), event.context.transfer_syntax)
        if problem:
            return self._refuse(calling_ae, address, sop_uid, CANNOT_UNDERSTAND,
                                f"cannot understand the data set: {problem}")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            read_through(ds)
            # The file is named from the UIDs as sent; logs and events get them made printable.
            named_sop = str(ds.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID or "")
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = printable(named_sop) or sop_uid
        except Exception as exc:
            return self._refuse(calling_ae, address, sop_uid, CANNOT_UNDERSTAND,
                                f"cannot understand the data set ({type(exc).__name__}: {exc})")
        if not any(tag in ds for tag in PIXEL_TAGS):
            return self._refuse(calling_ae, address, sop_uid, NOT_AN_IMAGE, describe_non_image(ds))
        reason = not_a_picture(ds)
        if reason:
            return self._refuse(calling_ae, address, sop_uid, NOT_AN_IMAGE, reason)
        try:
            placement = self.inbox.place(self.inbox.target(study_uid, named_sop), event.encoded_dataset())
        except OutOfSpace as exc:
            return self._refuse(calling_ae, address, sop_uid, OUT_OF_RESOURCES, exc.reason)
        kind = "duplicate" if placement.duplicate else "stored"
        stored = NetworkEvent(now(), kind, calling_ae, address, sop_uid, SUCCESS, path=placement.path)
        self._record(stored)
        if placement.duplicate:
            log.info("%s from %s at %s: already in the inbox, kept the first copy", sop_uid, calling_ae, address)
        else:
            log.info("received %s from %s at %s -> %s", sop_uid, calling_ae, address,
                     placement.path.relative_to(self.inbox.root))
            if self.on_stored is not None:
                try:
                    self.on_stored(placement.path, stored)
                except Exception:  # the instance is stored: the sender hears success regardless
                    log.exception("the on_stored callback failed for %s", placement.path)
        return SUCCESS

    def _refuse(self, calling_ae: str, address: str, sop_uid: str, status: int, reason: str) -> Dataset:
        refusal = NetworkEvent(now(), "refused", calling_ae, address, sop_uid, status, reason)
        self._record(refusal)
        response = Dataset()
        response.Status = status
        response.ErrorComment = _error_comment(reason)
        return response

    def _record(self, event: NetworkEvent) -> None:
        with self._events_lock:
            self._events.append(event)
        if not event.is_refusal:
            return
        what = f"instance {event.sop_instance_uid or '(no UID)'}" if event.kind == "refused" else "association"
        status = f" 0x{event.status:04X}" if event.status is not None else ""
        log.warning("refused %s from %s at %s:%s %s", what, event.calling_ae, event.address, status, event.reason)
        if self.on_refused is not None:
            try:
                self.on_refused(event)
            except Exception:
                log.exception("the on_refused callback failed")
