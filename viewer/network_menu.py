"""Lantern on the hospital network, wired into the main window: the Network menu (DICOM nodes,
the listener, Query PACS, refusals, the inbox worklist), File > Send to PACS, and the listener's
status in the status bar.

The listener starts with the window when the settings say so, and stops when the window closes
(its port must not outlive the window, or the next Lantern could not listen).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject

from viewer.actions import _action
from viewer.dicom_nodes import DicomNodesDialog
from viewer.inbox_feed import InboxFeed
from viewer.listener import FAILED, DicomListener
from viewer.listener_status import ListenerStatus, RefusalsDialog
from viewer.menus import menu_named
from viewer.network_config import load
from viewer.network_jobs import network_runner
from viewer.pacs_query import PacsQueryDialog
from viewer.send_to_pacs import PacsSender


class Network(QObject):
    """The window's network side: its listener, its dialogs (one of each, reused) and actions."""

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.listener = DicomListener(self)
        self.runner = network_runner(self)
        self.status = ListenerStatus(self.listener)
        self.feed = InboxFeed(window, self.listener, self.inbox)
        self.sender = PacsSender(window, self.runner)
        self.nodes_dialog: DicomNodesDialog | None = None
        self.query_dialog: PacsQueryDialog | None = None
        self.refusals_dialog: RefusalsDialog | None = None
        self.status.settingsRequested.connect(self.open_nodes)
        self.status.refusalsRequested.connect(self.open_refusals)

    def inbox(self):
        """Where images arrive now: the running listener's folder, else the saved one."""
        if self.listener.running:
            return self.listener.config.inbox_folder
        return load(self.window.settings).listener.inbox_folder

    # the listener ----------------------------------------------------------------------------
    def start_listener(self) -> bool:
        started = self.listener.start(load(self.window.settings).listener)
        if not started:
            self.window.show_error(f"The DICOM listener did not start: {self.listener.failure}")
        return started

    def toggle_listener(self) -> None:
        if self.listener.running:
            self.listener.stop()
        else:
            self.start_listener()

    # dialogs ---------------------------------------------------------------------------------
    def open_nodes(self) -> DicomNodesDialog:
        if self.nodes_dialog is not None and self.nodes_dialog.isVisible():
            self.nodes_dialog.raise_()
            return self.nodes_dialog
        dialog = DicomNodesDialog(self.window.settings, load(self.window.settings), self.window)
        dialog.accepted.connect(lambda: self._applied(dialog))
        self.nodes_dialog = dialog
        dialog.open()  # window-modal, and returns at once: nothing waits on the dialog
        return dialog

    def _applied(self, dialog: DicomNodesDialog) -> None:
        """A listener that runs (or failed) is restarted with what was just saved."""
        if dialog.config is not None and (self.listener.running or self.listener.state == FAILED):
            self.listener.start(dialog.config.listener)
        if self.query_dialog is not None:
            self.query_dialog.refresh_node()

    def open_query(self) -> PacsQueryDialog:
        if self.query_dialog is None:
            self.query_dialog = PacsQueryDialog(self.window, self.listener)
        self.query_dialog.refresh_node()
        self.query_dialog.show()
        self.query_dialog.raise_()
        return self.query_dialog

    def open_refusals(self) -> RefusalsDialog:
        if self.refusals_dialog is None:
            self.refusals_dialog = RefusalsDialog(self.listener, self.window)
        self.refusals_dialog.show()
        self.refusals_dialog.raise_()
        return self.refusals_dialog

    def close(self) -> None:
        self.runner.close()
        for dialog in (self.query_dialog, self.nodes_dialog):
            if dialog is not None:
                dialog.close()  # their own runners stop (a retrieve is cancelled at the PACS)
        self.listener.stop(announce=False)


class _StopOnClose(QObject):
    def __init__(self, network: Network):
        super().__init__(network)
        self.network = network

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Close:
            self.network.close()
        return False


def install(window) -> None:
    network = Network(window)
    window.network = network
    window.statusBar().addPermanentWidget(network.status)
    window.installEventFilter(_StopOnClose(network))
    a = window.actions_
    a["dicom_nodes"] = _action(window, "DICOM nodes…", network.open_nodes,
                               tip="Lantern's DICOM listener and the PACS and other nodes it talks to")
    a["listener"] = _action(window, "Start the DICOM listener", network.toggle_listener,
                            tip="Receive images from modalities and the PACS into the inbox")
    a["query_pacs"] = _action(window, "Query PACS…", network.open_query, "Ctrl+Shift+F",
                              tip="Find studies on the PACS and retrieve them into the worklist")
    a["refusals"] = _action(window, "Refused by the listener…", network.open_refusals)
    a["inbox_worklist"] = _action(window, "Show the inbox worklist", network.feed.show_inbox,
                                  tip="The worklist of every image received into the DICOM inbox")
    menu = menu_named(window, "&Network")
    for key in ("query_pacs", "inbox_worklist", None, "listener", "refusals", None, "dicom_nodes"):
        menu.addSeparator() if key is None else menu.addAction(a[key])
    network.listener.changed.connect(lambda: a["listener"].setText(
        "Stop the DICOM listener" if network.listener.running else "Start the DICOM listener"))

    a["send_to_pacs"] = _action(window, "Send to PACS", network.sender.send,
                                tip="Send the shown explanation (as DICOM) to the PACS set in Network > DICOM nodes")
    file_menu = menu_named(window, "&File")
    recent = getattr(window, "recent_menu", None)
    file_menu.insertAction(recent.menuAction() if recent is not None else None, a["send_to_pacs"])
    if load(window.settings).listener.start_with_lantern:
        network.start_listener()
