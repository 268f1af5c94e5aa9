"""`lantern --selftest`: an installed Lantern proves that it works, with or without a screen.

It opens the demo studies in the real main window (offscreen when there is no display), loads
the demo model with the INT8 ONNX engine, waits for the analysed overlay, and then checks:

- the model and the analysis: every reference study's predicted class and probabilities match
  the figures stored for this exact model file (``build/selftest_reference.json``; the model's
  SHA-256 is in it) within a tolerance, and its Grad-CAM peak lies where it did;
- the packaged app has no torch, and pydicom finds its JPEG / JPEG 2000 / RLE decoders;
- the image codecs the packaged OpenCV was built with read PNG, JPEG and TIFF (8 and 16 bit)
  through ``load_image``;
- the window renders: a PNG of it is written (path printed) and must not be blank.

It prints the cold-start time (process start to a shown window with the demo analysed; target
< 3 s) and, in the packaged app, the folder size. Any failed check makes the exit code 1.

The reference figures come from the source checkout's ONNX engine:

    .venv/bin/python -m viewer.selftest --write-reference [--model BUNDLE]

(re-run it whenever the demo bundle's int8 model changes, and commit the JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from engine import DEMO_MODEL, DEMO_STUDIES, ROOT, TEACHING_LABELS

REFERENCE = ROOT / "build" / "selftest_reference.json"
ENGINE = "onnx-int8"
PROBABILITY_TOLERANCE = 0.03  # absolute, per class: int8 kernels differ a little between CPUs
PEAK_TOLERANCE = 0.06  # fraction of the image's longer side
COLD_START_TARGET_S = 3.0
REFERENCE_STUDIES = ("demo_nodule.dcm", "demo_effusion.dcm", "demo_normal.dcm", "demo_nodule.png")
_IMPORTED = time.time()


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def package_folder() -> Path | None:
    return Path(sys.executable).resolve().parent if is_frozen() else None


def process_started() -> tuple[float, str]:
    """Wall-clock time the process started, and how it was found."""
    try:
        if sys.platform.startswith("linux"):
            stat = Path("/proc/self/stat").read_text()
            ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time after boot
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK")), "process start"
        if sys.platform == "win32":
            import ctypes
            from ctypes import wintypes

            times = [wintypes.FILETIME() for _ in range(4)]
            handle = ctypes.windll.kernel32.GetCurrentProcess()
            if ctypes.windll.kernel32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
                created = (times[0].dwHighDateTime << 32) | times[0].dwLowDateTime
                return created / 1e7 - 11644473600.0, "process start"
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return _IMPORTED, "self-test module import (process start unknown here)"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# reference figures ------------------------------------------------------------
def study_figures(model, path: Path) -> dict:
    """What the reference stores for one study: predicted class, probabilities, Grad-CAM peak."""
    import engine

    analysis = engine.analyze(engine.load_image(path), model, engine.AnalysisOptions(methods=("gradcam",),
                                                                                     mc_samples=0))
    maps = analysis.maps["gradcam"]
    row, col = maps.peak(analysis.predicted)
    return {
        "predicted": analysis.predicted_class,
        "probabilities": {c: round(float(p), 5) for c, p in zip(analysis.classes, analysis.probabilities)},
        "gradcam_peak": [int(row), int(col)],
        "image_shape": list(maps.shape),
    }


def write_reference(model_dir: Path, studies: Path, out: Path) -> int:
    import engine

    model = engine.load_model(model_dir, ENGINE)
    int8 = model.bundle.onnx["int8"]
    figures = {}
    for name in REFERENCE_STUDIES:
        if (studies / name).is_file():
            figures[name] = study_figures(model, studies / name)
            label = name.split("_")[1].split(".")[0]
            note = "" if figures[name]["predicted"] == label else f"  (note: the phantom shows {label})"
            print(f"{name}: {figures[name]['predicted']} {figures[name]['probabilities']}{note}")
    reference = {
        "about": "Self-test reference figures for the demo model's INT8 ONNX engine "
                 "(viewer/selftest.py). Regenerate: python -m viewer.selftest --write-reference",
        "model": {"name": model.bundle.name, "version": model.bundle.version,
                  "int8_file": int8.name, "int8_sha256": sha256(int8)},
        "engine": ENGINE,
        "tolerance": {"probability_abs": PROBABILITY_TOLERANCE, "peak_fraction": PEAK_TOLERANCE},
        "studies": figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def compare(expected: dict, found: dict, tolerance: dict) -> list[str]:
    """Differences between stored and measured study figures, in words (empty: it matches)."""
    problems = []
    if found["predicted"] != expected["predicted"]:
        problems.append(f"predicted {found['predicted']}, expected {expected['predicted']}")
    tol = tolerance.get("probability_abs", PROBABILITY_TOLERANCE)
    for name, value in expected["probabilities"].items():
        got = found["probabilities"].get(name)
        if got is None or abs(got - value) > tol:
            problems.append(f"p({name}) = {got}, expected {value} ± {tol}")
    limit = tolerance.get("peak_fraction", PEAK_TOLERANCE) * max(expected["image_shape"])
    distance = max(abs(a - b) for a, b in zip(found["gradcam_peak"], expected["gradcam_peak"]))
    if distance > limit:
        problems.append(f"Grad-CAM peak at {found['gradcam_peak']}, expected near {expected['gradcam_peak']}")
    return problems


# the self-test ----------------------------------------------------------------
class Report:
    def __init__(self):
        self.failures: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'}  {what}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def info(self, what: str, detail: str) -> None:
        print(f"  info  {what}: {detail}", flush=True)


def check_codecs(report: Report) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    for uid in (JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless, RLELossless):
        decoder = get_decoder(uid)
        report.check(decoder.is_available, f"DICOM decoder for {uid.name}",
                     ", ".join(decoder.available_plugins) or "no plugin found")


def check_image_codecs(report: Report, work: Path) -> None:
    """The package's OpenCV is built with three modules and its own PNG, JPEG and TIFF code
    (build/package_env.py): each format must round-trip through the one image loader."""
    import cv2
    import numpy as np

    from engine import LanternError, load_image

    ramp = np.linspace(0, 1, 64 * 48, dtype=np.float64).reshape(48, 64)
    cases = {"gray8.png": (ramp * 255).astype(np.uint8), "gray16.png": (ramp * 65535).astype(np.uint16),
             "gray16.tif": (ramp * 65535).astype(np.uint16),
             "colour.jpg": np.dstack([(ramp * 255).astype(np.uint8)] * 3), "colour.tif": np.dstack(
                 [(ramp * 255).astype(np.uint8), np.zeros((48, 64), np.uint8), (255 - ramp * 255).astype(np.uint8)])}
    for name, pixels in cases.items():
        path = work / name
        ok, encoded = cv2.imencode(path.suffix, pixels)
        if not report.check(ok, f"OpenCV writes {name}"):
            continue
        path.write_bytes(encoded.tobytes())
        try:
            image = load_image(path)
        except LanternError as exc:
            report.check(False, f"load_image reads {name}", str(exc))
            continue
        tolerance = 8 if name.endswith(".jpg") else 0  # JPEG is lossy
        expected = pixels[..., ::-1] if pixels.ndim == 3 else pixels  # OpenCV is BGR, Lantern RGB
        same = image.pixels.shape == expected.shape and float(
            np.abs(image.pixels.astype(np.float64) - expected).max()) <= tolerance
        report.check(same, f"load_image reads {name}", f"{image.pixels.dtype} {image.pixels.shape}")


def check_teaching_set(report: Report, classes) -> None:
    """File > Teaching session > Demo teaching set must open in the packaged app too."""
    from engine import LanternError
    from engine.workflows.labels import read_labels

    try:
        cases = read_labels(TEACHING_LABELS, classes).cases
    except LanternError as exc:
        report.check(False, "demo teaching set readable", f"{TEACHING_LABELS}: {exc}")
        return
    report.check(len(cases) > 0 and all(c.path.is_file() for c in cases), "demo teaching set readable",
                 f"{len(cases)} cases in {TEACHING_LABELS.parent}")


def check_reference(report: Report, model, reference_path: Path, studies: Path) -> None:
    if not reference_path.is_file():
        report.check(False, "reference figures", f"{reference_path} is missing")
        return
    reference = json.loads(reference_path.read_text(encoding="utf-8"))
    int8 = model.bundle.onnx.get("int8")
    digest = sha256(int8) if int8 is not None else None
    if not report.check(digest == reference["model"]["int8_sha256"], "reference figures are for this model",
                        f"{model.bundle.name} {model.bundle.version}" if digest == reference["model"]["int8_sha256"]
                        else f"{int8} differs from the model the figures were made with; regenerate them: "
                             "python -m viewer.selftest --write-reference"):
        return
    for name, expected in reference["studies"].items():
        path = studies / name
        if not report.check(path.is_file(), f"reference study {name} present", str(path)):
            continue
        start = time.perf_counter()
        found = study_figures(model, path)
        problems = compare(expected, found, reference.get("tolerance", {}))
        probabilities = ", ".join(f"{c} {p:.3f}" for c, p in found["probabilities"].items())
        report.check(not problems, f"{name} analysed like the reference",
                     "; ".join(problems) or f"{found['predicted']} ({probabilities}; "
                                            f"{(time.perf_counter() - start) * 1000:.0f} ms)")


def check_dicom_node(report: Report, work: Path, model, studies: Path) -> None:
    """What a PACS administrator relies on ships: TLS, the listener (C-ECHO and C-STORE on
    loopback) and the standard result objects (SC, Parametric Maps, SR)."""
    studies = Path(studies)
    source = studies if studies.is_file() else next(iter(sorted(studies.glob("*.dcm"))), None)
    if not report.check(source is not None, "a DICOM study to send", str(studies)):
        return
    try:  # a module the package lacks is a failed check, not a crash of the self-test
        import ssl

        from engine import analyze, load_image
        from engine.exports.dicom_objects import export_dicom_objects, model_manufacturer
        from engine.network.nodes import DicomNode
        from engine.network.send import send_files
        from engine.network.storage_scp import StorageSCP
        from engine.network.verification import echo

        report.check(ssl.create_default_context() is not None, "TLS available for DICOM connections",
                     ssl.OPENSSL_VERSION)
        with StorageSCP(work / "inbox", port=0, allowed_ae=["SELFTEST"], min_free_bytes=0) as listener:
            node = DicomNode("LANTERN", "127.0.0.1", listener.port)
            echo(node, "SELFTEST")
            sent = send_files(node, "SELFTEST", [source])
        received = list((work / "inbox").rglob("*.dcm"))
        report.check(len(sent.sent) == 1 and len(received) == 1, "DICOM listener answers C-ECHO and stores a C-STORE",
                     f"{len(received)} file(s) received")
        image = load_image(source)
        written = export_dicom_objects(work / "objects", image, analyze(image, model), name="selftest",
                                       model_manufacturer=model_manufacturer(model.bundle))
        kinds = sorted(p.name.split("-")[1] if "-" in p.name else "sc" for p in written)
        report.check(len(written) == 2 + len(model.bundle.classes), "DICOM result objects written (SC, PM, SR)",
                     ", ".join(kinds))
    except Exception as exc:  # the report says what failed; the rest of the self-test goes on
        report.check(False, "DICOM node and result objects", f"{type(exc).__name__}: {exc}")


def rendered_not_blank(image) -> bool:
    """A grabbed window that is one flat colour did not render."""
    small = image.scaled(64, 40)
    colours = {small.pixel(x, y) for x in range(small.width()) for y in range(small.height())}
    return len(colours) > 20


def run_selftest(model: Path | None = None, studies: Path | None = None, png: Path | None = None,
                 engine_name: str = ENGINE, reference: Path = REFERENCE, started: float | None = None) -> int:
    """The whole self-test; returns the exit code. Needs a QApplication (``viewer.app`` makes it)."""
    from PySide6.QtWidgets import QApplication

    from viewer.jobs import wait_until
    from viewer.main_window import MainWindow
    from viewer.settings import Settings

    origin, origin_label = (started, "self-test call") if started is not None else process_started()
    model = Path(model) if model else DEMO_MODEL
    studies = Path(studies) if studies else DEMO_STUDIES
    work = Path(tempfile.mkdtemp(prefix="lantern-selftest-"))
    png = Path(png) if png else work / "lantern-selftest.png"
    report = Report()
    app = QApplication.instance()
    print(f"Lantern self-test ({'packaged app' if is_frozen() else 'source checkout'}, "
          f"Qt platform {app.platformName()})", flush=True)
    print(f"  model {model}\n  studies {studies}", flush=True)

    window = MainWindow(Settings(work / "settings.ini"))
    window.resize(1600, 1000)
    window.show()
    window.load_model(model, engine_name)
    loaded = wait_until(app, lambda: window.session.model is not None or window.banner.isVisible(), 60_000)
    if not report.check(loaded and window.session.model is not None, f"model loads with the {engine_name} engine",
                        window.status_text.text()):
        window.close()
        return 1
    loaded_model = window.session.model
    window.open_paths([studies])
    analysed = wait_until(app, lambda: (window.session.analysis is not None and bool(window.strip.buttons))
                     or window.banner.isVisible(), 60_000) and window.session.analysis is not None
    app.processEvents()
    window.repaint()
    cold = time.time() - origin
    if not report.check(analysed, "the demo study is analysed in the window", window.status_text.text()):
        window.close()
        return 1
    analysis = window.session.analysis
    report.check(analysis.engine == engine_name, "analysed by the requested engine", analysis.engine)
    check = analysis.input_check  # the bundle's ood.safetensors must ship and be read without torch
    report.check(check is not None and check.score is not None and not check.outside,
                 "the out-of-distribution check scored the demo study inside the model's world",
                 "no score" if check is None or check.score is None
                 else f"score {check.score:.1f}, threshold {check.threshold:.1f}; {'; '.join(check.reasons)}")
    print(f"  cold start: {cold:.2f} s from {origin_label} to the shown window with "
          f"{analysis.source.name} analysed (target < {COLD_START_TARGET_S:.0f} s"
          f"{'' if cold < COLD_START_TARGET_S else ': MISSED'})", flush=True)

    check_reference(report, loaded_model, reference, studies)
    check_codecs(report)
    check_image_codecs(report, work)
    check_teaching_set(report, loaded_model.bundle.classes)
    check_dicom_node(report, work, loaded_model, studies)
    if is_frozen():
        report.check(importlib.util.find_spec("torch") is None, "the package has no torch")
    else:
        report.info("torch", "not checked in a source checkout")

    from viewer.about import about_html, install_about
    from engine import lantern_version as app_version

    install_about(window)
    about = about_html(window)
    report.check(all(t in about for t in (app_version(), loaded_model.bundle.name, engine_name, "GPL-3.0", "LGPL"))
                 and "not installed" not in about, "About box names version, model, engine and licences",
                 f"Lantern {app_version()}")

    # The PNG shows the nodule DICOM when the demo folder has it (the documentation's view).
    files = window.session.files
    nodule = [i for i, f in enumerate(files) if f.name == "demo_nodule.dcm"]
    if nodule and files[window.session.index].name != "demo_nodule.dcm":
        window.session.show_index(nodule[0])
        wait_until(app, lambda: window.session.analysis is not None and bool(window.strip.buttons), 60_000)
    wait_until(app, lambda: window.studies.thumbnails_shown, 5_000)
    for _ in range(5):
        app.processEvents()
    image = window.grab().toImage()
    png.parent.mkdir(parents=True, exist_ok=True)
    saved = image.save(str(png))
    report.check(saved and rendered_not_blank(image), "main window rendered", str(png))
    window.close()

    folder = package_folder()
    if folder is not None:
        from engine import folder_size

        print(f"  package folder: {folder} ({folder_size(folder) / 1e6:.0f} MB)", flush=True)
    if report.failures:
        print(f"SELF-TEST FAILED ({len(report.failures)}): " + "; ".join(report.failures), flush=True)
        return 1
    print(f"SELF-TEST PASSED (cold start {cold:.2f} s)", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer.selftest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-reference", action="store_true",
                        help="(re)write the reference figures from this checkout's demo model")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--studies", type=Path, default=DEMO_STUDIES)
    parser.add_argument("--out", type=Path, default=REFERENCE, help="reference file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.write_reference:
        return write_reference(args.model, args.studies, args.out)
    # Without --write-reference: the GUI self-test, as `lantern --selftest` runs it.
    from viewer.logs import setup_logging
    from viewer.qt_app import headless_if_needed, make_app

    headless_if_needed()
    make_app()
    setup_logging()
    return run_selftest(args.model, args.studies, None, ENGINE)


if __name__ == "__main__":
    sys.exit(main())
