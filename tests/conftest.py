"""Shared test setup. GUI tests run headless: the offscreen Qt platform is chosen here, before
pytest-qt creates the QApplication, so nobody has to set it by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Settings written by the viewer under test must not touch the user's own.
os.environ.setdefault("XDG_CONFIG_HOME", str(Path(__file__).parent / ".." / ".pytest_cache" / "config"))

from engine.resources import DEMO_MODEL as DEMO_BUNDLE  # noqa: E402
from engine.resources import DEMO_STUDIES, ROOT  # noqa: E402,F401 (ROOT: for the tests that import it)


@pytest.fixture(scope="session")
def qapp(qapp_args, qapp_cls):
    """pytest-qt's QApplication made as the viewer makes it (viewer.qt_app.make_app): Python's
    cycle collector then runs on the GUI thread only (viewer/gui_gc.py). Without that a worker's
    allocation could collect a closed test window on the worker and hang the run."""
    from viewer.qt_app import make_app

    return make_app()


def make_bundle(folder: Path, *, architecture="resnet18", classes=("normal", "nodule", "effusion"),
                channels=1, size=64, dropout=0.3, seed=0, **manifest_extra) -> Path:
    """A small bundle with random (seeded) weights, written the way users' bundles are."""
    import torch
    from safetensors.torch import save_file

    from engine.backends.architectures import build_model
    from engine.bundle import parse_manifest

    manifest = {
        "format_version": 1, "name": "tiny-test-model", "version": "0.0.1",
        "architecture": architecture, "classes": list(classes),
        "input": {"channels": channels, "size": [size, size], "resize": "letterbox"},
        "head": {"dropout": dropout}, "weights": "model.safetensors",
        "intended_use": "Tests only.", **manifest_extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(parse_manifest(manifest, folder))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def make_multi_input_bundle(folder: Path, *, branches="shared", architecture="resnet18",
                            names=("PA", "LAT"), classes=("normal", "nodule", "effusion"), size=64,
                            dropout=0.3, seed=0, inputs=None, **manifest_extra) -> Path:
    """A small multi-input bundle (one branch per named input, or one shared) with random weights."""
    import torch
    from safetensors.torch import save_file

    from engine.backends.multi_input import MultiInputNet
    from engine.bundle import parse_manifest

    views = {"PA": ["PA", "AP"], "LAT": ["LL", "RL", "LATERAL"]}
    manifest = {
        "format_version": 1, "name": "tiny-two-view-model", "version": "0.0.1",
        "architecture": architecture, "classes": list(classes), "branches": branches,
        "inputs": inputs or [{"name": n, "channels": 1, "size": [size, size], "resize": "letterbox",
                              "view_positions": views.get(n, [])} for n in names],
        "head": {"dropout": dropout}, "weights": "model.safetensors",
        "intended_use": "Tests only.", **manifest_extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = MultiInputNet(parse_manifest(manifest, folder))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def dciodvfy_errors(path: Path) -> list[str]:
    """dicom3tools' validator on a file Lantern wrote: its Error lines (warnings are allowed).
    The Makefile installs dicom3tools; without it the test fails rather than passing unchecked."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed: run 'make system-deps' as root")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def new_dicom(sop_class) -> "pydicom.Dataset":
    """A data set with file meta and fresh UIDs, ready for a test to add its modules."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    if not (DEMO_BUNDLE / "manifest.json").is_file():
        pytest.skip("the demo bundle has not been trained yet (make demo-model)")
    return DEMO_BUNDLE


@pytest.fixture(scope="session")
def demo_studies() -> Path:
    return DEMO_STUDIES
