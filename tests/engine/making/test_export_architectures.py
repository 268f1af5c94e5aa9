"""Export and quantization of architectures other than the ResNet the main ONNX tests use, and the
rule that decides whether two engines' maps of a class agree.

DenseNet-121 continues after its explained layer (``features.norm5``) with an in-place functional
ReLU; the export must give the explained activation itself, not the ReLU's output. A small random
bundle (1 channel, 64 x 64: a 2 x 2 feature grid) keeps the file well under a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.making.export_verification import EMPTY_PEAK, class_map_correlations, map_correlation, map_is_empty
from tests.conftest import make_bundle


# -- the agreement rule ------------------------------------------------------------------------

def test_two_empty_maps_agree():
    zeros = np.zeros((4, 4), np.float32)
    assert map_correlation(zeros, zeros) == 1.0
    # Float rounding leaves specks where the pre-ReLU map is ~0: still empty.
    specks = zeros.copy()
    specks[1, 2] = 3e-9
    assert map_is_empty(specks)
    assert map_correlation(specks, zeros) == 1.0
    # Constant maps show no location either, whatever their level.
    assert map_correlation(np.full((4, 4), 0.5), np.full((4, 4), 0.7)) == 1.0


def test_a_map_empty_on_one_side_only_disagrees():
    zeros = np.zeros((4, 4), np.float32)
    blob = zeros.copy()
    blob[1:3, 1:3] = 0.2
    assert map_correlation(blob, zeros) == 0.0
    assert map_correlation(zeros, blob) == 0.0
    assert map_correlation(np.full((4, 4), 0.5), blob) == 0.0


def test_two_maps_with_a_location_are_correlated():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(6, 6)), 0.0)
    b = a + 0.01 * rng.normal(size=(6, 6))
    assert map_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert map_correlation(a, a) == pytest.approx(1.0)
    assert map_correlation(a, a.max() - a) < 0  # the opposite location


def test_the_emptiness_floor_follows_the_images_strongest_map():
    """A speck of 1e-6 next to a class map peaking at 10 is rounding, not evidence; the same speck
    on an image whose strongest map is 1e-3 is a location."""
    speck = np.zeros((3, 3), np.float32)
    speck[0, 0] = 1e-6
    strong = np.zeros((3, 3), np.float32)
    strong[2, 2] = 10.0
    zeros = np.zeros((3, 3), np.float32)
    assert class_map_correlations(np.stack([strong, speck]), np.stack([strong, zeros])) == pytest.approx([1.0, 1.0])
    weak = strong * 1e-4
    assert class_map_correlations(np.stack([weak, speck]), np.stack([weak, zeros])) == pytest.approx([1.0, 0.0])
    assert map_is_empty(np.full((2, 2), EMPTY_PEAK / 2)) and map_is_empty(np.zeros((0,)))


# -- DenseNet-121 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def densenet(tmp_path_factory) -> Path:
    """A random densenet121 bundle exported to ONNX with the default fp32 limits."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from engine.making.onnx_export import export_bundle

    folder = make_bundle(tmp_path_factory.mktemp("densenet") / "dn", architecture="densenet121", size=64)
    export_bundle(folder, verify_images=2)
    return folder


@pytest.mark.slow
def test_densenet_export_reproduces_torch_maps(densenet):
    from engine.backends.onnx_backend import OnnxBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle
    from engine.making.export_verification import MAP_CORRELATION, class_maps, heldout_inputs

    bundle = load_bundle(densenet)
    figures = bundle.model_card["onnx_validation"]
    assert figures["max_abs_logit_error"] <= 1e-4
    assert min(figures["min_map_correlation"].values()) >= MAP_CORRELATION
    ref, got = TorchBackend(bundle), OnnxBackend(bundle)
    x = heldout_inputs(bundle, 1, seed=321)[0]
    a, b = ref.explain(x), got.explain(x)
    # The explained layer's own output: norm5 has negative values, the ReLU after it has none.
    assert a.activations.min() < 0
    np.testing.assert_allclose(b.activations, a.activations, atol=1e-4)
    np.testing.assert_allclose(b.gradients, a.gradients, atol=1e-5)
    maps_a, maps_b = class_maps(a.activations, a.gradients), class_maps(b.activations, b.gradients)
    for method in maps_a:
        assert min(class_map_correlations(maps_b[method], maps_a[method])) >= MAP_CORRELATION, method


@pytest.mark.slow
def test_densenet_quantizes_within_its_validation(densenet, tmp_path):
    """On a 2 x 2 grid with random weights a few int8 ReLU masks flip and single maps move (measured
    minima 0.88-0.99 at 64 x 64, >= 0.99 at 128 x 128); the default 0.95 is relaxed here like the
    ResNet test's, and the figures must be recorded."""
    from engine.bundle import load_bundle
    from engine.making.quantization import quantize_bundle

    folder = tmp_path / "dn"
    shutil.copytree(densenet, folder)
    bundle = quantize_bundle(folder, calibration_images=16, validation_images=8, min_correlation=0.8,
                             max_accuracy_drop=0.25)
    figures = load_bundle(folder).model_card["int8_validation"]
    assert bundle.manifest["onnx"]["int8"] == "model.int8.onnx"
    assert figures["size_ratio"] <= 0.30
    assert min(figures["min_map_correlation_with_fp32"].values()) >= 0.8
    assert min(figures["mean_map_correlation_with_fp32"].values()) >= 0.95
