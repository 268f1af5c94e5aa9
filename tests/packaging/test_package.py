"""The packaged app (issue 6): the self-test, the About box's licences, the PyInstaller build.

The frozen-app test builds dist/lantern with build/package.py and runs
`dist/lantern/lantern --selftest`. On a fresh checkout that first makes the torch-free packaging
environment and compiles OpenCV's three modules (about 12 min on 2 cores, once; both are kept
in build/work/); a rebuild takes 1-2 min and an unchanged build is reused, so later runs take
only the self-test's ~10 s. Tests that need the demo model's ONNX files skip until the bundle
has them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from importlib.metadata import metadata
from pathlib import Path

import pytest

from engine.resources import DEMO_STUDIES, ROOT

_spec = importlib.util.spec_from_file_location("lantern_build_package", ROOT / "build" / "package.py")
package = importlib.util.module_from_spec(_spec)  # build/package.py, without touching sys.path
_spec.loader.exec_module(package)


def demo_onnx_bundle() -> Path:
    """The bundle the package ships: the demo model, or $LANTERN_PACKAGE_BUNDLE."""
    bundle = package.demo_bundle()
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        pytest.skip("the demo bundle has not been trained yet (make demo-model)")
    if "int8" not in (json.loads(manifest.read_text()).get("onnx") or {}):
        pytest.skip("the demo bundle has no int8 ONNX model yet (lantern-engine export + quantize)")
    return bundle


def test_selftest_in_process(qapp, tmp_path, capsys):
    """viewer.selftest, not frozen: the demo study analysed by the INT8 engine in the real window
    matches the stored reference figures, and the window renders."""
    from viewer.selftest import run_selftest

    bundle = demo_onnx_bundle()
    png = tmp_path / "window.png"
    code = run_selftest(bundle, DEMO_STUDIES, png, started=time.time())
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SELF-TEST PASSED" in out and "cold start" in out
    assert "ok    DICOM listener answers C-ECHO" in out and "ok    DICOM result objects written" in out
    assert png.stat().st_size > 20_000


def test_reference_comparison_names_what_differs():
    from viewer.selftest import compare

    expected = {"predicted": "nodule", "probabilities": {"normal": 0.01, "nodule": 0.98, "effusion": 0.01},
                "gradcam_peak": [200, 380], "image_shape": [512, 512]}
    tolerance = {"probability_abs": 0.03, "peak_fraction": 0.06}
    assert compare(expected, {**expected, "probabilities": {"normal": 0.02, "nodule": 0.97, "effusion": 0.01}},
                   tolerance) == []
    wrong = {"predicted": "normal", "probabilities": {"normal": 0.9, "nodule": 0.05, "effusion": 0.05},
             "gradcam_peak": [400, 100], "image_shape": [512, 512]}
    problems = compare(expected, wrong, tolerance)
    assert any("predicted normal" in p for p in problems)
    assert any("p(nodule)" in p for p in problems)
    assert any("peak" in p for p in problems)


def test_about_licences_match_package_metadata():
    """The About box's licence column agrees with what each installed package declares."""
    from viewer.about import BUNDLED, about_html

    for label, dist, licence in BUNDLED:
        if dist is None:
            continue
        md = metadata(dist)
        declared = " ".join([md.get("License-Expression") or "", md.get("License") or "",
                             *(md.get_all("Classifier") or [])])
        family = re.match(r"[A-Za-z]+", licence).group()
        assert family in declared, f"{label}: About says {licence!r}, the package declares {declared!r}"
    html = about_html()
    assert "GPL-3.0" in html and "not installed" not in html


def test_sources_use_only_names_the_package_opencv_has():
    """build/package.py refuses to build when the sources call an OpenCV function outside the
    modules the package's OpenCV is compiled with; the scan it relies on must see every use."""
    used = package.package_env.used_cv2_names()
    assert {"imdecode", "resize", "warpAffine", "applyColorMap", "GaussianBlur"} <= used.keys()
    assert used["imdecode"] == "engine/images.py"
    assert package.package_env.missing_cv2_names(Path(sys.executable)) == []


def test_spec_has_no_platform_paths():
    spec = (ROOT / "build" / "lantern.spec").read_text()
    assert "SPECPATH" in spec
    for fragment in ("/usr/", "/lib/", "/tmp/", "/work/", "/home/", "site-packages", "\\\\", "C:"):
        assert fragment not in spec, fragment


@pytest.mark.slow
def test_frozen_app_selftest():
    """Build (or reuse) the one-folder app and run its own --selftest, as `make package` does."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (pip install -e '.[package]')")
    demo_onnx_bundle()
    dist = ROOT / "dist"
    start = time.perf_counter()
    build = subprocess.run([sys.executable, str(ROOT / "build" / "package.py"), "--dist", str(dist),
                            "--no-archive", "--no-selftest"], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    built = time.perf_counter() - start
    run = subprocess.run([str(package.executable(dist)), "--selftest", "--selftest-png",
                          str(dist / "lantern-selftest.png")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert "SELF-TEST PASSED" in run.stdout and "ok    the package has no torch" in run.stdout
    folder = dist / "lantern"
    names = {p.name for p in folder.rglob("*")}
    assert not {"torch", "torchvision", "triton", "onnx", "sympy", "PyInstaller"} & names
    # no model weights ship (the app runs ONNX); the out-of-distribution statistics (plain arrays) do
    assert [p.name for p in folder.rglob("*.safetensors")] == ["ood.safetensors"]
    assert "ok    the out-of-distribution check scored the demo study" in run.stdout
    for shipped in ("TLS available", "DICOM listener answers C-ECHO", "DICOM result objects written"):
        assert f"ok    {shipped}" in run.stdout, shipped  # the DICOM node is the radiologist's: it ships
    assert "ok    load_image reads gray16.tif" in run.stdout  # the package's own OpenCV build
    slim = json.loads((dist / "lantern.inputs.json").read_text())["opencv"] == "slim"
    if slim:  # no video I/O or BLAS of the PyPI wheel came along
        assert not [p for p in folder.rglob("*") if p.name.startswith(("libavcodec", "libopenblas"))]
    size_mb = package.folder_size(folder) / 1e6
    print(f"build or reuse {built:.0f} s; frozen self-test: {run.stdout.splitlines()[-2:]}; {size_mb:.0f} MB")
    limit = package.SIZE_BUDGET_MB if slim else package.SIZE_LIMIT_MB
    assert size_mb <= limit, f"the package grew to {size_mb:.0f} MB"


def test_bench_reports_package_size_against_budget(tmp_path):
    """`lantern-engine bench` reports the packaged folder's size (issue 6's budget)."""
    from engine.cli.bench import PACKAGE_BUDGET_MB, package_size

    assert package_size(tmp_path / "absent") == {"folder": str(tmp_path / "absent"), "built": False}
    folder = tmp_path / "lantern"
    (folder / "_internal").mkdir(parents=True)
    (folder / "lantern").write_bytes(b"x" * 1_500_000)
    (folder / "_internal" / "lib.so").write_bytes(b"y" * 2_000_000)
    report = package_size(folder)
    assert report["built"] and report["mb"] == 3.5 and report["met"] and report["budget_mb"] == PACKAGE_BUDGET_MB
