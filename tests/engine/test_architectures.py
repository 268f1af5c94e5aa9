"""Every torchvision family Lantern accepts: each name builds with its named layers, and one small
member per family explains and samples MC dropout end to end (random weights, 64 x 64 input).
Vision transformers explain their patch tokens laid out on the patch grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.analysis import AnalysisOptions, LoadedModel, analyze, load_model  # noqa: E402
from engine.backends.architectures import ARCHITECTURES, LinearWithDropout, build_model  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.bundle import ARCHITECTURES as BUNDLE_ARCHITECTURES  # noqa: E402
from engine.bundle import parse_manifest  # noqa: E402
from engine.images import ImageMetadata, SourceImage, Window  # noqa: E402
from tests.conftest import make_bundle  # noqa: E402

OPTIONS = AnalysisOptions(methods=("gradcam", "gradcam++", "layercam"), mc_samples=8)
# One small member per family (the transformers have their own tests below).
SMALL_MEMBERS = ("resnet34", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "efficientnet_b0",
                 "efficientnet_v2_s", "convnext_tiny", "mobilenet_v2", "mobilenet_v3_small",
                 "regnet_x_400mf", "regnet_y_400mf")


def manifest(architecture: str, channels: int = 1, size: int = 64, **extra) -> dict:
    return {"format_version": 1, "name": "t", "architecture": architecture, "classes": ["a", "b", "c"],
            "input": {"channels": channels, "size": [size, size]}, "head": {"dropout": 0.3},
            "weights": "model.safetensors", **extra}


def blob_image(centre=(30, 60), size=(80, 96), seed=0) -> SourceImage:
    """A bright blob on a noisy background, a little taller than wide (the letterbox pads it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    blob = 800 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 60)
    pixels = (1000 + blob + rng.normal(0, 20, size)).astype(np.float32)
    return SourceImage(Path("blob.png"), pixels, Window(1400, 1200), ImageMetadata())


def assert_explains(model: LoadedModel, image: SourceImage, grid: tuple[int, int]):
    result = analyze(image, model, OPTIONS)
    predicted = result.predicted
    for name, maps in result.maps.items():
        assert maps.grid.shape == (3, *grid), name
        assert np.isfinite(maps.grid).all(), name
        assert maps.source_map(predicted).shape == image.pixels.shape[:2], name
    # With random weights a rule can find no positive evidence for a class (Swin's Layer-CAM);
    # all three finding none would mean no gradient reached the explained layer.
    assert max(maps.grid[predicted].max() for maps in result.maps.values()) > 0
    assert result.uncertainty is not None and result.uncertainty.samples == OPTIONS.mc_samples
    # Dropout must be on while sampling. Checked on features of unit scale: at random
    # initialisation some nets' pooled features are ~1e-8 (MobileNet v2), too small to move a
    # probability. (Random, not constant: ConvNeXt's head normalises a constant to zero.)
    _, head_input = model.backend.forward_features(result.model_input.tensor)
    features = np.random.default_rng(0).normal(size=head_input.shape[1:]).astype(np.float32)
    samples = model.backend.mc_logits(features, 4, seed=0)
    assert samples.std(axis=0).max() > 1e-3, "dropout must be active in MC"
    return result


# -- every name: builds, with the layers its rule names ------------------------------------------

@pytest.fixture
def regnet_widths_on_cpu(monkeypatch):
    """RegNet computes its block widths with torch tensors and reads them back (``tolist``), which
    the meta device cannot; those few numbers are computed on the CPU, the model on meta."""
    from torchvision.models import regnet

    original = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original(cls, *args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))


def test_every_accepted_name_has_a_family_rule():
    assert set(ARCHITECTURES) == set(BUNDLE_ARCHITECTURES)


@pytest.mark.parametrize("architecture", BUNDLE_ARCHITECTURES)
def test_every_architecture_builds_with_its_named_layers(architecture, regnet_widths_on_cpu, tmp_path):
    """On the meta device (no memory, no initialisation): a 1-channel model with the dropout head."""
    info = ARCHITECTURES[architecture]
    with torch.device("meta"):  # 224: a multiple of every ViT's patch
        model = build_model(parse_manifest(manifest(architecture, size=224), tmp_path))
    assert model.get_submodule(info.first_conv).in_channels == 1
    head = model.get_submodule(info.final_linear)
    assert isinstance(head, LinearWithDropout) and head.out_features == 3 and head.dropout.p == 0.3
    assert info.final_linear + ".weight" in model.state_dict()  # keys stay torchvision's
    model.get_submodule(info.target_layer)
    assert head in list(model.get_submodule(info.head).modules())


# -- one small member per family, end to end -----------------------------------------------------

@pytest.mark.parametrize("architecture", SMALL_MEMBERS)
def test_a_small_member_of_each_family_explains_and_samples(architecture, tmp_path):
    channels = 3 if architecture == "efficientnet_b0" else 1
    model = load_model(make_bundle(tmp_path / architecture, architecture=architecture, channels=channels), "torch")
    assert_explains(model, blob_image(), (2, 2))  # 64 px at a /32 network


# -- vision transformers: tokens on the patch grid -----------------------------------------------

def tiny_vit_model(tmp_path, size=32):
    """A 2-layer ViT (patch 8: a 4 x 4 grid) behind a vit_b_16 manifest naming its layers."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3)
    net.conv_proj = torch.nn.Conv2d(1, 16, 8, 8)
    net.heads.head = LinearWithDropout(16, 3, 0.3)
    bundle = parse_manifest(manifest("vit_b_16", size=size, target_layer="encoder.layers.encoder_layer_1.ln_1"),
                            tmp_path)
    return LoadedModel(bundle, TorchBackend(bundle, net))


def test_tokens_are_laid_out_row_by_row_without_the_class_token():
    from engine.backends.architectures import CHANNELS_LAST, CLASS_TOKEN, to_grid

    tokens = torch.arange(1 + 6, dtype=torch.float32)[None, :, None].expand(1, 7, 5)  # (B, 1 + 2*3, K)
    gradients = tokens[None].expand(4, 1, 7, 5)  # (C, B, 1 + 2*3, K)
    activation, grads = to_grid(tokens, gradients, CLASS_TOKEN, (2, 3))
    assert activation.shape == (1, 5, 2, 3) and grads.shape == (4, 1, 5, 2, 3)
    np.testing.assert_array_equal(activation[0, 0].numpy(), [[1, 2, 3], [4, 5, 6]])  # token 0: the class
    np.testing.assert_array_equal(grads[3, 0, 4].numpy(), [[1, 2, 3], [4, 5, 6]])
    swin = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)  # (B, h, w, K)
    activation, grads = to_grid(swin, swin[None], CHANNELS_LAST, (2, 3))
    assert activation.shape == (1, 5, 2, 3) and grads.shape == (1, 1, 5, 2, 3)
    assert activation[0, 4, 1, 2] == swin[0, 1, 2, 4]


def test_distillation_and_register_tokens_are_dropped_and_merged_patches_find_their_grid():
    from engine.backends.architectures import CLASS_TOKEN, PATCH_TOKENS, merged_grid, to_grid
    from engine.errors import ModelBundleError

    # DeiT: class and distillation token, then 2 x 3 patches.
    tokens = torch.arange(2 + 6, dtype=torch.float32)[None, :, None].expand(1, 8, 4)
    activation, _ = to_grid(tokens, tokens[None], CLASS_TOKEN, (2, 3))
    np.testing.assert_array_equal(activation[0, 0].numpy(), [[2, 3, 4], [5, 6, 7]])
    # Hugging Face Swin: (B, h*w, K) tokens, no class token, after patch merging: a 7 x 10 patch
    # grid merged twice is 2 x 3 (each merge pads an odd side).
    assert merged_grid((7, 10), 6) == (2, 3) and merged_grid((7, 10), 70) == (7, 10)
    swin = torch.arange(6, dtype=torch.float32)[None, :, None].expand(1, 6, 4)
    activation, grads = to_grid(swin, swin[None].expand(3, 1, 6, 4), PATCH_TOKENS, (7, 10))
    assert activation.shape == (1, 4, 2, 3) and grads.shape == (3, 1, 4, 2, 3)
    np.testing.assert_array_equal(activation[0, 1].numpy(), [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ModelBundleError, match="5 tokens do not lie on the 7 x 10 patch grid"):
        merged_grid((7, 10), 5)


def transformer(name: str, tmp_path) -> tuple[LoadedModel, tuple[int, int]]:
    if name == "tiny_vit":
        return tiny_vit_model(tmp_path), (4, 4)  # 32 px in patches of 8
    return load_model(make_bundle(tmp_path / name, architecture=name), "torch"), (2, 2)  # 64 px at /32


@pytest.mark.parametrize("name", ("tiny_vit", "swin_t", "swin_v2_t"))
def test_transformer_maps_lie_on_the_patch_grid_and_follow_the_image(name, tmp_path):
    model, grid = transformer(name, tmp_path)
    first = assert_explains(model, blob_image(), grid)
    moved = analyze(blob_image(centre=(60, 20), seed=1), model, OPTIONS)
    assert not np.allclose(first.maps["gradcam"].grid, moved.maps["gradcam"].grid)
    maps = first.maps["gradcam"]
    H, W = maps.shape
    row, col = maps.peak(first.predicted)
    assert 0 <= row < H and 0 <= col < W


def test_vit_b_16_explains_its_last_blocks_patch_tokens(tmp_path):
    """The full-size ViT-B/16 at 64 x 64 (a 4 x 4 patch grid), through the default layer."""
    model = load_model(make_bundle(tmp_path / "vit", architecture="vit_b_16"), "torch")
    assert model.backend.target is model.backend.model.get_submodule("encoder.layers.encoder_layer_11.ln_1")
    assert_explains(model, blob_image(), (4, 4))


def test_vit_refuses_an_input_it_cannot_cut_into_patches(tmp_path):
    from engine.errors import ModelBundleError

    with pytest.raises(ModelBundleError, match="multiple of 16"):
        build_model(parse_manifest(manifest("vit_b_16", size=40), tmp_path))
