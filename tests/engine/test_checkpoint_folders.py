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
], ids=["hf-convnextv2", "hf-convnext", "hf-resnet", "hf-vit", "timm-resnet18", "timm-convnext_atto"])
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


@pytest.mark.parametrize("make, change, words", [
    (_convnext_v2, lambda f: (f / "config.json").write_text("{not json"), "config.json could not be read"),
    (_convnext_v2, _edit_config(architectures=["BeitForImageClassification"]), "unknown architecture Beit"),
    (_timm_resnet, _edit_config(architecture="vit_tiny_patch16_224"), "unknown architecture 'vit_tiny"),
    (_convnext_v2, lambda f: (f / "model.safetensors").unlink(), "'model.safetensors' is missing"),
    (_timm_resnet, lambda f: (f / "model.safetensors").unlink(), "'model.safetensors' is missing"),
    (_convnext_v2, _edit_config(id2label={"0": "a", "1": "b"}), "lists 2 classes; the weights' classifier has 3"),
    (_timm_resnet, _edit_config(label_names=["a", "b"], num_classes=2), "lists 2 classes; the weights' classifier"),
    (_convnext_v2, _edit_config(depths=[2, 1]), "the weights do not fit the architecture in config.json"),
    (_convnext_v2, lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json is missing"),
    (_convnext_v2, lambda f: _processor(f, image_processor_type="ConvNextImageProcessor",
                                        size={"shortest_edge": 64}, crop_pct=0.4), "keeping 0.4 of the image"),
    (_vit, lambda f: _processor(f, size={"height": 48, "width": 48}), "'image_size' 32 x 32"),
], ids=["broken-json", "unknown-hf", "unknown-timm", "no-weights-hf", "no-weights-timm", "labels-hf", "labels-timm",
        "weights-do-not-fit", "no-processor", "crop-pct", "vit-size"])
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
