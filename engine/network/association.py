"""Opening an association with a remote DICOM node, with failures said in plain words.

Every Lantern service user (query, retrieve, send) goes through :func:`associate`: a refused
connection, an unknown calling AE title, a node that accepts none of the asked services and a
timeout each become a :class:`~engine.errors.LanternError` naming the node, which is what a
radiologist or a PACS administrator needs to see, not pynetdicom's log.
"""

from __future__ import annotations

import ssl
from contextlib import contextmanager
from typing import Iterator, Protocol

from engine.errors import LanternError

TIMEOUT_S = 30  # ACSE, DIMSE and network timeouts: a stalled PACS fails a request, never hangs it


class Node(Protocol):
    ae_title: str
    host: str
    port: int


def describe(node: Node) -> str:
    return f"{node.ae_title} at {node.host}:{node.port}"


@contextmanager
def associate(node: Node, calling_ae: str, contexts, *, ext_neg=None, evt_handlers=None,
              ssl_context: ssl.SSLContext | None = None) -> Iterator["object"]:
    """An established association (released on exit, aborted if the caller raised).

    ``contexts``: abstract syntaxes (UIDs) or pynetdicom presentation contexts to propose."""
    from pynetdicom import AE
    from pynetdicom.presentation import PresentationContext

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.connection_timeout = 10
    for context in contexts:
        if isinstance(context, PresentationContext):
            ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
        else:
            ae.add_requested_context(context)
    tls = (ssl_context, node.host) if ssl_context is not None else None
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, ext_neg=ext_neg,
                             evt_handlers=evt_handlers, tls_args=tls)
    except (OSError, ValueError) as exc:
        raise LanternError(f"could not reach the DICOM node {describe(node)}: {exc}") from exc
    if assoc.is_rejected:
        raise LanternError(f"the DICOM node {describe(node)} refused the association from '{calling_ae}': "
                           "the node must know Lantern's AE title and address (add it there as a known "
                           "modality), and the called AE title must be the node's own")
    if not assoc.is_established:
        raise LanternError(f"no association with the DICOM node {describe(node)}: it did not answer, closed "
                           "the connection or accepted none of the requested services (is the port right, "
                           "and does it speak TLS when Lantern does not, or the reverse?)")
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()


def accepted(assoc, abstract_syntax: str) -> bool:
    return any(cx.abstract_syntax == abstract_syntax for cx in assoc.accepted_contexts)


def status_text(status) -> str:
    """A DIMSE status as words and hex, e.g. 'failure 0xA700 (out of resources)'."""
    from pynetdicom.status import code_to_category, STORAGE_SERVICE_CLASS_STATUS

    code = int(getattr(status, "Status", 0xC000))
    category = code_to_category(code).lower()
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (None, ""))[1]
    comment = str(status.get("ErrorComment", "") or "") if hasattr(status, "get") else ""
    extra = "; ".join(x for x in (meaning, comment) if x)
    return f"{category} 0x{code:04X}" + (f" ({extra})" if extra else "")
