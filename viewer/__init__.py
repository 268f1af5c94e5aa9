"""Lantern's desktop viewer (Qt, pyqtgraph): shows images, explanation overlays and
uncertainty from engine analyses run on worker threads."""
