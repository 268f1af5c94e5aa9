"""The explanation overlay's state on the main window: which method, class and scale is shown,
and how (colormap, threshold, opacity, filled or contour). Style changes only touch lookup
tables and item opacity; a new method, class or scale converts one map to uint8."""

from __future__ import annotations

import numpy as np

from engine.trust.similarity import method_agreement
from viewer.display import METHOD_LABELS, map_to_uint8, overlay_lut, overlay_step, thumbnail, thumbnail_step


class OverlayMixin:
    def connect_controls(self) -> None:
        c = self.controls
        c.opacity.valueChanged.connect(lambda *_: self.apply_opacity())
        for signal in (c.colormap.currentIndexChanged, c.threshold.valueChanged, c.contour.toggled):
            signal.connect(lambda *_: self.apply_overlay_style())
        c.method.currentIndexChanged.connect(lambda *_: self.method_changed())
        c.normalized.toggled.connect(lambda *_: self.refresh_overlay())
        c.hide_below_cutoff.toggled.connect(lambda *_: self.refresh_overlay())
        c.changed.connect(self.save_overlay_settings)

    def method_changed(self) -> None:
        self.session.shown_method = self.controls.method_key()
        self.case.set_method(self.controls.method_key())
        self.refresh_overlay()

    def save_overlay_settings(self) -> None:
        c = self.controls
        for key, value in (("overlay/opacity", c.opacity_value()), ("overlay/colormap", c.colormap.currentText()),
                           ("overlay/method", c.method_key()), ("overlay/threshold", c.threshold_value()),
                           ("overlay/scale", c.scale()), ("overlay/contour", c.contour.isChecked()),
                           ("overlay/hide_below_cutoff", c.hide_below_cutoff.isChecked())):
            self.settings.set(key, value)

    def current_lut(self) -> np.ndarray:
        c = self.controls
        return overlay_lut(c.colormap.currentText(), c.threshold_value(), c.contour.isChecked())

    def shown_method(self, analysis) -> str:
        method = self.controls.method_key()
        return method if method in analysis.maps else next(iter(analysis.maps))

    def map_for(self, analysis, method: str, class_index: int, step: int | None = None) -> tuple[np.ndarray, float]:
        """The uint8 overlay data (every step-th pixel of the image: by default the overlay's
        sampling, larger for thumbnails) and the value its top colour stands for."""
        maps = analysis.maps[method]
        step = step or overlay_step(maps.shape)
        scale = self.controls.scale()
        key = (method, class_index, scale, step)
        if key not in self._map_cache:
            normalized = scale == "normalized"
            # Absolute: one scale for every class of this image.
            top = 1.0 if normalized else max(maps.image_peak(i) for i in range(maps.n_classes))
            data = self.session.display_maps.get(key)
            if data is None:
                data = map_to_uint8(maps.sampled_map(class_index, step, normalized), top)
            self._map_cache[key] = (data, top)
        return self._map_cache[key]

    def hidden_reason(self, analysis, class_index: int) -> str:
        """Why the map of this class is not shown ("" when it is): CheXlocalize's rule, no
        evidence is drawn for a finding whose probability is below its cut-off."""
        model = self.session.model
        if not self.controls.hide_below_cutoff.isChecked() or model is None:
            return ""
        cutoff, p = model.bundle.cutoff(class_index), float(analysis.probabilities[class_index])
        if p >= cutoff:
            return ""
        return f"map hidden:\np {p:.2f} < cut-off {cutoff:.2f}"

    def set_overlay_data(self, data: np.ndarray | None) -> None:
        self.explained.set_overlay(data)
        self.explained.set_overlay_visible(data is not None and self.overlay_on)

    def select_class(self, index: int) -> None:
        self.class_index = int(index)
        self.strip.select(self.class_index)
        self.refresh_overlay()

    def refresh_overlay(self, rebuild_strip: bool = False) -> None:
        analysis = self.session.analysis
        if analysis is None:
            self.set_overlay_data(None)
            return
        method = self.shown_method(analysis)
        index = min(self.class_index, len(analysis.classes) - 1)
        data, top = self.map_for(analysis, method, index)
        hidden = self.hidden_reason(analysis, index)
        self.set_overlay_data(None if hidden else data)
        name = analysis.classes[index]
        self.explained.set_corner("top_right", f"{METHOD_LABELS.get(method, method)}\nclass: {name}"
                                               + (f"\n⚠ {hidden}" if hidden else ""))
        self.refresh_compare()
        unit = "(per-class peak = 1)" if self.controls.scale() == "normalized" else "(logit units)"
        self.controls.colorbar.set_range(0.0, top)
        self.controls.colorbar.setToolTip(f"Map value {unit}")
        self._seen_grid = analysis.maps[method].grid[index]
        if rebuild_strip:
            self.strip.set_classes(analysis.classes, analysis.probabilities, self.class_thumbnails(), index)
        self.apply_overlay_style(thumbnails=not rebuild_strip)  # a rebuilt strip is already current

    def refresh_compare(self) -> None:
        """The compare view's maps, made only while it is the shown tab (switching to it calls
        this again): three full-size maps per image are work a reader rarely looks at."""
        analysis = self.session.analysis
        if analysis is None or self.tabs.currentWidget() is not self.compare:
            return
        index = min(self.class_index, len(analysis.classes) - 1)
        name, hidden = analysis.classes[index], self.hidden_reason(analysis, index)
        self.compare.set_maps({m: None if hidden else self.map_for(analysis, m, index)[0] for m in analysis.maps},
                              name, hidden)
        self.compare.set_agreement(method_agreement(analysis.maps, index), name)

    def class_thumbnails(self) -> list[np.ndarray]:
        analysis, image = self.session.analysis, self.session.image
        if analysis is None or image is None:
            return []
        method = self.shown_method(analysis)
        lut, opacity = self.current_lut(), max(self.controls.opacity_value(), 0.35)
        levels = self.current_levels() or (0, 65535)
        step = thumbnail_step(image.display.data.shape)
        return [thumbnail(image.display.data, levels,
                          None if self.hidden_reason(analysis, i) else self.map_for(analysis, method, i, step)[0],
                          lut, opacity)
                for i in range(len(analysis.classes))]

    def apply_overlay_style(self, thumbnails: bool = True) -> None:
        lut, opacity = self.current_lut(), self.controls.opacity_value()
        self.explained.set_overlay_lut(lut)
        self.explained.set_overlay_opacity(opacity)
        self.compare.set_style(lut, opacity)
        self.case.set_style(lut, opacity)
        self.controls.colorbar.set_lut(lut)
        grid = getattr(self, "_seen_grid", None) if self.session.analysis is not None else None
        # Always filled: a 2x2..8x8 grid of flat cells has no contours worth drawing.
        c = self.controls
        filled = overlay_lut(c.colormap.currentText(), c.threshold_value()) if c.contour.isChecked() else lut
        self.seen.show_grid(grid, filled, opacity, self.overlay_on)
        if thumbnails and self.session.analysis is not None and self.strip.buttons:
            self.strip.update_thumbnails(self.class_thumbnails())

    def apply_opacity(self) -> None:
        """The slider's hot path: item opacity only, no LUT or image work."""
        opacity = self.controls.opacity_value()
        for viewport in (self.explained, *self.compare.viewports.values(), self.seen.viewport,
                         *(pane.viewport for pane in self.case.panes)):
            viewport.set_overlay_opacity(opacity)

    def toggle_overlay(self) -> None:
        self.overlay_on = self.actions_["overlay"].isChecked()
        self.explained.set_overlay_visible(self.overlay_on and self.session.analysis is not None)
        for viewport in (*self.compare.viewports.values(), self.seen.viewport):
            viewport.set_overlay_visible(self.overlay_on)

    def nudge_opacity(self, delta: float) -> None:
        slider = self.controls.opacity
        slider.setValue(slider.value() + round(delta * 100))
