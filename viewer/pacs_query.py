"""Network > Query PACS…: find studies on the PACS (C-FIND) and bring one into Lantern.

Retrieve is a C-MOVE to Lantern's own listener (the PACS opens a connection back to it, so the
listener must be running and the PACS must know it) or, when the settings say so, a C-GET that
brings the images back over the query's own connection into the same inbox. Either way they go
through the listener's storage checks and reach the worklist as they arrive (inbox_feed.py).

Searches and retrieves run on the network pool (network_jobs.py); Cancel sets the retrieve's
threading.Event, and the engine answers it with a C-CANCEL to the PACS. The dialog is not modal:
the reader keeps reading while a study comes in.
"""

from __future__ import annotations

from PySide6.QtCore import QDate, Qt
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDateEdit, QDialog, QFormLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from viewer.jobs import user_message
from viewer.network_config import RETRIEVE_GET, load
from viewer.network_jobs import NetworkJob, network_runner

COLUMNS = ("Patient", "Patient ID", "Study date", "Modality", "Accession", "Description", "Images")
MODALITIES = ("", "CR", "DX", "CT", "MR", "US", "MG", "XA", "NM", "PT")
FIND_JOB, RETRIEVE_JOB = "find", "retrieve"


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


class PacsQueryDialog(QDialog):
    def __init__(self, window, listener, parent: QWidget | None = None):
        super().__init__(parent or window)
        self.setWindowTitle("Query PACS")
        self.window, self.listener = window, listener
        self.runner = network_runner(self)
        self.finished.connect(lambda _result: self.stop())  # closing cancels a retrieve too
        self.matches: list = []
        self.last_result = None
        self.patient_name, self.patient_id, self.accession = QLineEdit(), QLineEdit(), QLineEdit()
        self.patient_name.setPlaceholderText("e.g. DOE^J* (wildcards * and ?)")
        self.modality = QComboBox()
        self.modality.setEditable(True)
        self.modality.addItems(MODALITIES)
        today = QDate.currentDate()
        self.date_from, self.date_to = QDateEdit(today.addMonths(-1)), QDateEdit(today)
        for edit in (self.date_from, self.date_to):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd")
        self.any_date = QCheckBox("Any date")
        self.any_date.toggled.connect(lambda on: [e.setEnabled(not on) for e in (self.date_from, self.date_to)])
        self.any_date.setChecked(True)
        dates = QHBoxLayout()
        for widget in (self.date_from, QLabel("to"), self.date_to, self.any_date):
            dates.addWidget(widget)
        dates.addStretch(1)
        form = QFormLayout()
        form.addRow("Patient name", self.patient_name)
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Study date", dates)
        form.addRow("Modality", self.modality)
        form.addRow("Accession number", self.accession)
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.search_button.clicked.connect(self.search)
        self.node_label = QLabel("")
        self.node_label.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(COLUMNS.index("Description"), QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(lambda _index: self.retrieve())
        self.retrieve_button = QPushButton("Retrieve")
        self.retrieve_button.setEnabled(False)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        search_row = QHBoxLayout()
        search_row.addWidget(self.node_label, 1)
        search_row.addWidget(self.search_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.retrieve_button)
        bottom.addWidget(self.progress, 1)
        bottom.addWidget(self.cancel_button)
        bottom.addStretch(0)  # Retrieve keeps its size while the progress bar is hidden
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(search_row)
        layout.addWidget(self.table, 1)
        layout.addLayout(bottom)
        layout.addWidget(self.message)
        self.resize(940, 600)
        self.refresh_node()

    # the PACS -------------------------------------------------------------------------------
    def pacs(self):
        """(config, node) from the settings as they are now, or (config, None) with the reason shown."""
        config = load(self.window.settings)
        node = config.node_named(config.pacs)
        if node is None:
            self.say("No PACS is set: in Network > DICOM nodes…, add the PACS and tick “Search and retrieve "
                     "from this node”.", error=True)
        return config, node

    def refresh_node(self) -> None:
        config = load(self.window.settings)
        node = config.node_named(config.pacs)
        how = "C-GET" if config.retrieve == RETRIEVE_GET else "C-MOVE to Lantern's listener"
        self.node_label.setText(f"PACS: {node}, as {config.listener.ae_title}; retrieve by {how}" if node
                                else "No PACS set (Network > DICOM nodes…)")

    def say(self, text: str, *, error: bool = False) -> None:
        self.message.setStyleSheet("color: #ff8a80;" if error else "")
        self.message.setText(text)

    def query(self):
        from engine.network.query_retrieve import StudyQuery

        dates = ("", "") if self.any_date.isChecked() else tuple(
            e.date().toString("yyyyMMdd") for e in (self.date_from, self.date_to))
        return StudyQuery(self.patient_name.text().strip(), self.patient_id.text().strip(), dates[0], dates[1],
                          self.modality.currentText().strip().upper(), self.accession.text().strip())

    # search ---------------------------------------------------------------------------------
    def search(self) -> None:
        from engine.network.query_retrieve import find_studies

        self.refresh_node()
        config, node = self.pacs()
        if node is None:
            return
        query, calling, target = self.query(), config.listener.ae_title, node.dicom_node()
        self.say(f"Searching {node.name}…")
        self.runner.start(NetworkJob(lambda _p, _c: find_studies(target, calling, query), "searching the PACS"),
                          key=FIND_JOB, on_done=self._found,
                          on_failed=lambda exc: self.say(f"Search failed: {user_message(exc, 'searching')}", error=True))

    def _found(self, matches) -> None:
        self.matches = list(matches)
        self.table.setRowCount(len(self.matches))
        for r, m in enumerate(self.matches):
            values = (m.patient_name.replace("^", " ").strip(), m.patient_id, _date(m.study_date),
                      ", ".join(m.modalities), m.accession_number, m.description,
                      "" if m.instances is None else str(m.instances))
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if COLUMNS[c] == "Images":
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.say(f"{len(self.matches)} stud{'y' if len(self.matches) == 1 else 'ies'} found."
                 + (" Choose one and press Retrieve." if self.matches else ""))
        if self.matches:
            self.table.selectRow(0)

    def _selection_changed(self) -> None:
        self.retrieve_button.setEnabled(self.selected() is not None and not self.runner.running(RETRIEVE_JOB))

    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        return self.matches[rows[0].row()] if rows and rows[0].row() < len(self.matches) else None

    # retrieve -------------------------------------------------------------------------------
    def retrieve(self) -> None:
        from engine.network.query_retrieve import get_study, move_study

        match = self.selected()
        config, node = self.pacs()
        if match is None or node is None or self.runner.running(RETRIEVE_JOB):
            return
        target, uid = node.dicom_node(), match.study_uid
        if config.retrieve == RETRIEVE_GET:
            calling, handler = config.listener.ae_title, self.listener.store_handler(config.listener, target.ae_title)
            work = lambda progress, cancel: get_study(target, calling, uid, handler, progress, cancel)  # noqa: E731
        elif not self.listener.running:
            self.say("Lantern's DICOM listener is off, so the PACS has nowhere to send the study. Start it "
                     "(Network > Start the DICOM listener), or choose C-GET in Network > DICOM nodes….", error=True)
            return
        else:
            calling = self.listener.config.ae_title  # the title the PACS knows the running listener by
            work = lambda progress, cancel: move_study(target, calling, uid, calling, progress, cancel)  # noqa: E731
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.retrieve_button.setEnabled(False)
        self.say(f"Retrieving the study of {match.patient_id or 'this patient'} from {node.name}…")
        self.runner.start(NetworkJob(work, "retrieving a study"), key=RETRIEVE_JOB, on_done=self._retrieved,
                          on_failed=self._retrieve_failed, on_progress=self._progress, on_cancelled=self._cancelled)

    def stop(self) -> None:
        """The dialog was closed: its search and retrieve stop (the PACS hears a C-CANCEL) and are not
        heard from again. The runner stays open: the menu shows this same dialog again."""
        for key in (FIND_JOB, RETRIEVE_JOB):
            self.runner.drop(key)
        self._ended()

    def cancel(self) -> None:
        if self.runner.cancel(RETRIEVE_JOB):
            self.say("Cancelling: asking the PACS to stop sending…")

    def _progress(self, progress) -> None:
        self.progress.setRange(0, progress.total)
        self.progress.setValue(progress.step)
        self.progress.setFormat(progress.stage)

    def _ended(self) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._selection_changed()

    def _retrieved(self, result) -> None:
        self.last_result = result
        self._ended()
        self.say(f"Retrieved: {result.summary}. The images appear in the worklist as they are analysed.",
                 error=bool(result.failed))

    def _retrieve_failed(self, exc: BaseException) -> None:
        self._ended()
        text = user_message(exc, "retrieving a study")
        if "0xA801" in text:  # the usual first-day problem, said as what to do about it
            listener = self.listener
            text += (f". The PACS does not know Lantern's listener: its administrator adds the AE title "
                     f"{listener.config.ae_title if listener.config else ''} with this workstation's address and port "
                     f"{listener.port or ''} as a DICOM modality")
        self.say(f"Retrieve failed: {text}", error=True)

    def _cancelled(self) -> None:
        self._ended()
        self.say("Retrieve cancelled. Images that arrived before are kept in the inbox.")
