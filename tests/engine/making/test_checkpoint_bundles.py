"""``lantern-engine bundle --from``: a Hugging Face or timm checkpoint folder becomes a bundle that
the ONNX engines run, verified against the PyTorch engine, and that runs where torch,
transformers and timm cannot even be imported (the packaged app). Tiny random-weight checkpoints
saved the way those libraries save them (tests/engine/test_checkpoint_folders.py makes them).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("timm")

from tests.engine.test_checkpoint_folders import (  # noqa: E402
    CLASSES, _convnext_v2, _swin, _timm_swin, _timm_vit, _vit,
)

pytestmark = pytest.mark.slow

# name: (checkpoint maker, its grid). ConvNeXtV2, ViT and a timm ViT as the issue asks, and the
# two Swin token layouts ((B, h*w, K) in Hugging Face, (B, h, w, K) in timm).
CHECKPOINTS = {
    "hf-convnextv2": (_convnext_v2, (8, 8)),
    "hf-vit": (_vit, (4, 4)),
    "hf-swin": (_swin, (8, 8)),
    "timm-vit": (_timm_vit, (4, 4)),
    "timm-swin": (_timm_swin, (8, 8)),
}


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def converted(request, tmp_path_factory) -> tuple[str, Path]:
    """The checkpoint made a bundle by the command line (exported to ONNX, verified), then
    quantized; no socket may open on the way."""
    from engine.cli.main import main
    from engine.making.quantization import quantize_bundle

    root = tmp_path_factory.mktemp(request.param)
    make, _ = CHECKPOINTS[request.param]
    source = make(root / "checkpoint")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was opened: {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "socket", refuse)
        patch.setattr(socket, "create_connection", refuse)
        assert main(["bundle", "--from", str(source), "--out", str(root / "bundle"), "--name", "tiny"]) == 0
    # A tiny model's file is mostly graph, not weights: the size limit is for real ones.
    quantize_bundle(root / "bundle", calibration_images=16, validation_images=8, max_size_ratio=1.5)
    return request.param, root / "bundle"


def test_the_bundle_keeps_the_checkpoint_and_records_what_was_read(converted):
    from engine.bundle import load_bundle
    from engine.making.export_verification import MAP_CORRELATION

    name, folder = converted
    files = sorted(p.name for p in folder.iterdir())
    expected = {"config.json", "manifest.json", "model.safetensors", "model.onnx", "head.onnx", "model.int8.onnx"}
    assert expected <= set(files) and set(files) - expected <= {"preprocessor_config.json"}
    bundle = load_bundle(folder)
    assert bundle.architecture.startswith("huggingface:" if name.startswith("hf-") else "timm:")
    assert bundle.classes == CLASSES and bundle.name == "tiny" and bundle.head.dropout == 0.2
    assert "bundle --from" in bundle.model_card["summary"]
    assert min(bundle.model_card["onnx_validation"]["min_map_correlation"].values()) >= MAP_CORRELATION
    assert min(bundle.model_card["int8_validation"]["min_map_correlation_with_fp32"].values()) >= 0.95


def test_every_engine_explains_the_converted_checkpoint_alike(converted):
    """fp32 maps agree with PyTorch's at r >= 0.999, int8 ones at r >= 0.95 (as verification and
    validation demand), on an image none of them has seen."""
    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.images import load_image
    from engine.making.export_verification import class_map_correlations
    from engine.resources import DEMO_STUDIES

    name, folder = converted
    grid = CHECKPOINTS[name][1]
    image = load_image(DEMO_STUDIES / "demo_nodule.png")
    options = AnalysisOptions(methods=("gradcam", "gradcam++", "layercam"), mc_samples=8)
    results = {engine: analyze(image, load_model(folder, engine), options) for engine in ("torch", "onnx", "onnx-int8")}
    want = results["torch"]
    np.testing.assert_allclose(results["onnx"].logits, want.logits, atol=1e-4)
    for engine, limit in (("onnx", 0.999), ("onnx-int8", 0.95)):
        got = results[engine]
        assert got.engine == engine and got.uncertainty is not None and got.uncertainty.samples == 8
        for method, maps in got.maps.items():
            assert maps.grid.shape == (3, *grid)
            assert maps.source_map(0).shape == image.pixels.shape[:2]
            assert min(class_map_correlations(maps.grid, want.maps[method].grid)) >= limit, (engine, method)


NO_HUB_LIBRARIES = textwrap.dedent("""
    import importlib.abc, importlib.machinery, json, sys

    BLOCKED = ("torch", "torchvision", "transformers", "timm")

    class Blocked(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"{spec.name} is blocked in this test")

        def exec_module(self, module):
            raise ImportError("blocked")

    class NoHubLibraries(importlib.abc.MetaPathFinder):
        # What the packaged app lacks: every import of these (or their submodules) fails.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, Blocked())
            return None

    sys.meta_path.insert(0, NoHubLibraries())
    from engine import AnalysisOptions, analyze, load_image, load_model

    image = load_image(sys.argv[1])
    out = {}
    for engine in ("onnx-int8", "onnx"):
        result = analyze(image, load_model(sys.argv[2], engine), AnalysisOptions(methods=("gradcam",), mc_samples=4))
        out[engine] = {"engine": result.engine, "predicted": result.predicted_class,
                       "grid": list(result.maps["gradcam"].grid.shape), "samples": result.uncertainty.samples}
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not loaded, loaded
    print(json.dumps(out))
""")


def test_the_converted_bundle_runs_without_torch_transformers_or_timm(converted, tmp_path):
    name, folder = converted
    shipped = tmp_path / "shipped"
    shutil.copytree(folder, shipped)
    script = tmp_path / "no_hub.py"
    script.write_text(NO_HUB_LIBRARIES)
    png = ROOT / "resources" / "studies" / "demo_nodule.png"
    done = subprocess.run([sys.executable, str(script), str(png), str(shipped)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for engine in ("onnx-int8", "onnx"):
        assert out[engine]["engine"] == engine and out[engine]["samples"] == 4
        assert out[engine]["grid"] == [3, *CHECKPOINTS[name][1]]
