"""The packaged app's own Python environment: torch-free, with an OpenCV of three modules.

The PyPI OpenCV wheel carries video I/O (FFmpeg, AV1 and VP8 codecs, OpenSSL), OpenBLAS and a
dozen modules Lantern never calls: 152 MB of a 379 MB app. Lantern uses core, imgproc and
imgcodecs only, so the package is built against OpenCV compiled from the same release's source
distribution with just those (PNG, JPEG and TIFF codecs built in): about 20 MB, no bundled
libraries. `missing_cv2_names` checks, before every build, that each `cv2.X` the engine and viewer
use exists in that build.

The environment (DIR/venv) holds the runtime dependencies at the versions of the environment that
runs this script (the one the tests pass with), never torch: the app is analysed in an
interpreter that could not import torch even if a conditional import asked for it.

Compiling OpenCV takes about 12 minutes on 2 cores, once: the wheel is kept in DIR/wheels. It
needs a C++ compiler and CMake (scikit-build installs CMake from PyPI when it is missing); on a
machine without a compiler, `--opencv pypi` packages the PyPI wheel instead (about 150 MB more).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENCV = "opencv-python-headless"
OPENCV_MODULES = ("core", "imgproc", "imgcodecs")
# Off: every optional backend the three modules could pull in. The PNG, JPEG, TIFF and zlib
# sources inside OpenCV's tree are built in statically (OPENCV_FORCE_3RDPARTY_BUILD), so the
# result needs no system image libraries. IPP and the Unicode font are downloaded from GitHub
# at configure time: off, so the build works offline from PyPI's source distribution alone.
OPENCV_CMAKE_ARGS = (
    "-DBUILD_LIST=" + ",".join((*OPENCV_MODULES, "python3")),
    "-DPYTHON3_LIMITED_API=ON", "-DOPENCV_FORCE_3RDPARTY_BUILD=ON", "-DCMAKE_BUILD_TYPE=Release",
    "-DWITH_IPP=OFF", "-DWITH_UNIFONT=OFF", "-DWITH_ITT=OFF", "-DWITH_OPENCL=OFF", "-DWITH_LAPACK=OFF",
    "-DWITH_EIGEN=OFF", "-DWITH_PROTOBUF=OFF", "-DWITH_FFMPEG=OFF", "-DWITH_GSTREAMER=OFF",
    "-DWITH_V4L=OFF", "-DWITH_1394=OFF", "-DWITH_VA=OFF", "-DWITH_VA_INTEL=OFF", "-DWITH_GDAL=OFF",
    "-DWITH_GDCM=OFF", "-DWITH_OPENEXR=OFF", "-DBUILD_OPENEXR=OFF", "-DWITH_AVIF=OFF",
    "-DWITH_WEBP=OFF", "-DWITH_OPENJPEG=OFF", "-DWITH_JASPER=OFF", "-DWITH_JPEGXL=OFF",
    "-DWITH_IMGCODEC_HDR=OFF", "-DWITH_IMGCODEC_SUNRASTER=OFF", "-DWITH_IMGCODEC_PXM=OFF",
    "-DWITH_IMGCODEC_PFM=OFF",
)
# What the app imports at run time, and PyInstaller with its hooks. Pinned to the versions
# installed here, so the package runs the code the test suite ran.
RUNTIME_DISTS = ("PySide6_Essentials", "shiboken6", "pyqtgraph", "onnxruntime", "numpy", "pydicom",
                 OPENCV, "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
                 "safetensors", "pyinstaller", "pyinstaller-hooks-contrib")


def installed_versions() -> dict[str, str | None]:
    found = {}
    for name in RUNTIME_DISTS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run_logged(command: list[str], log: Path, env: dict | None = None) -> None:
    """Run a long step with its output in a log file; on failure, say where the log is."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              preexec_fn=(lambda: os.nice(10)) if os.name == "posix" else None)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"package: failed: {' '.join(command[:4])} ...\n{tail}\n(full log: {log})")


# OpenCV's typing-stub generator knows a fixed list of functions and aliases from every module
# (solvePnP, FeatureDetector, ...) and gives up when a build leaves them out; its setup.py then
# insists on the stubs. The app needs no stubs: the patched setup.py stops asking for them.
SETUP_PATCHES = (
    ('[ r"python/cv2/py.typed" ] if sys.version_info >= (3, 6) else []',
     '[]  # Lantern: no typing stubs in a three-module build'),
    ('if sys.version_info >= (3, 6):\n        rearrange_cmake_output_data["cv2.typing"]',
     'if False:  # Lantern: no typing stubs in a three-module build\n        rearrange_cmake_output_data["cv2.typing"]'),
)


def patch_setup(folder: Path, opencv_version: str) -> None:
    setup = folder / "setup.py"
    text = setup.read_text(encoding="utf-8")
    for old, new in SETUP_PATCHES:
        if new in text:
            continue
        if old not in text:
            raise SystemExit(f"package: OpenCV {opencv_version}'s setup.py changed; update SETUP_PATCHES "
                             "in build/package_env.py, or package with --opencv pypi")
        text = text.replace(old, new)
    setup.write_text(text, encoding="utf-8")


def opencv_source(work: Path, opencv_version: str) -> Path:
    """PyPI's source distribution of this OpenCV release, unpacked once, its setup.py patched."""
    folder = work / "opencv-src" / f"opencv_python_headless-{opencv_version}"
    if (folder / "setup.py").is_file():
        patch_setup(folder, opencv_version)
        return folder
    sdist = work / "sdist"
    run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", OPENCV,
                f"{OPENCV}=={opencv_version}", "-d", str(sdist)], work / "opencv-download.log")
    unpacked = folder.with_name(folder.name + ".partial")
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(sdist / f"opencv_python_headless-{opencv_version}.tar.gz") as tar:
        tar.extractall(unpacked.parent / "extract", filter="data")
    (unpacked.parent / "extract" / folder.name).replace(unpacked)
    shutil.rmtree(unpacked.parent / "extract")
    patch_setup(unpacked, opencv_version)
    unpacked.replace(folder)
    return folder


def slim_opencv_wheel(work: Path, opencv_version: str) -> Path:
    """The three-module OpenCV wheel for this version, built from PyPI's sdist when not cached."""
    wheels = work / "wheels"
    tag = "opencv_python_headless-" + opencv_version + "-"
    cached = sorted(wheels.glob(tag + "*.whl")) if wheels.is_dir() else []
    # NASM builds libjpeg-turbo's SIMD code (JPEG decoding 2-3x faster): a wheel compiled
    # without it is compiled again once it is installed.
    nasm = "nasm" if shutil.which("nasm") else "no-nasm"
    recipe = hashlib.sha256(" ".join((*OPENCV_CMAKE_ARGS, *(new for _old, new in SETUP_PATCHES), nasm))
                            .encode()).hexdigest()[:12]
    stamp = wheels / f"{tag}recipe.txt"
    if cached and stamp.is_file() and stamp.read_text().strip() == recipe:
        return cached[-1]
    for old in cached:
        old.unlink()
    print(f"package: building OpenCV {opencv_version} with {', '.join(OPENCV_MODULES)} only "
          f"(once; about 12 min on 2 cores; log in {work / 'opencv-build.log'})", flush=True)
    if nasm == "no-nasm":
        print("package: note: no NASM assembler here, so the package's JPEG decoding has no SIMD "
              "(2-3x slower); install nasm (make system-deps does, as root) for the faster build", flush=True)
    source = opencv_source(work, opencv_version)
    # Always from scratch: CMake's cache would name the last build's temporary numpy headers.
    shutil.rmtree(source / "_skbuild", ignore_errors=True)
    env = {**os.environ, "ENABLE_HEADLESS": "1", "CMAKE_ARGS": " ".join(OPENCV_CMAKE_ARGS),
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    run_logged([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source)],
               work / "opencv-build.log", env)
    stamp.write_text(recipe)
    return next(wheels.glob(tag + "*.whl"))


def package_venv(work: Path, opencv: str = "slim") -> Path:
    """The packaging environment's python; (re)made when its recipe changed."""
    pins = {name: v for name, v in installed_versions().items() if v}
    if OPENCV not in pins:
        raise SystemExit(f"package: {OPENCV} is not installed here; run `make setup` first")
    requirements = [f"{name}=={v}" for name, v in sorted(pins.items()) if name != OPENCV]
    opencv_req = str(slim_opencv_wheel(work, pins[OPENCV])) if opencv == "slim" else f"{OPENCV}=={pins[OPENCV]}"
    venv = work / "venv"
    opencv_digest = hashlib.sha256(Path(opencv_req).read_bytes()).hexdigest() if opencv == "slim" else None
    recipe = json.dumps({"python": sys.version, "requirements": requirements, "opencv": opencv_req,
                         "opencv_sha256": opencv_digest,
                         "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()})
    stamp = venv / "lantern-package-recipe.json"
    python = venv_python(venv)
    if python.is_file() and stamp.is_file() and stamp.read_text() == recipe:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"package: making the torch-free packaging environment {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = work / "package-constraints.txt"
    constraints.write_text("\n".join(requirements) + "\n")
    # The project goes in without its torch extra; the constraints hold every runtime package to
    # the version installed here, and the OpenCV requirement is met by the wheel named beside it.
    run_logged([str(python), "-m", "pip", "install", "-c", str(constraints), opencv_req,
                "-e", f"{ROOT}[viewer,package]"], work / "venv-install.log")
    stamp.write_text(recipe)
    return python


def recipe_digest(python: Path) -> str:
    """What the packaging environment was made from (versions, the OpenCV wheel's SHA-256)."""
    stamp = python.parents[1] / "lantern-package-recipe.json"
    return hashlib.sha256(stamp.read_bytes()).hexdigest() if stamp.is_file() else ""


def used_cv2_names() -> dict[str, str]:
    """Every `cv2.NAME` in the engine and viewer sources, with the first file that uses it."""
    used: dict[str, str] = {}
    for path in sorted(p for pkg in ("engine", "viewer") for p in (ROOT / pkg).rglob("*.py")):
        for name in re.findall(r"\bcv2\.([A-Za-z_]\w*)", path.read_text(encoding="utf-8")):
            used.setdefault(name, str(path.relative_to(ROOT)))
    return used


def missing_cv2_names(python: Path) -> list[str]:
    """The `cv2.NAME`s the sources use that the packaging environment's OpenCV lacks."""
    used = used_cv2_names()
    code = f"import cv2, json; print(json.dumps([n for n in {sorted(used)!r} if not hasattr(cv2, n)]))"
    missing = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                                        text=True).stdout)
    return [f"cv2.{name} (used in {used[name]})" for name in missing]
