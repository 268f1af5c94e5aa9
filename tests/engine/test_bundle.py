"""The bundle loader explains what is wrong and refuses anything unsafe."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.bundle import load_bundle
from engine.errors import ModelBundleError


def edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.mark.parametrize("changes, words", [
    ({"architecture": "vgg99"}, "unknown architecture 'vgg99'"),
    ({"weights": "../outside.safetensors"}, "outside the bundle"),
    ({"weights": "/etc/passwd"}, "outside the bundle"),
    ({"weights": "model.pt"}, "never loaded"),
    ({"onnx": {"fp32": "../../x.onnx"}}, "outside the bundle"),
    ({"classes": ["only-one"]}, "at least two"),
    ({"classes": ["a", "a"]}, "distinct"),
    ({"format_version": 7}, "format_version"),
    ({"name": None}, "no 'name'"),
    ({"input": {"channels": 2, "size": [64, 64]}}, "channels must be 1 or 3"),
    ({"input": {"channels": 1, "size": [64, 64], "resize": "squash"}}, "unknown resize rule"),
    ({"head": {"dropout": 1.5}}, "dropout"),
])
def test_manifest_problems_are_named(bundle_copy, changes, words):
    edit_manifest(bundle_copy, **changes)
    with pytest.raises(ModelBundleError, match=words.replace("(", r"\(")) as info:
        load_bundle(bundle_copy)
    assert info.value.path == bundle_copy


def test_missing_and_broken_files(tmp_path, bundle_copy):
    with pytest.raises(ModelBundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match="could not be read"):
        load_bundle(bundle_copy)


def test_weight_shape_and_class_count_mismatch_are_explained(bundle_copy):
    pytest.importorskip("torch")
    from engine.analysis import load_model

    edit_manifest(bundle_copy, classes=["a", "b", "c", "d"])
    with pytest.raises(ModelBundleError, match=r"4 classes; the weights have 3"):
        load_model(bundle_copy, "torch")


def test_wrong_architecture_for_the_weights(bundle_copy):
    pytest.importorskip("torch")
    from engine.analysis import load_model

    edit_manifest(bundle_copy, architecture="densenet121")
    with pytest.raises(ModelBundleError, match="do not fit a densenet121"):
        load_model(bundle_copy, "torch")


def test_pickle_disguised_as_safetensors_is_refused_without_running_it(bundle_copy, tmp_path):
    torch = pytest.importorskip("torch")
    from engine.analysis import load_model

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, bundle_copy / "model.safetensors")
    with pytest.raises(ModelBundleError, match="safetensors"):
        load_model(bundle_copy, "torch")
    assert not marker.exists()
