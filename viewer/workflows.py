"""Workflows beyond reading one image (worklist, exports, teaching, evaluation, trust checks).

Each workflow module keeps its own widgets and exposes ``install(window)``, which adds its menu
actions and panels to the main window; this list is the one place that wires them in.
"""

from __future__ import annotations

from viewer import evaluation_view, exports, presentation, teaching, worklist
from viewer import network_menu, trust_panel

INSTALLERS: list = [teaching.install, presentation.install, evaluation_view.install,
                    worklist.install, exports.install, trust_panel.install,
                    network_menu.install]  # after exports: File > Send to PACS goes below Export


def install(window) -> None:
    for installer in INSTALLERS:
        installer(window)
