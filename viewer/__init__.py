"""Lantern's desktop viewer (Qt, pyqtgraph): shows images, explanation overlays and
uncertainty from engine analyses run on worker threads."""

from viewer import qt_workarounds

qt_workarounds.apply()  # before any widget exists: every Qt signal emit depends on it
