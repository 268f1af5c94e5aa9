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


# -- one member of each family most used in radiology ----------------------------------------------
# Export with its own verification (logits, and every class's maps at r >= 0.999), then the two
# engines' explained activations and gradients compared at the scale of each: at random
# initialisation some nets' features are ~1e-8 (EfficientNet, MobileNet), where maps empty on both
# engines would "agree" without showing anything. Seconds per export at 64 x 64, measured on this
# 2-core machine while other work ran: resnext50_32x4d 15, efficientnet_v2_s 39, convnext_tiny 31,
# regnet_y_400mf 15, mobilenet_v2 17. ResNet itself is exported by test_onnx.py, DenseNet above;
# resnet34 (19 s), regnet_x_400mf (12 s), efficientnet_b0 (11 s) and mobilenet_v3_small also pass
# but are left out to keep this file near three minutes.
RADIOLOGY_FAMILIES = ("resnext50_32x4d", "efficientnet_v2_s", "convnext_tiny", "regnet_y_400mf", "mobilenet_v2")


def _assert_close_at_scale(got: np.ndarray, want: np.ndarray, what: str):
    scale = float(np.abs(want).max())
    assert scale > 0, f"{what}: nothing to compare (all zero)"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * scale, err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", RADIOLOGY_FAMILIES)
def test_each_radiology_family_exports_and_verifies(architecture, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from engine.backends.onnx_backend import OnnxBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle
    from engine.making.export_verification import MAP_CORRELATION, heldout_inputs
    from engine.making.onnx_export import export_bundle

    folder = make_bundle(tmp_path / architecture, architecture=architecture, size=64)
    bundle = export_bundle(folder, verify_images=2)
    figures = bundle.model_card["onnx_validation"]
    assert bundle.manifest["onnx"]["fp32"] == "model.onnx"
    assert min(figures["min_map_correlation"].values()) >= MAP_CORRELATION
    bundle = load_bundle(folder)
    x = heldout_inputs(bundle, 1, seed=321)[0]
    want, got = TorchBackend(bundle).explain(x), OnnxBackend(bundle).explain(x)
    _assert_close_at_scale(got.activations, want.activations, "activations")
    _assert_close_at_scale(got.gradients, want.gradients, "gradients")
    _assert_close_at_scale(got.logits, want.logits, "logits")


# -- vision transformers ---------------------------------------------------------------------------
# Tiny torchvision models (two blocks or one block per stage, 8-16 channels) stand behind the
# manifests of vit_b_16, swin_t and swin_v2_t: the same classes and layer names as the real ones,
# exported in seconds. (Measured on the real ones, random weights, 2 phantoms: vit_b_16 at
# 32 x 32 exports in 32 s, swin_t at 64 x 64 in 49 s, both verified with every map at r 1.0000.)

def _tiny_torchvision(architecture: str, *, weights, num_classes: int, **options):
    import torch
    from torchvision.models import SwinTransformer, VisionTransformer
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    assert weights is None
    torch.manual_seed(0)
    if architecture.startswith("vit_"):
        return VisionTransformer(image_size=options["image_size"], patch_size=16, num_layers=2, num_heads=2,
                                 hidden_dim=16, mlp_dim=32, num_classes=num_classes)
    v2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if "_v2_" in architecture else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4],
                           num_classes=num_classes, **v2)


TRANSFORMERS = {  # name: (input side, explained layer, its grid)
    "vit_b_16": (64, "encoder.layers.encoder_layer_1.ln_1", (4, 4)),  # the last block's first norm
    "swin_t": (64, None, (8, 8)),  # the default, "features": 64 px in patches of 4, merged once
    "swin_v2_t": (64, None, (8, 8)),
}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", TRANSFORMERS)
def test_vision_transformers_export_quantize_and_explain_on_every_engine(architecture, tmp_path, monkeypatch):
    """The explain graph lays tokens out on the grid as the PyTorch engine does (one rule,
    architectures.to_grid, traced into the graph): the ONNX engines give the same (K, h, w)
    activations and gradients, and every engine's maps agree."""
    pytest.importorskip("onnxruntime")
    torchvision = pytest.importorskip("torchvision")
    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.backends.onnx_backend import OnnxBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle
    from engine.making.export_verification import MAP_CORRELATION, heldout_inputs, map_correlation
    from engine.making.onnx_export import export_bundle
    from engine.making.quantization import quantize_bundle
    from engine.synthetic.phantoms import make_dataset
    from engine.making.training import phantom_image

    monkeypatch.setattr(torchvision.models, "get_model", _tiny_torchvision)
    size, layer, grid = TRANSFORMERS[architecture]
    extra = {"target_layer": layer} if layer else {}
    folder = make_bundle(tmp_path / architecture, architecture=architecture, size=size, **extra)
    bundle = export_bundle(folder, verify_images=2)
    assert min(bundle.model_card["onnx_validation"]["min_map_correlation"].values()) >= MAP_CORRELATION
    x = heldout_inputs(bundle, 1, seed=321)[0]
    want, got = TorchBackend(bundle).explain(x), OnnxBackend(bundle).explain(x)
    assert got.activations.shape == want.activations.shape == (want.activations.shape[0], *grid)
    _assert_close_at_scale(got.activations, want.activations, "activations")
    _assert_close_at_scale(got.gradients, want.gradients, "gradients")
    # A tiny model's file is mostly graph, not weights: the size limit is for real ones (a
    # random vit_b_16's int8 file is 26 % of its fp32 one, swin_t's 27 %).
    quantize_bundle(folder, calibration_images=16, validation_images=8, max_size_ratio=1.5)
    figures = load_bundle(folder).model_card["int8_validation"]
    assert min(figures["min_map_correlation_with_fp32"].values()) >= 0.95
    image = phantom_image(make_dataset(1, seed=11)[0][0])
    options = AnalysisOptions(methods=("gradcam", "gradcam++", "layercam"), mc_samples=4)
    results = {engine: analyze(image, load_model(folder, engine), options) for engine in ("torch", "onnx", "onnx-int8")}
    for engine, limit in (("onnx", MAP_CORRELATION), ("onnx-int8", 0.95)):
        for method, maps in results[engine].maps.items():
            assert maps.grid.shape == (3, *grid)
            for c in range(3):
                assert map_correlation(maps.grid[c], results["torch"].maps[method].grid[c]) >= limit, (engine, method, c)


@pytest.mark.slow
@pytest.mark.parametrize("branches", ["shared", "separate"])
def test_transformer_branches_of_a_multi_input_model_on_every_engine(branches, tmp_path, monkeypatch):
    """ViT branches (shared), or a ViT and a Swin branch (separate): each input's tokens go onto its
    own patch grid, the export verifies, and a case's maps agree between engines input by input."""
    pytest.importorskip("onnxruntime")
    torchvision = pytest.importorskip("torchvision")
    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.making.export_verification import MAP_CORRELATION, map_correlation
    from engine.making.onnx_export import export_bundle
    from engine.making.training import phantom_image
    from engine.synthetic.phantoms import make_dataset
    from tests.conftest import make_multi_input_bundle

    def twelve_layer_vit(architecture, **options):  # vit_b_16's default layer is its 12th block's
        if not architecture.startswith("vit_"):
            return _tiny_torchvision(architecture, **options)
        torch_module = pytest.importorskip("torch")
        torch_module.manual_seed(0)
        return torchvision.models.VisionTransformer(image_size=options["image_size"], patch_size=16, num_layers=12,
                                                    num_heads=2, hidden_dim=16, mlp_dim=32,
                                                    num_classes=options["num_classes"])

    monkeypatch.setattr(torchvision.models, "get_model", twelve_layer_vit)
    if branches == "shared":
        extra = {"architecture": "vit_b_16"}
    else:
        extra = {"architecture": "vit_b_16", "inputs": [
            {"name": "PA", "channels": 1, "size": [64, 64], "architecture": "vit_b_16"},
            {"name": "LAT", "channels": 1, "size": [64, 64], "architecture": "swin_t"}]}
    folder = make_multi_input_bundle(tmp_path / branches, branches=branches, **extra)
    export_bundle(folder, verify_images=2)
    case = {name: phantom_image(make_dataset(1, seed=seed)[0][0]) for name, seed in (("PA", 3), ("LAT", 4))}
    options = AnalysisOptions(methods=("gradcam",), mc_samples=4)
    want, got = (analyze(case, load_model(folder, e), options) for e in ("torch", "onnx"))
    grids = [(4, 4), (4, 4)] if branches == "shared" else [(4, 4), (8, 8)]
    for view_want, view_got, grid in zip(want.views, got.views, grids):
        assert view_want.maps["gradcam"].grid.shape[1:] == view_got.maps["gradcam"].grid.shape[1:] == grid
        for c in range(3):
            assert map_correlation(view_got.maps["gradcam"].grid[c], view_want.maps["gradcam"].grid[c]) >= MAP_CORRELATION
