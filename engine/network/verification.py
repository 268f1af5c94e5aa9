"""C-ECHO: "can Lantern talk to this node?", asked before a reader needs a study from it.

An echo opens a real association, so it checks everything a query or a send will need: the
address and port, the node's AE title, and that the node knows Lantern's calling AE title.
Failures come back as the same plain-words :class:`~engine.errors.LanternError` as every other
service user (association.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.errors import LanternError
from engine.network.association import Node, associate, describe, status_text

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class EchoResult:
    node: str  # as describe() writes it
    milliseconds: float  # association, echo and release: what a reader waits for

    @property
    def summary(self) -> str:
        return f"{self.node} answered in {self.milliseconds:.0f} ms"


def echo(node: Node, calling_ae: str) -> EchoResult:
    """C-ECHO ``node`` as ``calling_ae``; a LanternError says why it did not answer success."""
    start = time.perf_counter()
    with associate(node, calling_ae, [VERIFICATION]) as assoc:
        status = assoc.send_c_echo()
        if not status:  # pynetdicom yields an empty data set when nothing came back in time
            raise LanternError(f"{describe(node)} accepted the association but did not answer the echo")
        if int(status.Status) != 0x0000:
            raise LanternError(f"{describe(node)} answered the echo with {status_text(status)}")
    return EchoResult(describe(node), (time.perf_counter() - start) * 1000)
