"""Opening things: files, folders, recent files, drops, model bundles and the engine choice."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog

IMAGE_FILTER = "Images (*.dcm *.dicom *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"


class FileActionsMixin:
    def open_paths(self, paths) -> None:
        paths = [Path(p) for p in paths]
        if paths:
            self.settings.set("last_folder", str(paths[0] if paths[0].is_dir() else paths[0].parent))
            if any(p.is_dir() for p in paths):
                self.browser_dock.show()  # a folder's studies are read from the browser
                self.studies.scan(paths, open_first=True)
            else:
                self.studies.scan(paths, opening=True)
                self.session.open_paths(paths)

    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", self.settings.get("last_folder"),
                                                IMAGE_FILTER)
        self.open_paths(files)

    def open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder", self.settings.get("last_folder"))
        if folder:
            self.open_paths([folder])

    def open_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open model bundle", self.settings.get("last_folder"))
        if folder:
            self.load_model(folder)

    def load_model(self, folder, engine_name: str | None = None) -> None:
        self.model_folder = Path(folder)
        self.settings.set("model", str(folder))
        self.session.load_model(folder, engine_name or self.settings.get("engine"))

    def set_engine(self, name: str) -> None:
        """The open model is reopened with the engine; it is remembered once that works."""
        action = self.actions_.get(f"engine_{name}")
        if action is not None:
            action.setChecked(True)
        if getattr(self, "model_folder", None) is None:
            self.settings.set("engine", name)
            return
        self.pending_engine = name
        self.show_status(f"Reopening the model with the {name} engine…")
        self.session.load_model(self.model_folder, name)

    def engine_settled(self, loaded: bool) -> None:
        pending, self.pending_engine = getattr(self, "pending_engine", None), None
        if loaded and pending:
            self.settings.set("engine", pending)
        remembered = self.actions_.get(f"engine_{self.settings.get('engine')}")
        if remembered is not None:
            remembered.setChecked(True)

    def refresh_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        for path in self.settings.recent_files():
            action = menu.addAction(Path(path).name)
            action.setData(path)
        # One connection on the menu rather than one closure per rebuilt action: the actions
        # are deleted on every refresh.
        if not getattr(self, "_recent_connected", False):
            menu.triggered.connect(self._open_recent)
            self._recent_connected = True

    def _open_recent(self, action) -> None:
        if action.data():
            self.open_paths([action.data()])

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.open_paths([u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()])
