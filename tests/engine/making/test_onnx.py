"""The ONNX engines: export (verified against PyTorch), int8 quantization (validated), the torch-free
backend, and results that mean the same on every engine.

One small random resnet18 bundle (1 channel, 64x64, explained layer layer3 so the gradients really
flow through a network part) is exported once per session; every test works on copies of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, make_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """A tiny bundle exported to ONNX (fp32 explain graph + head)."""
    from engine.making.onnx_export import export_bundle

    folder = make_bundle(tmp_path_factory.mktemp("onnx") / "tiny3", target_layer="layer3")
    export_bundle(folder, verify_images=3)
    return folder


@pytest.fixture(scope="session")
def quantized(exported, tmp_path_factory) -> Path:
    """A copy of the exported bundle with an int8 model (thresholds relaxed for a random model)."""
    from engine.making.quantization import quantize_bundle

    folder = tmp_path_factory.mktemp("int8") / "tiny3"
    shutil.copytree(exported, folder)
    quantize_bundle(folder, calibration_images=12, validation_images=6, min_correlation=0.5,
                    max_accuracy_drop=0.34)
    return folder


def _inputs(bundle, n, seed=123):
    from engine.making.export_verification import heldout_inputs

    return heldout_inputs(bundle, n, seed)[0]


def test_export_reproduces_torch_maps_and_logits(exported):
    from engine.backends.onnx_backend import OnnxBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle
    from engine.making.export_verification import class_maps, map_correlation

    bundle = load_bundle(exported)
    assert bundle.manifest["onnx"] == {"fp32": "model.onnx", "head": "head.onnx"}
    assert bundle.model_card["onnx_validation"]["max_abs_logit_error"] <= 1e-4
    # One self-contained file: no external data next to it.
    assert sorted(p.name for p in exported.iterdir()) == ["head.onnx", "manifest.json", "model.onnx",
                                                         "model.safetensors"]
    ref, got = TorchBackend(bundle), OnnxBackend(bundle, quantized=False)
    assert got.engine == "onnx" and got.has_dropout and ref.has_dropout
    x = _inputs(bundle, 3)
    for i in range(3):
        a, b = ref.explain(x[i : i + 1]), got.explain(x[i : i + 1])
        for field in ("logits", "activations", "gradients", "head_input"):
            assert getattr(a, field).shape == getattr(b, field).shape, field
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)
        # Real gradients through layer4 (not a constant): they change from image to image.
        assert np.abs(b.gradients).max() > 0
        maps_a, maps_b = class_maps(a.activations, a.gradients), class_maps(b.activations, b.gradients)
        for method in maps_a:
            for c in range(3):
                assert map_correlation(maps_b[method][c], maps_a[method][c]) >= 0.999, (method, c)
    # Dynamic batch axis: a batch of 3 and a batch of 1 through the same graph.
    np.testing.assert_allclose(got.forward(x), ref.forward(x), atol=1e-4)
    np.testing.assert_allclose(got.forward(x[:1]), ref.forward(x[:1]), atol=1e-4)
    e0, e1 = got.explain(x[:1]), got.explain(x[1:2])
    assert not np.allclose(e0.gradients, e1.gradients)


def test_export_refuses_a_wrong_graph_and_leaves_nothing(exported, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import engine.making.onnx_export as onnx_export
    from engine.errors import LanternError

    folder = make_bundle(tmp_path / "fresh", target_layer="layer3")
    before = sorted(p.name for p in folder.iterdir())
    manifest = (folder / "manifest.json").read_bytes()
    # Same weights as the exported fixture (same seed): reuse its graphs instead of exporting again.
    cached = {"explain": onnx.load(str(exported / "model.onnx")), "head": onnx.load(str(exported / "head.onnx"))}

    def cached_export(module, args, input_names, output_names, dynamic_shapes):
        from engine.making.onnx_graph import flatten_gradient_branch

        proto = flatten_gradient_branch(cached["explain"]) if input_names[0] == "input" else cached["head"]
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        del proto.metadata_props[:]
        return proto

    def corrupt(data: bytes) -> bytes:
        proto = onnx.load_from_string(data)
        weights = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        array = numpy_helper.to_array(weights).copy()
        array[0] *= 1.5  # one output channel of one layer4 convolution is off by 50%
        weights.CopyFrom(numpy_helper.from_array(array, weights.name))
        return proto.SerializeToString()

    monkeypatch.setattr(onnx_export, "_export_bytes", cached_export)
    # Unaltered, these graphs passed verification when the fixture exported them; corrupted, they
    # must be refused for what the corruption did.
    with pytest.raises(onnx_export.ExportRefused) as refused:
        onnx_export.export_bundle(folder, verify_images=2, _tamper=corrupt)
    assert isinstance(refused.value, LanternError)
    assert "nothing was written" in str(refused.value) and "logits differ" in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "manifest.json").read_bytes() == manifest


def test_quantize_refuses_then_writes_and_records_validation(exported, tmp_path):
    from engine.making.quantization import INT8_FILE, QuantizationRefused, quantize_bundle

    folder = tmp_path / "b"
    shutil.copytree(exported, folder)
    manifest = (folder / "manifest.json").read_bytes()
    # An int8 file cannot be 5% of fp32's: a real validation failure, nothing may be left.
    with pytest.raises(QuantizationRefused, match="size"):
        quantize_bundle(folder, calibration_images=8, validation_images=4, max_size_ratio=0.05,
                        min_correlation=0.0, max_accuracy_drop=1.0)
    assert not (folder / INT8_FILE).exists()
    assert (folder / "manifest.json").read_bytes() == manifest
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_quantize_can_drop_the_fp32_model_for_shipping(quantized, tmp_path):
    from engine.backends import available_engines
    from engine.bundle import load_bundle
    from engine.making.quantization import quantize_bundle

    folder = tmp_path / "ship"
    shutil.copytree(quantized, folder)
    bundle = quantize_bundle(folder, calibration_images=4, validation_images=3, min_correlation=0.0,
                             max_accuracy_drop=1.0, drop_fp32=True)
    assert not (folder / "model.onnx").exists()
    assert set(load_bundle(folder).manifest["onnx"]) == {"int8", "head"}
    assert "onnx" not in available_engines(bundle) and "onnx-int8" in available_engines(bundle)


def test_quantized_bundle_records_figures(quantized):
    from engine.backends import available_engines
    from engine.bundle import load_bundle

    bundle = load_bundle(quantized)
    assert bundle.manifest["onnx"]["int8"] == "model.int8.onnx"
    card = bundle.model_card["int8_validation"]
    assert card["size_ratio"] <= 0.30
    assert card["size_bytes"]["int8"] == (quantized / "model.int8.onnx").stat().st_size
    assert set(card["min_map_correlation_with_fp32"]) == {"gradcam", "gradcam++", "layercam"}
    assert card["calibration_phantoms"] == 12
    assert available_engines(bundle)[0] == "onnx-int8"


def test_mc_logits_are_seeded_and_spread(quantized):
    from engine.backends.onnx_backend import OnnxBackend
    from engine.bundle import load_bundle

    bundle = load_bundle(quantized)
    for quant in (False, True):
        backend = OnnxBackend(bundle, quantized=quant)
        features = backend.explain(_inputs(bundle, 1)).head_input
        a = backend.mc_logits(features, 20, seed=7)
        b = backend.mc_logits(features, 20, seed=7)
        c = backend.mc_logits(features, 20, seed=8)
        assert a.shape == (20, 3)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.std(axis=0).max() > 1e-4
        # Dropout keeps the expectation: the sample mean is near the deterministic logits.
        plain = backend.sessions.head(features[None], [np.ones((1, *s), np.float32)
                                                      for s in backend.sessions.mask_shapes])[0]
        many = backend.mc_logits(features, 2000, seed=1).mean(axis=0)
        assert np.abs(many - plain).max() < 0.1 * max(1.0, np.abs(plain).max())


def test_engines_give_the_same_kind_of_analysis(quantized, tmp_path):
    import cv2

    from engine import AnalysisOptions, analyze, load_image, load_model

    png = tmp_path / "phantom.png"
    from engine.synthetic.phantoms import make_dataset

    pixels = make_dataset(1, seed=5)[0][0]
    cv2.imwrite(str(png), np.clip(pixels / pixels.max() * 65535, 0, 65535).astype(np.uint16))
    image = load_image(png)
    options = AnalysisOptions(methods=("gradcam", "gradcam++", "layercam"), mc_samples=10, seed=3)
    results = {e: analyze(image, load_model(quantized, e), options) for e in ("torch", "onnx", "onnx-int8")}
    ref = results["torch"]
    for engine, r in results.items():
        assert r.engine == engine
        assert r.classes == ref.classes and r.logits.shape == ref.logits.shape
        assert r.uncertainty is not None and r.uncertainty.samples == 10
        for method, maps in r.maps.items():
            assert maps.absolute.shape == ref.maps[method].absolute.shape
            assert maps.grid.shape == ref.maps[method].grid.shape
        assert set(r.to_dict()) == set(ref.to_dict())
    onnx_result = results["onnx"]
    np.testing.assert_allclose(onnx_result.logits, ref.logits, atol=1e-4)
    from engine.making.export_verification import map_correlation

    for method in ref.maps:
        for c in range(3):
            assert map_correlation(onnx_result.maps[method].grid[c], ref.maps[method].grid[c]) >= 0.999


NO_TORCH = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class Blocked(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"{spec.name} is blocked in this test")

        def exec_module(self, module):
            raise ImportError("blocked")

    class NoTorch(importlib.abc.MetaPathFinder):
        # Every "import torch" (or torchvision, or any submodule) raises ImportError.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                return importlib.machinery.ModuleSpec(name, Blocked())
            return None

    sys.meta_path.insert(0, NoTorch())
    import json
    from engine import AnalysisOptions, analyze, load_image, load_model

    image = load_image(sys.argv[1])
    out = {}
    for engine in ("onnx-int8", "onnx"):
        result = analyze(image, load_model(sys.argv[2], engine),
                         AnalysisOptions(methods=("gradcam", "layercam"), mc_samples=8))
        out[engine] = {"engine": result.engine, "predicted": result.predicted_class,
                       "maps": {m: list(c.absolute.shape) for m, c in result.maps.items()},
                       "uncertainty": result.uncertainty.samples}
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
    print(json.dumps(out))
""")


def test_onnx_analysis_runs_without_torch(quantized, tmp_path):
    import cv2

    png = tmp_path / "image.png"
    cv2.imwrite(str(png), (np.random.default_rng(0).random((90, 120)) * 255).astype(np.uint8))
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH)
    done = subprocess.run([sys.executable, str(script), str(png), str(quantized)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for engine in ("onnx-int8", "onnx"):
        assert out[engine]["engine"] == engine
        assert out[engine]["maps"]["gradcam"] == [3, 90, 120]
        assert out[engine]["uncertainty"] == 8


def test_cli_has_export_and_quantize():
    from engine.cli.main import build_parser

    args = build_parser().parse_args(["quantize", "some/bundle", "--dynamic", "--calibration", "50"])
    assert args.command == "quantize" and args.dynamic and args.calibration == 50
    assert build_parser().parse_args(["export", "b"]).bundle == Path("b")


def test_bench_figures_for_an_onnx_engine(quantized):
    from engine.cli.bench import _ratios, bench_engine
    from engine.synthetic.phantoms import make_phantom
    from engine.making.training import phantom_image

    image = phantom_image(make_phantom(np.random.default_rng(0), 1, 128).image)
    figures = bench_engine(quantized, "onnx-int8", image, repeats=3)
    for key in ("forward", "analysis"):
        assert set(figures[key]) == {"p50_ms", "p95_ms", "p99_ms"}
        assert 0 < figures[key]["p50_ms"] <= figures[key]["p99_ms"]
    assert figures["throughput_images_per_s"] > 0
    assert figures["peak_rss_mb"] >= figures["peak_rss_rise_mb"] >= 0
    assert figures["model_bytes"] == sum((quantized / f).stat().st_size for f in ("model.int8.onnx", "head.onnx"))
    ratios = _ratios({"torch": figures, "onnx-int8": figures})
    assert ratios["onnx-int8"]["analysis_speedup"] == 1.0
