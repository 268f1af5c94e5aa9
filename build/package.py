"""Build the one-folder Lantern app, archive it and run its self-test (`make package` runs this).

    python build/package.py [--dist DIR] [--force] [--no-archive] [--no-selftest] [--opencv slim|pypi]

Steps: the torch-free packaging environment (build/work/venv, with OpenCV built from source with
the three modules Lantern uses: build/package_env.py), PyInstaller with build/lantern.spec in it
into DIR/lantern (default dist/), then the archive DIR/lantern-<version>-<os>-<arch>.tar.gz (.zip
on Windows), then `DIR/lantern/lantern --selftest`. A build is reused when none of its inputs
changed (the spec, the engine and viewer sources, the shipped bundle and studies, the reference
figures, what the packaging environment was made from): the fingerprint is
DIR/lantern.inputs.json. Runs the same on Windows and macOS.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engine.cli.bench import PACKAGE_BUDGET_MB
from engine.files import folder_size

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "build" / "lantern.spec"
NAME = "lantern"
SIZE_BUDGET_MB = PACKAGE_BUDGET_MB  # the target, the one `lantern-engine bench` reports against
SIZE_LIMIT_MB = 440  # tests/test_package.py's guard when built with the PyPI OpenCV (--opencv pypi)


def _sibling(name: str):
    """A module beside this file, loaded without putting build/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"lantern_build_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


package_env = _sibling("package_env")


def demo_bundle() -> Path:
    return Path(os.environ.get("LANTERN_PACKAGE_BUNDLE") or ROOT / "resources" / "models" / "demo")


def app_version() -> str:
    try:
        return version("lantern")
    except PackageNotFoundError:
        import tomllib

        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def platform_tag() -> str:
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform.rstrip("0123456789"))
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("aarch64", "arm64")
    return f"{system}-{machine}"


def archive_path(dist: Path) -> Path:
    suffix = ".zip" if sys.platform == "win32" else ".tar.gz"
    return dist / f"{NAME}-{app_version()}-{platform_tag()}{suffix}"


def executable(dist: Path) -> Path:
    return dist / NAME / (f"{NAME}.exe" if sys.platform == "win32" else NAME)


def fingerprint(python: Path, opencv: str) -> dict:
    """Everything a build depends on, hashed per group."""
    def digest(files) -> str:
        h = hashlib.sha256()
        for path in sorted(files):
            h.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    bundle = demo_bundle()
    bundle_files = [bundle / "manifest.json"]
    if bundle_files[0].is_file():
        onnx = json.loads(bundle_files[0].read_text()).get("onnx") or {}
        bundle_files += [bundle / name for name in onnx.values() if (bundle / name).is_file()]
    sources = [p for pkg in ("engine", "viewer") for p in (ROOT / pkg).rglob("*.py")]
    build = [SPEC, ROOT / "build" / "lantern_entry.py", ROOT / "build" / "selftest_reference.json",
             ROOT / "pyproject.toml", *(ROOT / "build" / "licenses").glob("*.txt")]
    return {
        "python": sys.version,
        "platform": platform_tag(),
        "environment": package_env.recipe_digest(python),  # pinned versions, OpenCV wheel's SHA-256
        "opencv": opencv,
        "sources": digest(sources),
        "build": digest([p for p in build if p.is_file()]),
        "bundle": digest([p for p in bundle_files if p.is_file()]),
        "studies": digest([p for p in (ROOT / "resources" / "studies").iterdir() if p.is_file()]),
        "teaching": digest([p for p in sorted((ROOT / "resources" / "teaching").rglob("*")) if p.is_file()]),
    }


def low_priority() -> None:
    """Builds share the machine with training and tests: run them at the lowest CPU priority."""
    if hasattr(os, "nice"):
        try:
            os.nice(19)
        except OSError:
            pass


@contextmanager
def build_lock(dist: Path):
    """One build at a time per dist folder (concurrent `make test` / `make package`)."""
    dist.mkdir(parents=True, exist_ok=True)
    with open(dist / ".lantern-package.lock", "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # Windows: no concurrent builds expected
            pass
        yield


def biggest(folder: Path, count: int = 12) -> list[tuple[int, str]]:
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(folder).parts
            key = "/".join(rel[:2] if rel[0] == "_internal" and len(rel) > 2 else rel)
            sizes[key] = sizes.get(key, 0) + path.stat().st_size
    return sorted(((s, k) for k, s in sizes.items()), reverse=True)[:count]


def build(dist: Path, work: Path, force: bool = False, opencv: str = "slim") -> bool:
    """Build unless an up-to-date build is there; returns True when it built."""
    python = package_env.package_venv(work, opencv)
    missing = package_env.missing_cv2_names(python)
    if missing:
        raise SystemExit("package: the packaged OpenCV lacks what the sources use: " + ", ".join(missing)
                         + ". Add its module to OPENCV_MODULES in build/package_env.py.")
    stamp = dist / f"{NAME}.inputs.json"
    inputs = fingerprint(python, opencv)
    if not force and executable(dist).is_file() and stamp.is_file():
        if json.loads(stamp.read_text()) == inputs:
            print(f"package: {dist / NAME} is up to date (inputs unchanged); not rebuilding")
            return False
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    command = [str(python), "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
               "--distpath", str(dist), "--workpath", str(work), str(SPEC)]
    print("package: " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, preexec_fn=low_priority if os.name == "posix" else None)
    stamp.write_text(json.dumps(inputs, indent=2))
    print(f"package: built {dist / NAME} in {time.perf_counter() - start:.0f} s", flush=True)
    return True


def archive(dist: Path) -> Path:
    out = archive_path(dist)
    start = time.perf_counter()
    partial = out.with_name(out.name + ".partial")
    if out.suffix == ".zip":
        shutil.make_archive(str(partial.with_suffix("")), "zip", dist, NAME)
        partial.with_suffix("").with_suffix(".zip").replace(out)
    else:
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(dist / NAME, arcname=NAME)
        partial.replace(out)
    print(f"package: wrote {out} ({out.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - start:.0f} s)")
    return out


def selftest(dist: Path, png: Path | None = None) -> int:
    png = png or dist / f"{NAME}-selftest.png"
    command = [str(executable(dist)), "--selftest", "--selftest-png", str(png)]
    print("package: " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=dist.parent,
                          preexec_fn=low_priority if os.name == "posix" else None).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "work")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    parser.add_argument("--no-archive", action="store_true")
    parser.add_argument("--no-selftest", action="store_true")
    parser.add_argument("--opencv", choices=("slim", "pypi"), default=os.environ.get("LANTERN_PACKAGE_OPENCV", "slim"),
                        help="slim: OpenCV built here with the modules Lantern uses (needs a C++ compiler; "
                             "built once); pypi: the PyPI wheel as installed (about 150 MB more)")
    args = parser.parse_args(argv)
    dist = args.dist.resolve()
    with build_lock(dist):
        built = build(dist, args.work.resolve(), args.force, args.opencv)
        size = folder_size(dist / NAME)
        print(f"package: {dist / NAME} is {size / 1e6:.0f} MB (budget {SIZE_BUDGET_MB} MB); biggest parts:")
        for part_size, part in biggest(dist / NAME):
            print(f"  {part_size / 1e6:7.1f} MB  {part}")
        if not args.no_archive and (built or not archive_path(dist).is_file()):
            archive(dist)
        if args.no_selftest:
            return 0
        return selftest(dist)


if __name__ == "__main__":
    sys.exit(main())
