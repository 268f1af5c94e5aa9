"""Remembered preferences (QSettings): geometry, last folder, recent files, overlay choices.

Tests and the screenshot run pass an explicit INI file so that the user's own settings are
never read or written by them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSettings

from engine import DEFAULT_METHOD

log = logging.getLogger("lantern.settings")

ORGANIZATION = "Lantern"
APPLICATION = "Lantern"
MAX_RECENT = 10

DEFAULTS = {
    "overlay/opacity": 0.5,
    "overlay/colormap": "inferno",
    "overlay/method": DEFAULT_METHOD,
    "overlay/threshold": 0.2,
    "overlay/scale": "normalized",
    "overlay/contour": False,
    "overlay/hide_below_cutoff": False,
    "engine": "auto",
    "model": "",
    "last_folder": "",
}


class Settings:
    def __init__(self, path: str | Path | None = None):
        if path is None:
            self.q = QSettings(ORGANIZATION, APPLICATION)
        else:
            self.q = QSettings(str(path), QSettings.Format.IniFormat)

    def get(self, key: str):
        default = DEFAULTS.get(key)
        value = self.q.value(key, default)
        if value is None:
            return default
        # INI files bring everything back as strings; convert to the default's type.
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, float):
            try:
                return float(value)
            except (TypeError, ValueError):
                log.warning("setting %s has an unreadable value; using the default", key)
                return default
        return value

    def set(self, key: str, value) -> None:
        self.q.setValue(key, value)

    def recent_files(self) -> list[str]:
        value = self.q.value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent(self, path: str | Path) -> list[str]:
        path = str(path)
        recent = [p for p in self.recent_files() if p != path]
        recent.insert(0, path)
        recent = recent[:MAX_RECENT]
        self.q.setValue("recent_files", recent)
        return recent

    def sync(self) -> None:
        self.q.sync()
