"""Send DICOM files to a node by C-STORE: Lantern's explanations back into the PACS.

One association for all files; each file's SOP class and transfer syntax are proposed as they
are (nothing is re-encoded). A file the node refuses, or that cannot be read, is reported with
the reason and the rest still go: the result lists every file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from engine.errors import LanternError
from engine.network.association import Node, associate, describe, status_text
from engine.steps import Progress


@dataclass(frozen=True)
class SendResult:
    sent: tuple[Path, ...]
    failed: tuple[tuple[Path, str], ...]  # file, reason in plain words
    cancelled: bool = False

    @property
    def summary(self) -> str:
        text = f"{len(self.sent)} sent, {len(self.failed)} not sent"
        return text + (" (cancelled)" if self.cancelled else "")


def _headers(paths: Sequence[Path]) -> tuple[list[tuple[Path, str, str]], list[tuple[Path, str]]]:
    """(path, SOP class, transfer syntax) of each readable file, and the unreadable ones."""
    import pydicom

    readable, failed = [], []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            readable.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except Exception as exc:  # any file may be anything: say which and go on
            failed.append((path, f"not a DICOM file Lantern can send ({type(exc).__name__}: {exc})"))
    return readable, failed


def send_files(node: Node, calling_ae: str, paths: Sequence[str | Path],
               progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None) -> SendResult:
    """C-STORE every file in ``paths`` to ``node``."""
    import pydicom
    from pynetdicom.presentation import build_context

    paths = [Path(p) for p in paths]
    readable, failed = _headers(paths)
    if not readable:
        return SendResult((), tuple(failed))
    pairs = list(dict.fromkeys((sop, syntax) for _, sop, syntax in readable))
    if len(pairs) > 128:
        raise LanternError(f"{len(pairs)} kinds of object in one send; at most 128 fit one association")
    sent: list[Path] = []
    cancelled = False
    with associate(node, calling_ae, [build_context(sop, syntax) for sop, syntax in pairs]) as assoc:
        for n, (path, sop, syntax) in enumerate(readable):
            if cancel is not None and cancel.is_set():
                cancelled = True
                failed.extend((p, "not sent: cancelled") for p, _, _ in readable[n:])
                break
            if not any(cx.abstract_syntax == sop and cx.transfer_syntax[0] == syntax
                       for cx in assoc.accepted_contexts):
                failed.append((path, f"{describe(node)} does not accept this kind of object "
                                     f"({pydicom.uid.UID(sop).name}, {pydicom.uid.UID(syntax).name})"))
                continue
            status = assoc.send_c_store(pydicom.dcmread(path))
            if not status:
                raise LanternError(f"the connection to {describe(node)} dropped while sending {path.name} "
                                   f"({len(sent)} files sent before)", path)
            if int(status.Status) in (0x0000, 0xB000, 0xB007, 0xB006):
                sent.append(path)
            else:
                failed.append((path, f"{describe(node)} refused it: {status_text(status)}"))
            if progress is not None:
                progress(Progress(f"sent {len(sent)} of {len(readable)}", n + 1, len(readable)))
    return SendResult(tuple(sent), tuple(failed), cancelled)
