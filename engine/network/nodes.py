"""A DICOM node: who Lantern talks to (or listens as) on the network, checked before any socket
is opened, so a typo in an AE title or a port is reported in plain words rather than as a
rejected association minutes later."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LanternError

MAX_AE_TITLE = 16  # PS3.5 6.2: AE is at most 16 characters
EPHEMERAL_PORT = 0  # a listener bound to port 0 gets a free port from the OS (tests, benchmarks)


def check_ae_title(title: str) -> str:
    """The AE title without its insignificant leading/trailing spaces, or a LanternError.

    PS3.5 6.2 allows the default character repertoire without backslash and control
    characters; a title of spaces only is no title."""
    if not isinstance(title, str):
        raise LanternError(f"an AE title must be text, not {type(title).__name__}")
    stripped = title.strip(" ")
    if not stripped:
        raise LanternError("an AE title cannot be empty or only spaces")
    if len(stripped) > MAX_AE_TITLE:
        raise LanternError(f"the AE title {title!r} is longer than {MAX_AE_TITLE} characters")
    bad = [c for c in stripped if c == "\\" or not (" " <= c <= "~")]
    if bad:
        raise LanternError(f"the AE title {title!r} contains {bad[0]!r}: only letters, digits, spaces and "
                           "printable ASCII punctuation other than backslash are allowed")
    return stripped


def check_port(port: int, *, listening: bool = False) -> int:
    """A TCP port number; 0 (the OS picks one) only for a listener."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise LanternError(f"a port must be a whole number, not {port!r}")
    low = EPHEMERAL_PORT if listening else 1
    if not low <= port <= 65535:
        raise LanternError(f"the port {port} is outside {low}-65535")
    return port


def check_address(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An allowed peer: one IP address or a network (``10.0.0.0/8``). Host names are refused:
    resolving them would make the allow-list depend on the name server at the time."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise LanternError(f"{text!r} is not an IP address or network (e.g. 10.1.2.3 or 10.1.2.0/24); "
                           "give addresses, not host names") from None


def peer_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A connected peer's address, IPv4-mapped IPv6 (``::ffff:10.1.2.3``) seen as the IPv4
    address it is, so one allow-list entry covers both; None when it is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


@dataclass(frozen=True)
class TlsSettings:
    """The files of a TLS endpoint: its certificate and key (PEM) and, optionally, the CA
    certificates the other side's certificate must be signed by (which makes it required)."""

    certificate: Path
    key: Path
    ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("certificate", "key", "ca"):
            value = getattr(self, name)
            if value is None:
                continue
            path = Path(value)
            object.__setattr__(self, name, path)
            if not path.is_file():
                raise LanternError(f"the TLS {name} file does not exist", path)


@dataclass(frozen=True)
class DicomNode:
    """A remote DICOM application entity, or Lantern's own when it listens (``host`` is then
    the address it binds to and ``port`` may be 0)."""

    ae_title: str
    host: str
    port: int
    tls: TlsSettings | None = None
    listening: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title))
        check_port(self.port, listening=self.listening)
        if not isinstance(self.host, str) or not self.host.strip() or any(c.isspace() for c in self.host.strip()):
            raise LanternError(f"{self.host!r} is not a host name or address")
        object.__setattr__(self, "host", self.host.strip())

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """What a listener wraps its connections in: TLS 1.2 or later with ``tls``'s certificate;
    with a CA file, a peer must show a certificate signed by it (and only by it: the system's
    CAs are not trusted for this)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (ssl.SSLError, OSError) as exc:
        raise LanternError(f"the TLS certificate and key cannot be used together ({exc})", tls.certificate) from exc
    if tls.ca is not None:
        try:
            context.load_verify_locations(cafile=tls.ca)
        except (ssl.SSLError, OSError) as exc:
            raise LanternError(f"the TLS CA file cannot be read as PEM certificates ({exc})", tls.ca) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HandshakeOnFirstRead:
    """The TLS context as pynetdicom's server uses it, with the handshake left to the
    association's own thread: pynetdicom wraps every accepted socket on its one accepting thread,
    where a peer that connects and says nothing would hold up every other sender for as long as
    it likes. OpenSSL completes the handshake on the first read instead."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context

    def wrap_socket(self, sock, server_side: bool = True, **_options) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
