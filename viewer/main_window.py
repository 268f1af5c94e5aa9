"""The main window: original and explained image side by side, results, class strip, panels."""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QApplication, QDockWidget, QHBoxLayout, QLabel,
                               QMainWindow, QProgressBar, QPushButton, QScrollArea, QTabWidget,
                               QVBoxLayout, QWidget)

from engine import DEFAULT_METHOD
from viewer import actions, theme, workflows
from viewer.annotations import corner_texts
from viewer.case_view import CaseView
from viewer.class_strip import ClassStrip
from viewer.display import METHODS
from viewer.overlay_controls import OverlayControls
from viewer.file_actions import FileActionsMixin
from viewer.overlay_state import OverlayMixin
from viewer.panels import CompareView, SeenPanel, TagBrowser
from viewer.results_panel import ResultsPanel
from viewer.session import Session
from viewer.settings import Settings
from viewer.study_panel import StudyPanel
from viewer.viewport import Viewport, link

log = logging.getLogger("lantern.window")
COMPACT_WIDTH = 1400  # below this window width (1366 x 768, 1280 x 800 laptops), the small-screen layout (fit_small_screen)


class MainWindow(FileActionsMixin, OverlayMixin, QMainWindow):
    def __init__(self, settings: Settings | None = None, session: Session | None = None):
        super().__init__()
        theme.apply(QApplication.instance())
        self.setWindowTitle("Lantern: what the classifier saw")
        self.setAcceptDrops(True)
        self.settings = settings or Settings()
        self.session = session or Session(self)
        self.session.setParent(self)
        self.window_cw: tuple[float, float] | None = None  # (center, width) in modality units
        self.invert = False
        self.overlay_on = True
        self.hide_identifying = False
        self.class_index = 0
        self._map_cache: dict = {}
        # Class thumbnails follow the window once a drag settles, not on every mouse move.
        self._thumbnail_refresh = QTimer(self, singleShot=True, interval=150)
        self._thumbnail_refresh.timeout.connect(self.refresh_thumbnails)

        self.original = Viewport("Original")
        self.explained = Viewport("Explanation")
        link(self.original, self.explained)
        self.compare = CompareView()
        self.seen = SeenPanel()
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self.banner.mousePressEvent = lambda _ev: self.banner.setVisible(False)
        # Not dismissable: it belongs to the result, as long as the result is on screen.
        self.outside_banner = QLabel()
        self.outside_banner.setObjectName("outsideBanner")
        self.outside_banner.setWordWrap(True)
        self.outside_banner.setVisible(False)
        reading = QWidget()
        row = QHBoxLayout(reading)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(3)
        row.addWidget(self.original, 1)
        row.addWidget(self.explained, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(reading, "Reading")
        self.tabs.addTab(self.compare, "Compare methods")
        self.tabs.addTab(self.seen, "What the model saw")
        self.case = CaseView(self.session)
        self.tabs.addTab(self.case, "Case")
        self.tabs.setTabVisible(self.tabs.indexOf(self.case), False)  # for multi-input models only
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(2, 2, 2, 2)
        column.addWidget(self.banner)
        column.addWidget(self.outside_banner)
        column.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.results = ResultsPanel()
        self.controls = OverlayControls()
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.results)
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(380)
        self.results_scroll = scroll
        self.strip = ClassStrip()
        # The strip and the overlay controls share the wide bottom band under the images.
        bottom = QWidget()
        bottom_row = QHBoxLayout(bottom)
        bottom_row.setContentsMargins(0, 0, 0, 0)
        bottom_row.addWidget(self.strip, 1)
        bottom_row.addWidget(self.controls)
        self.tags = TagBrowser()
        self.studies = StudyPanel(self.session)
        browser = QTabWidget()
        browser.addTab(self.studies, "Studies")
        browser.addTab(self.tags, "DICOM tags")
        results_dock = self._dock("Results", scroll, Qt.DockWidgetArea.RightDockWidgetArea)
        bottom.setMaximumHeight(230)
        bottom_dock = self._dock("Class maps and overlay", bottom, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.browser_dock = self._dock("Browser", browser, Qt.DockWidgetArea.LeftDockWidgetArea)
        # Closable (View > Study browser brings it back): on a small screen it starts hidden.
        self.browser_dock.setFeatures(self.browser_dock.features() | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        browser.setMinimumWidth(270)
        self.results_dock = results_dock
        self._laid_out = False
        self.resizeDocks([bottom_dock], [200], Qt.Orientation.Vertical)
        self.resizeDocks([results_dock], [420], Qt.Orientation.Horizontal)

        self.status_text = QLabel("Open an image (File > Open) or drop files here.")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.session.cancel)
        self.statusBar().addWidget(self.status_text, 1)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)

        self.actions_ = actions.install(self)
        workflows.install(self)
        self._connect()
        self.restore_settings()

    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _connect(self) -> None:
        s = self.session
        s.imageReady.connect(self.on_image)
        s.imageFailed.connect(self.show_error)
        s.modelReady.connect(self.on_model)
        s.modelFailed.connect(self.on_model_failed)
        s.analysisReady.connect(self.on_analysis)
        s.analysisFailed.connect(self.show_error)
        s.analysisState.connect(self.on_analysis_state)
        s.progress.connect(self.on_progress)
        s.filesChanged.connect(self.case.set_files)
        self.case.analysisReady.connect(self.results.show_analysis)
        self.case.analysisReady.connect(self.show_input_check)
        self.case.message.connect(self.show_status)
        for viewport in (self.original, self.explained, *self.compare.viewports.values()):
            viewport.box.windowDragged.connect(self.drag_window)
            viewport.box.wheelStepped.connect(s.step)
            viewport.box.sigRangeChanged.connect(lambda *_: self.update_corners())
        self.strip.classSelected.connect(self.select_class)
        self.tabs.currentChanged.connect(lambda *_: self.refresh_compare())
        self.connect_controls()

    # messages ------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        log.warning("shown to the user: %s", message)
        self.banner.setText(f"⚠ {message}  (click to dismiss)")
        self.banner.setVisible(True)
        self.status_text.setText(message)

    def show_status(self, message: str) -> None:
        self.status_text.setText(message)

    # session events ------------------------------------------------------------
    def on_model(self, model) -> None:
        self.engine_settled(True)
        self.results.set_model(model.bundle, model.engine)
        self.show_status(f"Model {model.bundle.name} {model.bundle.version} ready ({model.engine}).")
        multi = model.bundle.multi_input
        self.tabs.setTabVisible(self.tabs.indexOf(self.case), multi)
        self.case.set_model(model)
        if multi:
            # The case, not one image, is what this model reads: show where it is put together.
            self.tabs.setCurrentWidget(self.case)
            self.results.clear(f"This model reads a case of {len(model.bundle.inputs)} images "
                               f"({', '.join(model.bundle.input_names)}): see the Case tab.")

    def on_model_failed(self, message: str) -> None:
        self.engine_settled(False)
        model = self.session.model
        if model is not None:
            message += f" (still using {model.bundle.name} on {model.engine})"
        self.show_error(message)

    def show_input_check(self, analysis) -> None:
        """The banner above the maps when an image is outside what the model was made for."""
        check = None if analysis is None else analysis.input_check
        if check is None or not check.outside:
            self.outside_banner.setVisible(False)
            return
        self.outside_banner.setText("⚠ Outside what this model was made for: " + "; ".join(check.reasons)
                                    + ". The maps explain this model's answer, which means little here.")
        self.outside_banner.setVisible(True)

    def on_image(self, image) -> None:
        self.banner.setVisible(False)
        self.show_input_check(None)
        self._map_cache.clear()
        source = image.source
        self.window_cw = (source.window.center, source.window.width)
        levels = self.current_levels()
        self.original.set_image(image.display, levels)
        self.explained.set_image(image.display, levels)
        self.compare.set_image(image.display, levels)
        self.compare.set_maps({}, "")  # the last image's maps must not sit on this one
        for viewport in self.all_viewports():
            viewport.set_invert(self.invert)
        self.set_overlay_data(None)
        self.tags.set_tags(source.tags)
        is_ct = source.metadata.modality.strip().upper() == "CT"  # Hounsfield presets: CT only
        for key, action in self.actions_.items():
            if key.startswith("preset_"):
                action.setEnabled(is_ct)
        self.studies.highlight(source.path)
        self.strip.clear()
        self.seen.show_seen(None)
        model = self.session.model
        waiting = "Analysing…" if model is not None else "No model loaded: open a model bundle to analyse."
        if model is not None and model.bundle.multi_input:
            waiting = "This model reads a case of several images: see the Case tab."
        self.results.clear(waiting)
        self.update_corners()
        self.show_status(f"{source.path.name} ({image.index + 1}/{image.count})")
        self.settings.add_recent(source.path)
        self.refresh_recent_menu()

    def on_analysis(self, analysis) -> None:
        self._map_cache.clear()
        self.results.show_analysis(analysis)
        self.show_input_check(analysis)
        self.class_index = analysis.predicted
        seen = analysis.model_input.seen
        self.seen.show_seen(seen, f"{seen.shape[1]}×{seen.shape[0]} input, as scaled and resized for "
                                  f"{analysis.model_name}; the overlay is the map on the model's own feature grid.")
        self.refresh_overlay(rebuild_strip=True)
        total_ms = sum(analysis.timings.values()) * 1000
        self.show_status(f"{analysis.source.name}: {analysis.predicted_class} "
                         f"({analysis.engine}, {total_ms:.0f} ms)")

    def on_analysis_state(self, state: str) -> None:
        running = state == "running"
        self.progress.setVisible(running)
        self.cancel_button.setVisible(running)
        if running:
            self.progress.setRange(0, 0)
        elif state == "cancelled":
            self.results.clear("Analysis cancelled")
            self.show_status("Analysis cancelled.")

    def on_progress(self, step: int, total: int, stage: str) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        self.progress.setFormat(f"{stage} %v/%m")

    # window / level ------------------------------------------------------------
    def all_viewports(self):
        return (self.original, self.explained, *self.compare.viewports.values())

    def current_levels(self):
        image = self.session.image
        if image is None or self.window_cw is None:
            return None
        return image.display.levels(*self.window_cw)

    def set_window(self, center: float, width: float) -> None:
        if self.session.image is None:
            return
        self.window_cw = (float(center), max(float(width), 1e-3))
        levels = self.current_levels()
        for viewport in self.all_viewports():
            viewport.set_levels(levels)
        self.update_corners()
        self._thumbnail_refresh.start()

    def refresh_thumbnails(self) -> None:
        if self.session.analysis is not None and self.strip.buttons:
            self.strip.update_thumbnails(self.class_thumbnails())

    def drag_window(self, dx: float, dy: float) -> None:
        image = self.session.image
        if image is None or self.window_cw is None:
            return
        low, high = image.display.value_range
        # A sweep over the image's own range takes about 1000 pixels (an 8-bit PNG: 0.25 a pixel;
        # a CT: about 4 HU); with Shift held, a tenth of that for fine adjustment, as in Weasis.
        step = max((high - low) / 1000.0, 1e-3)
        if QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier:
            step /= 10.0
        center, width = self.window_cw
        self.set_window(center - dy * step, max(width + dx * step, step))

    def apply_invert(self) -> None:
        self.invert = self.actions_["invert"].isChecked()
        for viewport in self.all_viewports():
            viewport.set_invert(self.invert)

    def fit(self) -> None:
        for viewport in (self.original, *self.compare.viewports.values()):
            viewport.fit()

    def file_window(self) -> None:
        image = self.session.image
        if image is not None:
            self.set_window(image.source.window.center, image.source.window.width)

    def full_range_window(self) -> None:
        image = self.session.image
        if image is not None:
            low, high = image.display.value_range
            self.set_window((low + high) / 2, high - low)

    def reset_view(self) -> None:
        image = self.session.image
        if image is None:
            return
        self.actions_["invert"].setChecked(False)
        self.apply_invert()
        self.set_window(image.source.window.center, image.source.window.width)
        self.fit()

    def toggle_single_view(self) -> None:
        self.original.setVisible(not self.actions_["single"].isChecked())

    def apply_hide_identifying(self) -> None:
        self.hide_identifying = self.actions_["anonymize"].isChecked()
        self.tags.set_hide_identifying(self.hide_identifying)
        self.studies.set_hide_identifying(self.hide_identifying)
        self.update_corners()

    def update_corners(self) -> None:
        image = self.session.image
        if image is None:
            return
        texts = corner_texts(image, self.window_cw, self.original.zoom(), self.hide_identifying)
        for viewport in (self.original, self.explained):
            for corner, text in texts.items():
                if viewport is self.explained and corner == "top_right":
                    continue
                viewport.set_corner(corner, text)

    # settings ------------------------------------------------------------------
    def restore_settings(self) -> None:
        geometry = self.settings.q.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        method = self.settings.get("overlay/method")
        self.controls.set_values(
            method=method if method in METHODS else DEFAULT_METHOD,
            opacity=self.settings.get("overlay/opacity"), colormap=self.settings.get("overlay/colormap"),
            threshold=self.settings.get("overlay/threshold"), scale=self.settings.get("overlay/scale"),
            contour=self.settings.get("overlay/contour"))
        self.session.shown_method = self.controls.method_key()
        self.apply_overlay_style()
        self.refresh_recent_menu()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._laid_out:
            self._laid_out = True
            self.fit_small_screen()

    def fit_small_screen(self) -> None:
        """On a teaching laptop or a projector (under COMPACT_WIDTH px) the images come first: the
        study browser starts hidden (View > Study browser, Ctrl+B; opening a folder shows it)
        and the results column is narrower, so each image pane gets about 470 px instead of 330."""
        if self.width() >= COMPACT_WIDTH:
            return
        self.browser_dock.hide()
        # Hidden during the first show, before the dock's menu action hears of it: say so, so
        # that View > Study browser shows it at the first press.
        self.browser_dock.toggleViewAction().setChecked(False)
        self.results_scroll.setMinimumWidth(300)
        self.resizeDocks([self.results_dock], [310], Qt.Orientation.Horizontal)

    def closeEvent(self, event) -> None:
        self.settings.set("geometry", self.saveGeometry())
        self.save_overlay_settings()
        self.settings.sync()
        self.session.cancel()
        self.session.runner.close()  # no late result may reach a closed window's widgets
        super().closeEvent(event)
