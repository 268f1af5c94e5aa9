"""The remote half of the DICOM nodes page: the PACS and other nodes Lantern talks to (name, AE
title, host, port), which one is searched and retrieved from, which one File > Send to PACS sends
to, and an Echo button that asks the selected node whether it answers Lantern.

A list with one form beside it, not an editable table: a refused value then gets the engine's
reason right next to its field, as on the listener's side of the page.
"""

from __future__ import annotations

from typing import Callable

from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QPushButton, QVBoxLayout, QWidget)

from engine import LanternError
from engine.network.nodes import DicomNode, check_ae_title
from viewer.jobs import user_message
from viewer.network_config import RETRIEVE_GET, RETRIEVE_MOVE, NetworkConfig, RemoteNode, parse_port
from viewer.network_jobs import NetworkJob

NODE_FIELDS = ("name", "ae_title", "host", "port")
RETRIEVE_CHOICES = {RETRIEVE_MOVE: "C-MOVE: the PACS sends to Lantern's listener",
                    RETRIEVE_GET: "C-GET: over the query connection (no listener needed)"}


class FieldError(QLabel):
    """The engine's reason for refusing a field's value, shown right under the field."""

    def __init__(self):
        super().__init__()
        self.setWordWrap(True)
        self.setStyleSheet("color: #ff8a80;")
        self.setVisible(False)

    def show_reason(self, reason: str) -> None:
        self.setText(reason)
        self.setVisible(bool(reason))


def with_error(field: QWidget) -> tuple[QWidget, FieldError]:
    box, error = QWidget(), FieldError()
    column = QVBoxLayout(box)
    column.setContentsMargins(0, 0, 0, 0)
    column.setSpacing(1)
    column.addWidget(field)
    column.addWidget(error)
    return box, error


def node_problems(raw: dict[str, str], others: list[str]) -> dict[str, str]:
    """{field: reason} for one node typed as text; ``others``: the other nodes' names."""
    problems = {}
    name = raw["name"].strip()
    if not name:
        problems["name"] = "give the node a name (e.g. PACS)"
    elif name in others:
        problems["name"] = f"another node is already called {name!r}"
    checks = {"ae_title": lambda: check_ae_title(raw["ae_title"]),
              "port": lambda: parse_port(raw["port"]),
              "host": lambda: DicomNode("NODE", raw["host"], 104)}
    for key, check in checks.items():
        try:
            check()
        except LanternError as exc:
            problems[key] = exc.message
    return problems


class NodeEditor(QGroupBox):
    def __init__(self, config: NetworkConfig, runner, calling_ae: Callable[[], str]):
        super().__init__("Remote DICOM nodes")
        self.runner, self.calling_ae = runner, calling_ae
        self.raw = [{"name": n.name, "ae_title": n.ae_title, "host": n.host, "port": str(n.port)} for n in config.nodes]
        names = [n.name for n in config.nodes]
        self.pacs = names.index(config.pacs) if config.pacs in names else None
        self.destination = names.index(config.destination) if config.destination in names else None
        self.current = -1
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._select)
        add, self.remove_button = QPushButton("Add"), QPushButton("Remove")
        add.clicked.connect(self.add)
        self.remove_button.clicked.connect(self.remove)
        self.fields = {key: QLineEdit() for key in NODE_FIELDS}
        self.fields["ae_title"].setPlaceholderText("e.g. ORTHANC")
        self.fields["host"].setPlaceholderText("e.g. 10.1.2.3 or pacs.hospital.local")
        self.fields["port"].setPlaceholderText("104, 4242, 11112…")
        self.errors: dict[str, FieldError] = {}
        form = QFormLayout()
        for key, label in zip(NODE_FIELDS, ("Name", "AE title", "Host", "Port")):
            box, self.errors[key] = with_error(self.fields[key])
            form.addRow(label, box)
            self.fields[key].editingFinished.connect(self._commit)
        self.pacs_check = QCheckBox("Search and retrieve from this node (the PACS)")
        self.destination_check = QCheckBox("Send to PACS sends to this node")
        self.pacs_check.toggled.connect(lambda on: self._mark("pacs", on))
        self.destination_check.toggled.connect(lambda on: self._mark("destination", on))
        form.addRow(self.pacs_check)
        form.addRow(self.destination_check)
        self.retrieve = QComboBox()
        for key, text in RETRIEVE_CHOICES.items():
            self.retrieve.addItem(text, key)
        self.retrieve.setCurrentIndex(list(RETRIEVE_CHOICES).index(config.retrieve))
        form.addRow("Retrieve by", self.retrieve)
        self.echo_button = QPushButton("Echo")
        self.echo_button.setToolTip("C-ECHO: does this node answer Lantern's AE title?")
        self.echo_button.clicked.connect(self.echo)
        self.echo_result = QLabel("")
        self.echo_result.setWordWrap(True)
        buttons = QHBoxLayout()
        for widget in (add, self.remove_button, self.echo_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.echo_result)
        layout.addLayout(form)
        self._refill()
        self.list.setCurrentRow(0 if self.raw else -1)
        self._select(self.list.currentRow())

    # editing --------------------------------------------------------------------------------
    def _label(self, i: int) -> str:
        raw = self.raw[i]
        marks = [m for m, on in (("PACS", i == self.pacs), ("send to", i == self.destination)) if on]
        text = f"{raw['name'] or '(no name)'} — {raw['ae_title']}@{raw['host']}:{raw['port']}"
        return text + (f"   [{', '.join(marks)}]" if marks else "")

    def _refill(self) -> None:
        for i in range(len(self.raw)):
            if i < self.list.count():
                self.list.item(i).setText(self._label(i))
            else:
                self.list.addItem(self._label(i))

    def _commit(self) -> None:
        if 0 <= self.current < len(self.raw):
            self.raw[self.current] = {key: field.text().strip() for key, field in self.fields.items()}
            self._refill()

    def _select(self, row: int) -> None:
        self._commit()
        self.current = row
        editing = 0 <= row < len(self.raw)
        for key, field in self.fields.items():
            field.setEnabled(editing)
            field.setText(self.raw[row][key] if editing else "")
            self.errors[key].show_reason("")
        for check, marked in ((self.pacs_check, self.pacs), (self.destination_check, self.destination)):
            check.blockSignals(True)
            check.setChecked(editing and marked == row)
            check.setEnabled(editing)
            check.blockSignals(False)
        self.remove_button.setEnabled(editing)
        self.echo_button.setEnabled(editing)

    def _mark(self, which: str, on: bool) -> None:
        """One PACS and one destination: marking a node takes the mark from the one before."""
        if 0 <= self.current < len(self.raw):
            setattr(self, which, self.current if on else None)
            self._refill()

    def add(self) -> None:
        self._commit()
        self.raw.append({"name": f"Node {len(self.raw) + 1}", "ae_title": "", "host": "", "port": "104"})
        self._refill()
        self.list.setCurrentRow(len(self.raw) - 1)
        self.fields["ae_title"].setFocus()

    def remove(self) -> None:
        row = self.current
        if not 0 <= row < len(self.raw):
            return
        self.current = -1  # nothing to commit: the node is going
        del self.raw[row]
        self.list.takeItem(row)
        for which in ("pacs", "destination"):
            marked = getattr(self, which)
            if marked is not None and marked >= row:  # the marked node went, or moved up one
                setattr(self, which, None if marked == row else marked - 1)
        self._refill()
        self._select(self.list.currentRow())

    # reading back ---------------------------------------------------------------------------
    def problems(self, i: int) -> dict[str, str]:
        return node_problems(self.raw[i], [r["name"].strip() for j, r in enumerate(self.raw) if j != i])

    def validate(self) -> bool:
        """Check every node; the first bad one is selected with its reasons beside its fields."""
        self._commit()
        for i in range(len(self.raw)):
            problems = self.problems(i)
            if problems:
                self.list.setCurrentRow(i)
                for key, error in self.errors.items():
                    error.show_reason(problems.get(key, ""))
                return False
        return True

    def nodes(self) -> tuple[RemoteNode, ...]:
        return tuple(RemoteNode(r["name"].strip(), check_ae_title(r["ae_title"]), r["host"].strip(),
                                parse_port(r["port"])) for r in self.raw)

    def marked(self, which: str) -> str:
        index = getattr(self, which)
        return self.raw[index]["name"].strip() if index is not None and index < len(self.raw) else ""

    # echo -----------------------------------------------------------------------------------
    def echo(self) -> None:
        from engine.network.verification import echo

        self._commit()
        problems = self.problems(self.current)
        for key, error in self.errors.items():
            error.show_reason(problems.get(key, ""))
        if problems:
            return
        try:
            calling = check_ae_title(self.calling_ae())
        except LanternError as exc:
            self.echo_result.setText(f"✗ Lantern's own AE title is not valid ({exc.message}): it is the calling AE.")
            return
        raw = self.raw[self.current]
        node = DicomNode(raw["ae_title"], raw["host"], parse_port(raw["port"]))
        self.echo_result.setText(f"Echoing {node} as {calling}…")
        self.runner.start(NetworkJob(lambda _progress, _cancel: echo(node, calling), "echoing a DICOM node"),
                          key="echo", on_done=lambda result: self.echo_result.setText(f"✓ {result.summary}"),
                          on_failed=lambda exc: self.echo_result.setText(f"✗ {user_message(exc, 'echoing')}"))
