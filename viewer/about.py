"""Help > About: Lantern's version, the loaded model and what the packaged app bundles, under
which licence (from each package's metadata)."""

from __future__ import annotations

import re
import sys

from engine import lantern_version

# What the packaged app bundles and under which licence (from each package's metadata).
BUNDLED = (
    ("Qt 6 / PySide6, shiboken6", "PySide6_Essentials", "LGPL-3.0 (used under the LGPL; GPL-2.0/3.0 also offered)"),
    ("pyqtgraph", "pyqtgraph", "MIT"),
    ("ONNX Runtime", "onnxruntime", "MIT"),
    ("pydicom", "pydicom", "MIT"),
    ("NumPy", "numpy", "BSD-3-Clause (bundles OpenBLAS, BSD-3-Clause)"),
    ("OpenCV (headless)", "opencv-python-headless", "Apache-2.0"),  # + what opencv_bundles() finds
    ("pylibjpeg", "pylibjpeg", "MIT"),
    ("pylibjpeg-libjpeg (libjpeg by Thomas Richter)", "pylibjpeg-libjpeg",
     "GPL-3.0: note that the package as a whole is then distributed under the GPL-3.0's terms"),
    ("pylibjpeg-openjpeg (OpenJPEG)", "pylibjpeg-openjpeg", "MIT; OpenJPEG itself BSD-2-Clause"),
    ("pylibjpeg-rle", "pylibjpeg-rle", "MIT"),
    ("Python", None, "PSF-2.0"),
)


def opencv_bundles() -> str:
    """What the loaded OpenCV carries: the PyPI wheel links FFmpeg and more; the packaged app's
    own build (build/package_env.py) has only its image codecs compiled in."""
    import cv2

    if re.search(r"FFMPEG:\s+YES", cv2.getBuildInformation()):
        return " (bundles FFmpeg, LGPL-2.1; libvpx, libaom, OpenBLAS, BSD; OpenSSL 1.1, OpenSSL licence)"
    return " (built with its own libpng, libjpeg-turbo, libtiff and zlib: BSD-style licences)"


def about_html(window=None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    model = getattr(getattr(window, "session", None), "model", None)
    loaded = (f"{model.bundle.name} {model.bundle.version}, engine {model.engine}" if model is not None
              else "no model loaded")
    rows = []
    for label, dist, licence in BUNDLED:
        try:
            found = version(dist) if dist else sys.version.split()[0]
        except PackageNotFoundError:
            found = "not installed"
        if dist == "opencv-python-headless":
            licence += opencv_bundles()
        rows.append(f"<tr><td>{label}</td><td>{found}</td><td>{licence}</td></tr>")
    return (f"<h3>Lantern {lantern_version()}</h3><p>Grad-CAM explanations and MC-dropout uncertainty for a "
            f"local image classifier. Offline; not a medical device.</p><p><b>Model:</b> {loaded}</p>"
            "<p>Lantern is Apache-2.0. It bundles:</p><table cellspacing=4>" + "".join(rows) +
            "</table><p>Licence texts are in the package's licenses and *.dist-info folders.</p>")


def install_about(window) -> None:
    from PySide6.QtWidgets import QMessageBox

    menu = window.menuBar().addMenu("&Help")
    menu.addAction("About Lantern…", lambda: QMessageBox.about(window, "About Lantern", about_html(window)))
