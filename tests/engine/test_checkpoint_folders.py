"""A Hugging Face or timm checkpoint folder opens as it is on the PyTorch engine, with no socket
opened: tiny random-weight classifiers saved the way those libraries save them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.checkpoints import DEFAULT_HEAD_DROPOUT, load_checkpoint_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

CLASSES = ("normal", "nodule", "effusion")
ID2LABEL = dict(enumerate(CLASSES))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: the proof that nothing is downloaded."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was opened: {args!r}")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and the libraries are told so, as Lantern does


def _processor(folder: Path, **fields) -> None:
    processor = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], **fields}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))


def _convnext_v2(folder: Path, version: str = "ConvNextV2") -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = getattr(transformers, f"{version}Config")(num_channels=3, num_stages=2, hidden_sizes=[8, 16],
                                                       depths=[1, 1], num_labels=3, id2label=ID2LABEL, image_size=64)
    model = getattr(transformers, f"{version}ForImageClassification")(config)
    model.save_pretrained(folder, safe_serialization=True)
    _processor(folder, image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 64}, crop_pct=1.0)
    return folder


def _convnext(folder: Path) -> Path:
    return _convnext_v2(folder, "ConvNext")


def _resnet(folder: Path) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                                       id2label=ID2LABEL)
    transformers.ResNetForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    _processor(folder, image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 384})
    return folder


def _vit(folder: Path) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                    image_size=32, patch_size=8, num_labels=3, id2label=ID2LABEL)
    transformers.ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    _processor(folder, image_processor_type="ViTImageProcessor", size={"height": 32, "width": 32})
    return folder


def _timm_resnet(folder: Path, arch: str = "resnet18") -> Path:
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=False, num_classes=3)
    save_for_hf(model, str(folder), model_config={"label_names": list(CLASSES)}, safe_serialization=True,
                data_config={"input_size": (3, 64, 64), "crop_pct": 1.0})
    return folder


def _timm_convnext(folder: Path) -> Path:
    return _timm_resnet(folder, "convnext_atto")


# -- transformers: tiny configurations (one block per stage, a few channels), random weights --------

def _deit(folder: Path, version: str = "DeiTForImageClassification") -> Path:
    """Class and distillation tokens before 4 x 4 patches (32 px in patches of 8)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.DeiTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                     image_size=32, patch_size=8, num_labels=3, id2label=ID2LABEL)
    getattr(transformers, version)(config).save_pretrained(folder, safe_serialization=True)
    _processor(folder, image_processor_type="ViTImageProcessor", size={"height": 32, "width": 32})
    return folder


def _swin(folder: Path, version: str = "Swin") -> Path:
    """64 px in patches of 4 (16 x 16), merged once: 8 x 8 tokens at the final norm."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = getattr(transformers, f"{version}Config")(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1],
                                                       num_heads=[1, 2], window_size=4, num_labels=3,
                                                       id2label=ID2LABEL)
    getattr(transformers, f"{version}ForImageClassification")(config).save_pretrained(folder, safe_serialization=True)
    _processor(folder, image_processor_type="ViTImageProcessor", size={"height": 64, "width": 64})
    return folder


def _swinv2(folder: Path) -> Path:
    return _swin(folder, "Swinv2")


def _timm_model(folder: Path, arch: str, size: int, **args) -> Path:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3, **args)
    save_for_hf(model, str(folder), model_config={"label_names": list(CLASSES)}, safe_serialization=True,
                data_config={"input_size": (3, size, size), "crop_pct": 1.0})
    return folder


def _timm_vit(folder: Path) -> Path:
    """A class token and two register tokens before 4 x 4 patches."""
    return _timm_model(folder, "vit_tiny_patch16_224", 32, img_size=32, patch_size=8, embed_dim=16, depth=2,
                       num_heads=2, reg_tokens=2)


def _timm_deit(folder: Path) -> Path:
    return _timm_model(folder, "deit_tiny_patch16_224", 32, img_size=32, patch_size=8, embed_dim=16, depth=2,
                       num_heads=2)


def _timm_swin(folder: Path, arch: str = "swin_tiny_patch4_window7_224") -> Path:
    """(B, h, w, K) stages: 64 px in patches of 4, merged once (8 x 8)."""
    return _timm_model(folder, arch, 64, img_size=64, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4)


def _timm_swinv2(folder: Path) -> Path:
    return _timm_swin(folder, "swinv2_tiny_window8_256")


def _analyse(folder: Path):
    model = engine.load_model(folder, "torch")
    image = engine.load_image(engine.DEMO_STUDIES / "demo_nodule.png")
    return model, engine.analyze(image, model)


@pytest.mark.parametrize("make, grid, resize", [
    (_convnext_v2, (8, 8), "center_crop"),  # 64 px: the stem /4, the second stage /2
    (_convnext, (8, 8), "center_crop"),
    (_resnet, (48, 48), "stretch"),  # a 384 px input (ConvNeXt's processor warps from 384 up) at stride 8
    (_vit, (4, 4), "stretch"),  # 32 px in 8 px patches, the class token dropped
    (_timm_resnet, (2, 2), "center_crop"),  # 64 px at stride 32
    (_timm_convnext, (2, 2), "center_crop"),
    (_deit, (4, 4), "stretch"),  # the class and the distillation token dropped
    (_swin, (8, 8), "stretch"),  # (B, h*w, K) tokens of the final norm, on the once-merged grid
    (_swinv2, (8, 8), "stretch"),
    (_timm_vit, (4, 4), "center_crop"),  # the class and two register tokens dropped
    (_timm_deit, (4, 4), "center_crop"),
    (_timm_swin, (8, 8), "center_crop"),  # (B, h, w, K)
    (_timm_swinv2, (8, 8), "center_crop"),
], ids=["hf-convnextv2", "hf-convnext", "hf-resnet", "hf-vit", "timm-resnet18", "timm-convnext_atto", "hf-deit",
        "hf-swin", "hf-swinv2", "timm-vit", "timm-deit", "timm-swin", "timm-swinv2"])
def test_checkpoint_folder_opens_and_explains_offline(tmp_path, no_network, make, grid, resize):
    folder = make(tmp_path / "checkpoint")
    model, analysis = _analyse(folder)
    assert analysis.classes == CLASSES
    assert model.bundle.input.resize == resize and model.bundle.head.dropout == DEFAULT_HEAD_DROPOUT
    assert str(DEFAULT_HEAD_DROPOUT) in model.bundle.model_card["summary"]
    assert np.isclose(analysis.probabilities.sum(), 1.0)
    for class_maps in analysis.maps.values():
        assert class_maps.grid.shape == (3, *grid) and np.all(np.isfinite(class_maps.grid))
        assert np.all(np.isfinite(class_maps.source_map(1)))
    assert analysis.uncertainty is not None and analysis.uncertainty_note == ""


def test_preprocessing_maps_exactly(tmp_path):
    folder = _convnext_v2(tmp_path / "c")
    _processor(folder, image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 64}, crop_pct=1.0,
               do_rescale=False, image_mean=[127.5], image_std=[63.75])
    spec = load_checkpoint_folder(folder).input
    # Unscaled pixels normalised by 127.5 / 63.75 are 0..1 pixels normalised by 0.5 / 0.25.
    assert spec.size == (64, 64) and spec.mean == (0.5,) * 3 and spec.std == (0.25,) * 3
    assert spec.intensity == "window"  # 8-bit and colour images: exactly the division by 255


def _refusal(tmp_path, make, change) -> str:
    folder = make(tmp_path / "checkpoint")
    change(folder)
    with pytest.raises(engine.LanternError) as caught:
        engine.load_model(folder, "torch")
    return str(caught.value)


def _edit_config(**fields):
    def change(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return change


def _edit_pretrained_cfg(**fields):
    def change(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        config["pretrained_cfg"].update(fields)
        (folder / "config.json").write_text(json.dumps(config))
    return change


@pytest.mark.parametrize("make, change, words", [
    (_convnext_v2, lambda f: (f / "config.json").write_text("{not json"), "config.json could not be read"),
    (_convnext_v2, _edit_config(architectures=["BeitForImageClassification"]), "unknown architecture Beit"),
    (_timm_resnet, _edit_config(architecture="beit_base_patch16_224"), "unknown architecture 'beit_base"),
    (_convnext_v2, lambda f: (f / "model.safetensors").unlink(), "'model.safetensors' is missing"),
    (_timm_resnet, lambda f: (f / "model.safetensors").unlink(), "'model.safetensors' is missing"),
    (_convnext_v2, _edit_config(id2label={"0": "a", "1": "b"}), "lists 2 classes; the weights' classifier has 3"),
    (_timm_resnet, _edit_config(label_names=["a", "b"], num_classes=2), "lists 2 classes; the weights' classifier"),
    (_convnext_v2, _edit_config(depths=[2, 1]), "the weights do not fit the architecture in config.json"),
    (_convnext_v2, lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json is missing"),
    (_convnext_v2, lambda f: _processor(f, image_processor_type="ConvNextImageProcessor",
                                        size={"shortest_edge": 64}, crop_pct=0.4), "keeping 0.4 of the image"),
    (_vit, lambda f: _processor(f, size={"height": 48, "width": 48}), "'image_size' 32 x 32"),
    (lambda f: _deit(f, "DeiTForImageClassificationWithTeacher"), lambda f: None,
     "does not open a DeiTForImageClassificationWithTeacher: it has two classifiers"),
    (lambda f: _timm_model(f, "deit_tiny_distilled_patch16_224", 32, img_size=32, patch_size=8, embed_dim=16, depth=1,
                           num_heads=2), lambda f: None, "2 classifiers (head, head_dist) whose logits it averages"),
    (_timm_vit, _edit_pretrained_cfg(input_size=[3, 64, 64]), "differs from the model's img_size 32 x 32"),
], ids=["broken-json", "unknown-hf", "unknown-timm", "no-weights-hf", "no-weights-timm", "labels-hf", "labels-timm",
        "weights-do-not-fit", "no-processor", "crop-pct", "vit-size", "deit-with-teacher", "timm-distilled-deit",
        "timm-vit-size"])
def test_refusals_say_what_is_wrong(tmp_path, no_network, make, change, words):
    assert words in _refusal(tmp_path, make, change)


def test_the_usual_crop_pct_opens_with_that_crop(tmp_path, no_network):
    """The libraries' default centre crops (ConvNeXt's crop_pct 0.875, ResNet's 224 of 256, timm's
    0.95) open, and the model input keeps that share of the image's shorter side."""
    hf = _convnext_v2(tmp_path / "convnext")
    _processor(hf, image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 64}, crop_pct=0.875)
    resnet = _resnet(tmp_path / "resnet")
    _processor(resnet, size={"shortest_edge": 73}, do_center_crop=True, crop_size={"height": 64, "width": 64})
    timm_folder = _timm_resnet(tmp_path / "timm")
    config = json.loads((timm_folder / "config.json").read_text())
    config["pretrained_cfg"]["crop_pct"] = 0.95
    (timm_folder / "config.json").write_text(json.dumps(config))
    for folder, share in ((hf, 0.875), (resnet, 64 / 73), (timm_folder, 0.95)):
        model, analysis = _analyse(folder)
        spec = model.bundle.input
        assert (spec.resize, spec.size) == ("center_crop", (64, 64)) and spec.crop == pytest.approx(share)
        # The input covers the middle `share` of the source's shorter side (demo_nodule.png is square).
        geometry = analysis.model_input.geometry
        covered = geometry.input_shape[1] / geometry.to_input[0, 0]  # source pixels across the input
        assert covered == pytest.approx(share * min(geometry.source_shape), rel=0.02)


@pytest.mark.parametrize("make, layer", [
    (_vit, r"vit\.(encoder\.layer|layers)\.1\.layernorm_before"),
    (_deit, r"deit\.(encoder\.layer|layers)\.1\.layernorm_before"),
    (_swin, r"swin\.layernorm"),
    (_swinv2, r"swinv2\.layernorm"),
    (_timm_vit, r"blocks\.1\.norm1"),
    (_timm_swin, r"layers\.1"),
], ids=["hf-vit", "hf-deit", "hf-swin", "hf-swinv2", "timm-vit", "timm-swin"])
def test_transformers_explain_their_default_layer(tmp_path, make, layer):
    """A ViT-like's last block's first norm (of its output only the class token reaches the head);
    a Swin's last stage, whose every token is pooled into the head."""
    import re

    model, analysis = _analyse(make(tmp_path / "checkpoint"))
    assert re.fullmatch(layer, model.backend.target_names[0])
    # Gradients reached the explained tokens: some method finds evidence for the predicted class.
    assert max(maps.grid[analysis.predicted].max() for maps in analysis.maps.values()) > 0


def test_a_centre_cropped_transformer_maps_only_what_it_saw(tmp_path, no_network):
    """DeiT behind a resize to 40 and a 32 px centre crop: the map covers the middle 80 % of the
    image and is zero on the strips the model never saw."""
    folder = _deit(tmp_path / "deit")
    _processor(folder, image_processor_type="ViTImageProcessor", size={"shortest_edge": 40}, do_center_crop=True,
               crop_size={"height": 32, "width": 32})
    model, analysis = _analyse(folder)
    assert (model.bundle.input.resize, model.bundle.input.crop) == ("center_crop", pytest.approx(0.8))
    maps = next(iter(analysis.maps.values()))
    shown = maps.source_map(analysis.predicted)
    height, width = shown.shape  # demo_nodule.png is square: 10 % of each side is cropped off
    assert not shown[:, : int(0.09 * width)].any() and not shown[:, int(0.91 * width):].any()
    assert not shown[: int(0.09 * height)].any() and not shown[int(0.91 * height):].any()
    assert shown[int(0.12 * height): int(0.88 * height), int(0.12 * width): int(0.88 * width)].max() > 0
