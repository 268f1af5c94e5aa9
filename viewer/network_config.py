"""What Lantern knows about the hospital network: its own listener and the remote DICOM nodes,
kept in QSettings (viewer/settings.py) under ``network/``.

Plain data, checked with the engine's own rules (engine/network/nodes.py), so the settings page
shows the engine's plain-words reason for a bad value next to its field, and a value that got
into the settings file by hand is reported, not crashed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QStandardPaths

from engine import LanternError
from engine.network.nodes import DicomNode, TlsSettings, check_address, check_ae_title, check_port

PREFIX = "network/"
DEFAULT_MIN_FREE_MB = 500
RETRIEVE_MOVE, RETRIEVE_GET = "move", "get"


def default_inbox() -> Path:
    """Beside the worklists, in Lantern's data folder: received studies are patient data and
    belong with Lantern's other working files, not in the user's documents."""
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(location) / "inbox"


@dataclass(frozen=True)
class RemoteNode:
    name: str
    ae_title: str
    host: str
    port: int

    def dicom_node(self) -> DicomNode:
        return DicomNode(self.ae_title, self.host, self.port)

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str = "LANTERN"
    port: int = 11112
    bind: str = "127.0.0.1"  # loopback unless the site opens it on purpose
    allowed_ae: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    allow_any: bool = False
    inbox: str = ""  # "" means default_inbox(), wherever the data folder is on this machine
    min_free_mb: int = DEFAULT_MIN_FREE_MB
    start_with_lantern: bool = False
    tls_certificate: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    @property
    def inbox_folder(self) -> Path:
        return Path(self.inbox) if self.inbox else default_inbox()

    def tls(self) -> TlsSettings | None:
        """The TLS files, or None without a certificate; a LanternError names a missing file."""
        if not (self.tls_certificate or self.tls_key):
            return None
        if not (self.tls_certificate and self.tls_key):
            raise LanternError("TLS needs both a certificate and its key")
        return TlsSettings(Path(self.tls_certificate), Path(self.tls_key), Path(self.tls_ca) if self.tls_ca else None)


@dataclass(frozen=True)
class NetworkConfig:
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    nodes: tuple[RemoteNode, ...] = ()
    pacs: str = ""  # the name of the node searched and retrieved from
    destination: str = ""  # the name of the node File > Send to PACS sends to
    retrieve: str = RETRIEVE_MOVE

    def node_named(self, name: str) -> RemoteNode | None:
        return next((n for n in self.nodes if n.name == name), None)


# -- checking text typed into the settings page --------------------------------------------

def parse_port(text: str, *, listening: bool = False) -> int:
    text = str(text).strip()
    return check_port(int(text) if text.isdigit() else text, listening=listening)


def parse_titles(text: str) -> tuple[str, ...]:
    """Comma-separated AE titles, each checked (an AE title may hold spaces, not commas here)."""
    return tuple(dict.fromkeys(check_ae_title(part) for part in text.split(",") if part.strip()))


def parse_hosts(text: str) -> tuple[str, ...]:
    hosts = [part.strip() for part in text.split(",") if part.strip()]
    for host in hosts:
        check_address(host)
    return tuple(hosts)


def parse_free_mb(text: str) -> int:
    text = str(text).strip()
    if not text.isdigit():
        raise LanternError(f"the free-space floor is a whole number of megabytes, not {text!r}")
    return int(text)


def listener_problems(config: ListenerConfig) -> dict[str, str]:
    """{field: the engine's reason} for what the listener would refuse to start with."""
    problems: dict[str, str] = {}
    checks = {
        "ae_title": lambda: check_ae_title(config.ae_title),
        "port": lambda: check_port(config.port, listening=True),
        "bind": lambda: DicomNode("LANTERN", config.bind, 0, listening=True),  # the address alone
        "allowed_ae": lambda: [check_ae_title(t) for t in config.allowed_ae],
        "allowed_hosts": lambda: [check_address(h) for h in config.allowed_hosts],
        "tls": config.tls,
    }
    for name, check in checks.items():
        try:
            check()
        except LanternError as exc:
            problems[name] = exc.message
    if "allowed_ae" not in problems and not config.allowed_ae and not config.allow_any:
        problems["allowed_ae"] = ("say which calling AE titles may send images (an allow-list), or allow any "
                                  "AE title explicitly")
    return problems


# -- QSettings ------------------------------------------------------------------------------

def _text_list(value) -> tuple[str, ...]:
    """An INI file gives back a one-item list as a plain string and an empty one as nothing."""
    if value is None or value == "":
        return ()
    return tuple(str(v) for v in ([value] if isinstance(value, str) else value))


def _flag(value, default: bool = False) -> bool:
    if value is None:
        return default
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _number(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def load(settings) -> NetworkConfig:
    """The saved configuration (viewer.settings.Settings), defaults where nothing is saved."""
    q, d = settings.q, ListenerConfig()

    def text(key: str, default: str = "") -> str:
        value = q.value(PREFIX + key, default)
        return default if value is None else str(value)

    listener = ListenerConfig(
        ae_title=text("listener/ae_title", d.ae_title), port=_number(q.value(PREFIX + "listener/port"), d.port),
        bind=text("listener/bind", d.bind), allowed_ae=_text_list(q.value(PREFIX + "listener/allowed_ae")),
        allowed_hosts=_text_list(q.value(PREFIX + "listener/allowed_hosts")),
        allow_any=_flag(q.value(PREFIX + "listener/allow_any")), inbox=text("listener/inbox"),
        min_free_mb=_number(q.value(PREFIX + "listener/min_free_mb"), d.min_free_mb),
        start_with_lantern=_flag(q.value(PREFIX + "listener/start_with_lantern")),
        tls_certificate=text("listener/tls_certificate"), tls_key=text("listener/tls_key"),
        tls_ca=text("listener/tls_ca"))
    nodes = []
    count = q.beginReadArray(PREFIX + "nodes")
    for i in range(count):
        q.setArrayIndex(i)
        nodes.append(RemoteNode(str(q.value("name", "")), str(q.value("ae_title", "")), str(q.value("host", "")),
                                _number(q.value("port"), 104)))
    q.endArray()
    retrieve = text("retrieve", RETRIEVE_MOVE)
    return NetworkConfig(listener, tuple(nodes), text("pacs"), text("destination"),
                         retrieve if retrieve in (RETRIEVE_MOVE, RETRIEVE_GET) else RETRIEVE_MOVE)


def save(settings, config: NetworkConfig) -> None:
    q, listener = settings.q, config.listener
    for key in ("ae_title", "port", "bind", "allow_any", "inbox", "min_free_mb", "start_with_lantern",
                "tls_certificate", "tls_key", "tls_ca"):
        q.setValue(f"{PREFIX}listener/{key}", getattr(listener, key))
    # Lists as lists (QSettings quotes them), so an AE title with a space survives the INI file.
    q.setValue(PREFIX + "listener/allowed_ae", list(listener.allowed_ae))
    q.setValue(PREFIX + "listener/allowed_hosts", list(listener.allowed_hosts))
    q.remove(PREFIX + "nodes")  # a shorter list must not keep the old tail
    q.beginWriteArray(PREFIX + "nodes", len(config.nodes))
    for i, node in enumerate(config.nodes):
        q.setArrayIndex(i)
        for key in ("name", "ae_title", "host", "port"):
            q.setValue(key, getattr(node, key))
    q.endArray()
    for key in ("pacs", "destination", "retrieve"):
        q.setValue(PREFIX + key, getattr(config, key))
    q.sync()
