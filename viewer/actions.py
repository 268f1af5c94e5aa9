"""Menus, toolbar and keyboard shortcuts: every action reachable by key, menu and button."""

from __future__ import annotations

from functools import partial

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMainWindow, QToolButton

from viewer.display import WINDOW_PRESETS


def _action(window: QMainWindow, text: str, slot, shortcut=None, checkable=False, tip="") -> QAction:
    action = QAction(text, window)
    if shortcut:
        action.setShortcut(QKeySequence(shortcut))
    action.setCheckable(checkable)
    action.setToolTip(f"{tip or text} ({shortcut})" if shortcut else (tip or text))
    # Slots take no arguments: checkable actions are read back by the slot itself.
    action.triggered.connect(lambda *_: slot())
    window.addAction(action)  # shortcuts work even when menus and toolbar are hidden
    return action


def install(window) -> dict[str, QAction]:
    a: dict[str, QAction] = {}
    a["open_files"] = _action(window, "Open files…", window.open_files_dialog, QKeySequence.StandardKey.Open)
    a["open_folder"] = _action(window, "Open folder…", window.open_folder_dialog, "Ctrl+Shift+O")
    a["open_model"] = _action(window, "Open model bundle…", window.open_model_dialog)
    a["quit"] = _action(window, "Quit", window.close, QKeySequence.StandardKey.Quit)
    # Images and frames apart (leaving a 40-frame file takes one press); the wheel steps through
    # frames and then on to the next file.
    a["prev"] = _action(window, "Previous image", partial(window.session.step_file, -1), "Left")
    a["next"] = _action(window, "Next image", partial(window.session.step_file, 1), "Right")
    a["prev_frame"] = _action(window, "Previous frame", partial(window.session.step_frame, -1), "Up")
    a["next_frame"] = _action(window, "Next frame", partial(window.session.step_frame, 1), "Down")
    a["invert"] = _action(window, "Invert", window.apply_invert, "I", checkable=True)
    a["reset"] = _action(window, "Reset view", window.reset_view, "Space", tip="Reset window, zoom and invert")
    a["fit"] = _action(window, "Fit to window", window.fit, "F")
    a["overlay"] = _action(window, "Overlay", window.toggle_overlay, "O", checkable=True,
                           tip="Show or hide the explanation overlay")
    a["single"] = _action(window, "Single view", window.toggle_single_view, "V", checkable=True,
                          tip="One viewport with the overlay instead of two side by side")
    a["opacity_down"] = _action(window, "Less opaque", partial(window.nudge_opacity, -0.1), "[")
    a["opacity_up"] = _action(window, "More opaque", partial(window.nudge_opacity, 0.1), "]")
    a["anonymize"] = _action(window, "Hide identifying text", window.apply_hide_identifying, "H",
                             checkable=True, tip="Teaching mode: hide patient name, ID and dates")
    a["analyse"] = _action(window, "Analyse again", window.session.analyse, "Ctrl+R")
    a["cancel"] = _action(window, "Cancel analysis", window.session.cancel, "Escape")
    # Hounsfield presets mean something only on CT (window.on_image enables them by modality);
    # every image has its file's own window and its full range.
    presets = [_action(window, "File's window", window.file_window, "0"),
               _action(window, "Full range", window.full_range_window, "9")]
    for i, (label, width, center) in enumerate(WINDOW_PRESETS, start=1):
        a[f"preset_{i}"] = _action(window, f"CT {label} ({width:g}/{center:g})",
                                   partial(window.set_window, center, width), str(i),
                                   tip=f"CT {label} window, in Hounsfield units (CT images only)")
        presets.append(a[f"preset_{i}"])
    a["overlay"].setChecked(True)
    for key, short in (("open_files", "Open"), ("open_folder", "Folder"), ("prev", "◀ Prev"),
                       ("next", "Next ▶"), ("single", "Single"), ("opacity_down", "Opacity −"),
                       ("opacity_up", "Opacity +"), ("reset", "Reset"), ("anonymize", "Teaching"),
                       ("analyse", "Analyse"), ("cancel", "Cancel")):
        a[key].setIconText(short)

    bar = window.menuBar()
    file_menu = bar.addMenu("&File")
    for key in ("open_files", "open_folder", "open_model"):
        file_menu.addAction(a[key])
    window.recent_menu = file_menu.addMenu("Recent files")
    file_menu.addSeparator()
    file_menu.addAction(a["quit"])
    view_menu = bar.addMenu("&View")
    for key in ("single", "overlay", "opacity_down", "opacity_up", "invert", "reset", "fit", "anonymize"):
        view_menu.addAction(a[key])
    a["browser"] = window.browser_dock.toggleViewAction()
    a["browser"].setText("Study browser")
    a["browser"].setShortcut(QKeySequence("Ctrl+B"))
    view_menu.addAction(a["browser"])
    window_menu = bar.addMenu("&Window/level")
    for action in presets:
        window_menu.addAction(action)
    nav_menu = bar.addMenu("&Navigate")
    for key in ("prev", "next", "prev_frame", "next_frame"):
        nav_menu.addAction(a[key])
    analysis_menu = bar.addMenu("&Analysis")
    analysis_menu.addAction(a["analyse"])
    analysis_menu.addAction(a["cancel"])
    engine_menu = analysis_menu.addMenu("Engine")
    engines = QActionGroup(window)
    for name in ("auto", "torch", "onnx", "onnx-int8"):
        action = engine_menu.addAction(name)
        action.setCheckable(True)
        action.setChecked(name == window.settings.get("engine"))
        engines.addAction(action)
        action.setData(name)
        a[f"engine_{name}"] = action
    engines.triggered.connect(lambda action: window.set_engine(action.data()))

    toolbar = window.addToolBar("Main")
    toolbar.setObjectName("mainToolbar")
    for key in ("open_files", "open_folder", None, "prev", "next", None, "single", "overlay",
                "opacity_down", "opacity_up", "invert", "reset", "anonymize", None, "analyse", "cancel"):
        if key is None:
            toolbar.addSeparator()
        else:
            toolbar.addAction(a[key])
    presets_button = QToolButton()
    presets_button.setText("Window presets")
    presets_button.setMenu(window_menu)
    presets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
    toolbar.addWidget(presets_button)
    return a
