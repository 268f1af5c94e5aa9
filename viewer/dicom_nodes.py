"""Network > DICOM nodes…: Lantern's own listener (AE title, port, bind address, who may send,
inbox, free-space floor, start with Lantern, TLS files) beside the remote nodes (node_editor.py).

OK checks every value with the engine's rules first: a refused value keeps the page open and
shows the engine's plain-words reason under its field. Only then is the configuration saved
(network_config.save) and handed to whoever opened the page (``config``), which restarts a
running listener with it.
"""

from __future__ import annotations

from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine import LanternError
from viewer.network_config import (ListenerConfig, NetworkConfig, default_inbox, listener_problems, parse_hosts,
                                   parse_port, parse_titles, save)
from viewer.network_jobs import network_runner
from viewer.node_editor import FieldError, NodeEditor, with_error

TLS_FIELDS = ("tls_certificate", "tls_key", "tls_ca")


class DicomNodesDialog(QDialog):
    def __init__(self, settings, config: NetworkConfig, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("DICOM nodes")
        self.settings = settings
        self.config: NetworkConfig | None = None  # what OK saved
        self.runner = network_runner(self)  # the Echo button's; closed with the page
        self.finished.connect(lambda _result: self.runner.close())
        listener = config.listener
        self.fields: dict[str, QLineEdit] = {
            "ae_title": QLineEdit(listener.ae_title), "port": QLineEdit(str(listener.port)),
            "bind": QLineEdit(listener.bind), "allowed_ae": QLineEdit(", ".join(listener.allowed_ae)),
            "allowed_hosts": QLineEdit(", ".join(listener.allowed_hosts)), "inbox": QLineEdit(listener.inbox),
            **{key: QLineEdit(getattr(listener, key)) for key in TLS_FIELDS}}
        f = self.fields
        f["port"].setToolTip("0: any free port, chosen when the listener starts")
        f["bind"].setToolTip("127.0.0.1: this computer only. The workstation's own address (or 0.0.0.0, every "
                             "address) lets modalities and the PACS reach it.")
        f["allowed_ae"].setPlaceholderText("e.g. ORTHANC, CR_ROOM_2 (comma-separated)")
        f["allowed_hosts"].setPlaceholderText("any address; or e.g. 10.1.2.3, 10.1.2.0/24")
        f["inbox"].setPlaceholderText(str(default_inbox()))
        f["tls_ca"].setPlaceholderText("optional")
        f["tls_ca"].setToolTip("With CA certificates, a sender must show a certificate they signed")
        self.allow_any = QCheckBox("Accept any calling AE title (not recommended)")
        self.allow_any.setChecked(listener.allow_any)
        self.min_free = QSpinBox()
        self.min_free.setRange(0, 10_000_000)
        self.min_free.setSuffix(" MB")
        self.min_free.setValue(listener.min_free_mb)
        self.min_free.setToolTip("Images are refused (out of resources) rather than fill the disk below this")
        self.start_with_lantern = QCheckBox("Start listening when Lantern starts")
        self.start_with_lantern.setChecked(listener.start_with_lantern)
        self.errors: dict[str, FieldError] = {}

        form = QFormLayout()
        rows = (("ae_title", "AE title", None), ("port", "Port", None), ("bind", "Listen on", None),
                ("allowed_ae", "Accept from AE titles", self.allow_any),
                ("allowed_hosts", "Accept from addresses", None), ("inbox", "Inbox folder", "folder"),
                ("tls_certificate", "TLS certificate", "file"), ("tls_key", "TLS key", "file"),
                ("tls_ca", "TLS CA certificates", "file"))
        for key, label, extra in rows:
            if key == "tls_certificate":
                form.addRow("Keep free on disk", self.min_free)
                form.addRow(self.start_with_lantern)
            field = self._browsable(key, extra) if isinstance(extra, str) else self.fields[key]
            box, self.errors[key] = with_error(field)
            if isinstance(extra, QWidget):
                box.layout().insertWidget(1, extra)
            form.addRow(label, box)
        own = QGroupBox("This workstation (Lantern's listener)")
        own.setLayout(form)
        self.nodes = NodeEditor(config, self.runner, lambda: self.fields["ae_title"].text())
        columns = QHBoxLayout()
        columns.addWidget(own, 1)
        columns.addWidget(self.nodes, 1)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #ff8a80;")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        layout = QVBoxLayout(self)
        layout.addLayout(columns, 1)
        layout.addWidget(self.message)
        layout.addWidget(buttons)
        self.resize(1000, 640)

    def _browsable(self, key: str, kind: str) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.fields[key], 1)
        button = QPushButton("Browse…")
        button.clicked.connect(lambda: self._browse(key, kind))
        row.addWidget(button)
        return box

    def _browse(self, key: str, kind: str) -> None:
        current = self.fields[key].text()
        if kind == "folder":
            chosen = QFileDialog.getExistingDirectory(self, "Inbox folder", current or str(default_inbox()))
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "TLS file (PEM)", current, "PEM (*.pem *.crt *.key);;All (*)")
        if chosen:
            self.fields[key].setText(chosen)

    # checking -------------------------------------------------------------------------------
    def listener_config(self) -> tuple[ListenerConfig, dict[str, str]]:
        """The listener as typed, and {field: the engine's reason} for each value it refuses."""
        problems: dict[str, str] = {}
        text = {key: field.text().strip() for key, field in self.fields.items()}

        def parsed(key: str, parse, fallback):
            try:
                return parse(text[key])
            except LanternError as exc:
                problems[key] = exc.message
                return fallback

        config = ListenerConfig(
            ae_title=text["ae_title"], port=parsed("port", lambda t: parse_port(t, listening=True), 0),
            bind=text["bind"], allowed_ae=parsed("allowed_ae", parse_titles, ()),
            allowed_hosts=parsed("allowed_hosts", parse_hosts, ()), allow_any=self.allow_any.isChecked(),
            inbox=text["inbox"], min_free_mb=self.min_free.value(),
            start_with_lantern=self.start_with_lantern.isChecked(),
            **{key: text[key] for key in TLS_FIELDS})
        for key, reason in listener_problems(config).items():
            if key == "allowed_ae" and problems.get(key):
                continue  # the first reason is the one to fix
            problems.setdefault(key, reason)
        return config, problems

    def show_problems(self, problems: dict[str, str]) -> None:
        for error in self.errors.values():
            error.show_reason("")
        for key, reason in problems.items():
            if key == "tls":  # the engine says which TLS file: its reason goes under that field
                key = next((f"tls_{n}" for n in ("key", "ca") if f"TLS {n} " in reason), "tls_certificate")
            self.errors[key].show_reason(reason)

    def accept(self) -> None:
        listener, problems = self.listener_config()
        self.show_problems(problems)
        nodes_ok = self.nodes.validate()
        if problems or not nodes_ok:
            self.message.setText("Some values cannot be used: the reason is under each one. Nothing was saved.")
            return
        self.config = NetworkConfig(listener, self.nodes.nodes(), self.nodes.marked("pacs"),
                                    self.nodes.marked("destination"), self.nodes.retrieve.currentData())
        save(self.settings, self.config)
        super().accept()
