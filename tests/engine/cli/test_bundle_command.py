"""``lantern-engine bundle``: a user's own torchvision state dict becomes a working bundle."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402

from engine.analysis import AnalysisOptions, analyze, load_model  # noqa: E402
from engine.cli.main import main  # noqa: E402
from engine.images import ImageMetadata, SourceImage, Window  # noqa: E402


def test_plain_torchvision_state_dict_becomes_a_bundle(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_large(num_classes=2).eval()
    weights = tmp_path / "trained.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)
    out = tmp_path / "bundle"
    code = main(["bundle", "--arch", "mobilenet_v3_large", "--weights", str(weights), "--classes", "clear,finding",
                 "--size", "96", "--out", str(out), "--dropout", "0.25"])
    assert code == 0
    model = load_model(out, "torch")
    image = SourceImage(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8),
                        Window(127.5, 255), ImageMetadata())
    result = analyze(image, model, AnalysisOptions(mc_samples=5))
    # The bundle reproduces the user's own network, not a re-initialised one.
    x = torch.from_numpy(result.model_input.tensor)
    with torch.inference_mode():
        np.testing.assert_allclose(result.logits, net(x)[0].numpy(), rtol=1e-4, atol=1e-5)
    assert result.classes == ("clear", "finding")
    assert result.uncertainty is not None and result.uncertainty.samples == 5


def test_checkpoint_that_needs_code_is_refused_and_nothing_is_left(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": Payload()}, evil)
    out = tmp_path / "bundle"
    code = main(["bundle", "--arch", "resnet18", "--weights", str(evil), "--classes", "a,b", "--out", str(out)])
    assert code == 2
    assert not marker.exists()
    assert "evil.pt" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_weights_of_another_architecture_leave_no_bundle_behind(tmp_path):
    net = torchvision.models.resnet18(num_classes=3)
    weights = tmp_path / "r18.pt"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "bundle"
    code = main(["bundle", "--arch", "resnet50", "--weights", str(weights), "--classes", "a,b,c", "--out", str(out)])
    assert code == 2
    assert not (out / "manifest.json").exists() and not (out / "model.safetensors").exists()


def test_bundle_needs_a_state_dict_or_a_checkpoint_folder_and_says_which_options_do_not_apply(tmp_path, capsys):
    """``bundle --from DIR`` takes architecture, classes, weights and input from the checkpoint;
    the torchvision options are refused with it, not silently ignored (the conversion itself:
    tests/engine/making/test_checkpoint_bundles.py)."""
    assert main(["bundle", "--out", str(tmp_path / "b")]) == 2
    assert "needs --arch, --weights and --classes" in capsys.readouterr().err
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["bundle", "--from", str(folder), "--out", str(tmp_path / "b"), "--arch", "resnet18",
                 "--size", "64"]) == 2
    assert "leave out --arch, --size" in capsys.readouterr().err
    assert main(["bundle", "--from", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "needs a Hugging Face or timm checkpoint folder" in capsys.readouterr().err
    assert main(["bundle", "--from", str(folder), "--out", str(tmp_path / "b")]) == 2
    assert "config.json names no 'architectures'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
