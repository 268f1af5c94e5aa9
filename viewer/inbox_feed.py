"""The worklist fills while images arrive: once the listener has been quiet for a moment, the
inbox folder is run through the worklist's batch again.

A modality sends a study as a burst of instances, so each arrival restarts a short timer
(DEBOUNCE_MS) rather than starting a batch: one batch per burst, not one per image. The batch
is resumable (engine.workflows.batch), so images analysed before are reused and only the new
ones cost a forward pass; the worklist keeps its rows and the reader's selection meanwhile
(WorklistPanel.run(keep_rows=True)). Nothing here switches tabs or opens an image: the reader
may be in the middle of one. If the worklist shows another folder, it is left alone and the
status bar says that new images are waiting (Network > Show the inbox worklist).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QTimer

DEBOUNCE_MS = 1500


class InboxFeed(QObject):
    def __init__(self, window, listener, inbox):
        """``inbox()``: the inbox folder the settings name now (they may change while Lantern runs)."""
        super().__init__(window)
        self.window, self.listener, self.inbox = window, listener, inbox
        self.waiting = 0  # images arrived since the worklist last took the inbox in
        self.timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self.timer.timeout.connect(self.refresh)
        listener.arrived.connect(self.arrived)
        # Images that arrived before a model was open are taken in once one is.
        window.session.modelReady.connect(lambda _model: self.timer.start() if self.waiting else None)

    def arrived(self, _path: Path) -> None:
        self.waiting += 1
        self.timer.start()

    def shows_inbox(self) -> bool:
        source = self.window.worklist.source
        return source is None or _same(source, self.inbox())

    def refresh(self) -> None:
        panel, window = self.window.worklist, self.window
        if panel.running:  # its own run, or the reader's folder: take the inbox in after it
            self.timer.start()
            return
        if not self.waiting:
            return
        if window.session.model is None:
            window.show_status(f"{self.waiting} image(s) received: open a model bundle to see them in the worklist.")
            return
        if not self.shows_inbox():
            window.show_status(f"{self.waiting} image(s) received into the DICOM inbox: "
                               "Network > Show the inbox worklist to see them.")
            return
        self.waiting = 0
        panel.run(self.inbox(), keep_rows=True)

    def show_inbox(self) -> None:
        """Network > Show the inbox worklist: asked for, so this one may switch tabs."""
        window = self.window
        window.tabs.setCurrentWidget(window.worklist)
        if window.session.model is None:
            window.show_error("Open a model bundle first: the worklist analyses with the loaded model.")
            return
        try:  # before the listener's first start there is no inbox yet: an empty worklist, no error
            self.inbox().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            window.show_error(f"The DICOM inbox {self.inbox()} cannot be made: {exc.strerror or exc}")
            return
        self.waiting = 0
        window.worklist.run(self.inbox(), keep_rows=True)


def _same(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return Path(a) == Path(b)
