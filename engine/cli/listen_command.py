"""``lantern-engine listen``: a DICOM node that receives images and triages them as they arrive.

Received instances land in the inbox (engine.network.storage_scp); one analysis thread runs the
batch (engine.workflows.batch) over the inbox whenever new files have arrived and then stopped
arriving for a moment, so --out holds exactly what ``lantern-engine batch INBOX --out OUT``
writes: results, the batch record (each image is analysed once, later runs reuse it) and
worklist.csv, here kept as one file that each run replaces. Refusals go to
network-refusals.csv beside them. SIGTERM or Ctrl-C stops it cleanly: the port is closed, a
batch in progress stops after its current chunk with its record saved, and what was received
but not analysed yet is analysed by the next start.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from engine.analysis import LoadedModel, load_model
from engine.cam import DEFAULT_METHOD
from engine.cli.batch_command import BatchExporter
from engine.cli.network_commands import parse_node
from engine.exports.dicom_objects import DICOM_OBJECT_KINDS, parse_kinds
from engine.errors import LanternError
from engine.files import unused_path, write_bytes_atomic
from engine.network.nodes import DicomNode, TlsSettings, check_ae_title
from engine.network.network_events import NetworkEvent
from engine.network.storage_scp import StorageSCP
from engine.workflows.batch import CSV_NAME, BatchOptions, BatchResult, batch_steps, check_output_folder

log = logging.getLogger("lantern.network")

REFUSALS_NAME = "network-refusals.csv"
REFUSAL_COLUMNS = ("when", "sender_ae", "address", "sop_instance_uid", "status", "reason")
QUIET_S = 1.0  # analyse once nothing has arrived for this long...
MAX_WAIT_S = 5.0  # ...or this long after the first unanalysed arrival, during a steady stream


def _cell(text: str) -> str:
    """A sender-controlled value made inert for spreadsheets (a leading = + - @ is a formula)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


class RefusalLog:
    """network-refusals.csv: every refusal of this and earlier runs into the same folder,
    rewritten atomically when new ones came in (``flush``, from the main thread)."""

    def __init__(self, out: Path):
        self.path = out / REFUSALS_NAME
        self.rows: list[list[str]] = []
        self._lock = threading.Lock()
        self._dirty = False
        if self.path.is_file():
            with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
                earlier = list(csv.reader(handle))
            if earlier and tuple(earlier[0]) == REFUSAL_COLUMNS:
                self.rows = earlier[1:]
            else:  # not ours: leave it alone and keep ours beside it
                self.path = unused_path(self.path)

    def add(self, event: NetworkEvent) -> None:
        status = "A-ASSOCIATE-RJ" if event.kind == "rejected" else f"0x{event.status:04X}"
        row = [event.when, _cell(event.calling_ae), event.address, _cell(event.sop_instance_uid), status,
               _cell(event.reason)]
        with self._lock:
            self.rows.append(row)
            self._dirty = True

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            rows, self._dirty = list(self.rows), False
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(REFUSAL_COLUMNS)
        writer.writerows(rows)
        write_bytes_atomic(self.path, buffer.getvalue().encode("utf-8"))


class ResultSender:
    """Sends each run's new DICOM objects to a node (C-STORE); what the node did not take is
    logged and tried again after the next run, so a PACS that was down gets them later."""

    def __init__(self, node, calling_ae: str):
        self.node, self.calling_ae = node, calling_ae
        self.unsent: list[Path] = []
        self.sent = 0

    def send(self, written) -> None:
        from engine.network.send import send_files

        self.unsent += [p for p in written if p.suffix == ".dcm"]
        if not self.unsent:
            return
        try:
            result = send_files(self.node, self.calling_ae, self.unsent)
        except LanternError as exc:
            log.error("sending %d result object(s) to %s failed: %s (tried again after the next run)",
                      len(self.unsent), self.node, exc.reason)
            return
        self.sent += len(result.sent)
        self.unsent = [path for path, _ in result.failed]
        log.info("sent %d result object(s) to %s", len(result.sent), self.node)
        for path, reason in result.failed:
            log.warning("not sent: %s: %s", path.name, reason)


class AnalysisLoop(threading.Thread):
    """The one thread that analyses: runs the batch over the inbox after arrivals (debounced)."""

    def __init__(self, inbox: Path, out: Path, model: LoadedModel, options: BatchOptions,
                 exporter=None, sender: ResultSender | None = None):
        super().__init__(name="lantern-listen-analysis", daemon=True)
        self.inbox, self.out, self.model, self.options = inbox, out, model, options
        self.exporter, self.sender = exporter, sender  # DICOM result objects, and where they go
        self._wake = threading.Condition()
        self._first_pending: float | None = None
        self._last_arrival = 0.0
        self._stopping = threading.Event()
        self._reported: set[Path] = set()
        self.analysed = 0  # rows in the latest worklist (received images analysed, all runs)
        self.runs = 0

    def arrived(self) -> None:
        """A new file is in the inbox (called on a pynetdicom thread: only notes the time)."""
        with self._wake:
            now = time.monotonic()
            self._last_arrival = now
            if self._first_pending is None:
                self._first_pending = now
            self._wake.notify()

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify()

    def run(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                if self._first_pending is None:
                    self._wake.wait(0.5)
                    continue
                now = time.monotonic()
                due = min(self._last_arrival + QUIET_S, self._first_pending + MAX_WAIT_S)
                if now < due:
                    self._wake.wait(due - now)
                    continue
                self._first_pending = None  # what arrives from now on waits for the next run
            try:
                self._analyse()
            except Exception as exc:  # a failed run (disk full, worklist locked...) must not end the listener
                message = exc.reason if isinstance(exc, LanternError) else f"{type(exc).__name__}: {exc}"
                log.error("analysing the inbox failed: %s (tried again when the next image arrives)", message)

    def _analyse(self) -> None:
        started = time.perf_counter()
        result = self._run_batch()
        if result is None:  # stopped: the record is saved, the next start resumes
            return
        worklist = self.out / CSV_NAME
        if result.csv is not None and result.csv != worklist:
            os.replace(result.csv, worklist)  # one worklist, replaced whole, never a worklist-2.csv...
        for path, reason in result.failures:
            if path not in self._reported:
                self._reported.add(path)
                log.warning("not analysed: %s: %s", path, reason)
        self.analysed, self.runs = len(result.rows), self.runs + 1
        if self.sender is not None:
            self.sender.send(result.written)
        log.info("analysed %d new image(s) in %.1f s; worklist %s lists %d", result.analysed,
                 time.perf_counter() - started, worklist, len(result.rows))

    def _run_batch(self) -> BatchResult | None:
        steps = batch_steps(self.inbox, self.out, self.model, self.options, self.exporter)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            if self._stopping.is_set():
                steps.close()  # the batch saves its record on the way out
                return None


class ReceiveAndAnalyse:
    """The listener, its analysis thread and its refusals file, started and stopped together."""

    def __init__(self, inbox: Path, out: Path, model: LoadedModel, options: BatchOptions, *, exporter=None,
                 sender: ResultSender | None = None, **scp_options):
        inbox, out = Path(inbox), Path(out)
        inbox.mkdir(parents=True, exist_ok=True)
        check_output_folder(inbox, out)
        model.bundle.require_single_input("listening")
        out.mkdir(parents=True, exist_ok=True)
        self.refusals = RefusalLog(out)
        self.loop = AnalysisLoop(inbox, out, model, options, exporter, sender)
        self.received = 0  # instances written to the inbox since start
        self._count_lock = threading.Lock()  # several associations store at once
        self.scp = StorageSCP(inbox, on_stored=self._stored, on_refused=self.refusals.add, **scp_options)

    def _stored(self, _path: Path, _event: NetworkEvent) -> None:
        with self._count_lock:
            self.received += 1
        self.loop.arrived()

    def start(self) -> ReceiveAndAnalyse:
        self.scp.start()
        self.loop.start()
        if any(self.loop.inbox.rglob("*.dcm")):
            self.loop.arrived()  # received before a stop or crash and perhaps never analysed
        return self

    def stop(self) -> None:
        self.scp.stop()
        self.loop.stop()
        if self.loop.ident is not None:  # (started)
            self.loop.join()
        self.refusals.flush()


def _show_network_log() -> logging.Handler:
    """One line per received instance, refusal and batch run, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def listen_command(args: argparse.Namespace) -> int:
    # The settings are checked before the model is loaded, which takes a while.
    DicomNode(args.ae, args.bind, args.port, listening=True)
    for title in args.allow:
        check_ae_title(title)
    if not args.allow and not args.allow_any:
        raise LanternError("say which calling AE titles may send images (--allow AE ...), or accept any AE title "
                           "on purpose (--allow-any)")
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            raise LanternError("TLS needs both --tls-cert and --tls-key (and optionally --tls-ca)")
        tls = TlsSettings(args.tls_cert, args.tls_key, args.tls_ca)
    destination = parse_node(args.send_to) if args.send_to else None
    kinds = parse_kinds(args.dicom_objects) if args.dicom_objects else DICOM_OBJECT_KINDS
    dicom = bool(args.dicom_objects or destination)
    model = load_model(args.model, args.engine)
    # Result objects need maps: then every image gets a full analysis with the default method.
    options = BatchOptions(method=DEFAULT_METHOD if dicom else None, mc_samples=args.mc,
                           confidence_threshold=args.threshold)
    exporter = (BatchExporter(args.inbox, args.out, model, png=False, dicom=True, report=False, method=DEFAULT_METHOD,
                              dicom_objects=kinds) if dicom else None)
    sender = ResultSender(destination, args.ae) if destination else None
    node = ReceiveAndAnalyse(args.inbox, args.out, model, options, exporter=exporter, sender=sender,
                             ae_title=args.ae, port=args.port, bind=args.bind,
                             allowed_ae=args.allow, allowed_hosts=args.allow_host, allow_any=args.allow_any,
                             min_free_bytes=int(args.min_free_mb * 2**20), tls=tls)
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        stop.set()
        signal.signal(signum, earlier[signum])  # a second Ctrl-C is not ignored if stopping hangs

    earlier = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        earlier[signum] = signal.signal(signum, request_stop)
    shown = _show_network_log()
    try:
        node.start()
        who = "any AE title" if args.allow_any else ", ".join(sorted(node.scp.allowed_ae))
        print(f"Listening as {node.scp.node.ae_title} on {node.scp.node.host}:{node.scp.port} "
              f"({'TLS' if tls else 'no TLS'}) for {who}; inbox {args.inbox}, results in {args.out} "
              f"({model.engine}). Ctrl-C or SIGTERM stops.", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            node.refusals.flush()
    finally:
        node.stop()
        for signum, handler in earlier.items():
            signal.signal(signum, handler)
        log.removeHandler(shown)
    sent = (f", {sender.sent} result object(s) sent to {destination}"
            + (f" ({len(sender.unsent)} not sent)" if sender.unsent else "")) if sender else ""
    print(f"Stopped. {node.loop.analysed} image(s) in the worklist{sent}, {len(node.refusals.rows)} refusal(s) "
          f"in {node.refusals.path}", file=sys.stderr, flush=True)
    return 0
