"""CAM methods against an independent reference: the published formulas computed directly with
autograd, one full backward per class, on a small model built here."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from engine.analysis import AnalysisOptions, analyze, load_model  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.bundle import parse_manifest  # noqa: E402
from engine.images import ImageMetadata, SourceImage, Window  # noqa: E402
from engine.cam import METHODS  # noqa: E402


class SmallNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())  # explained layer
        self.tail = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.Tanh())  # non-linear tail
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Dropout(0.4), nn.Linear(16, classes))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.tail(self.block(self.stem(x)))), 1))


def small_bundle(tmp_path):
    manifest = {"format_version": 1, "name": "small", "architecture": "resnet18",
                "classes": ["a", "b", "c"], "input": {"channels": 1, "size": [32, 32]},
                "target_layer": "block", "head": {"module": "fc", "dropout": 0.4},
                "weights": "unused.safetensors"}
    return parse_manifest(manifest, tmp_path)


def reference_maps(model: SmallNet, x: torch.Tensor, method: str) -> np.ndarray:
    """Published formulas, straight from autograd, one backward per class."""
    model.eval()
    maps = []
    for c in range(3):
        a = model.block(model.stem(x)).detach().requires_grad_(True)
        logit = model.fc(torch.flatten(model.pool(model.tail(a)), 1))[0, c]
        (g,) = torch.autograd.grad(logit, a)
        a, g = a[0].detach(), g[0]
        if method == "gradcam":
            cam = (g.mean(dim=(1, 2))[:, None, None] * a).sum(0)
        elif method == "gradcam++":
            denominator = 2 * g**2 + a.sum(dim=(1, 2))[:, None, None] * g**3
            alpha = torch.where(denominator != 0, g**2 / denominator, torch.zeros_like(g))
            cam = ((alpha * torch.relu(g)).sum(dim=(1, 2))[:, None, None] * a).sum(0)
        else:  # layercam
            cam = (torch.relu(g) * a).sum(0)
        maps.append(torch.relu(cam).numpy())
    return np.stack(maps)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_class_map_matches_the_published_formula(tmp_path, method):
    torch.manual_seed(1)
    model = SmallNet()
    x = torch.randn(1, 1, 32, 32)
    backend = TorchBackend(small_bundle(tmp_path), model)
    outputs = backend.explain(x.numpy())
    ours = METHODS[method].raw_maps(outputs.activations, outputs.gradients)
    expected = reference_maps(model, x, method)
    assert ours.shape == (3, 16, 16)
    assert expected.max() > 0
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_logits_of_the_explaining_pass_equal_the_plain_forward(tmp_path):
    torch.manual_seed(2)
    model = SmallNet()
    x = torch.randn(1, 1, 32, 32).numpy()
    backend = TorchBackend(small_bundle(tmp_path), model)
    np.testing.assert_allclose(backend.explain(x).logits, backend.forward(x)[0], rtol=1e-5, atol=1e-6)


def test_explaining_leaves_no_hooks_and_keeps_dropout_usable(tmp_path):
    torch.manual_seed(3)
    model = SmallNet()
    backend = TorchBackend(small_bundle(tmp_path), model)
    x = torch.randn(1, 1, 32, 32).numpy()
    outputs = backend.explain(x)
    first = backend.mc_logits(outputs.head_input, 10, seed=5)
    backend.explain(x)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any(m.training for m in model.modules()), "explaining must leave the model in eval mode"
    again = backend.mc_logits(outputs.head_input, 10, seed=5)
    np.testing.assert_array_equal(first, again)
    assert first.std(axis=0).max() > 0, "MC samples must differ: dropout has to be active during sampling"


def test_maps_change_when_the_weights_are_randomised(tiny_bundle):
    """Adebayo et al.'s sanity check: a map that survives randomising the model explains nothing."""
    model = load_model(tiny_bundle, "torch")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    pixels = (1000 + 800 * np.exp(-((yy - 30) ** 2 + (xx - 60) ** 2) / 60) + rng.normal(0, 20, (96, 96))).astype(np.float32)
    image = SourceImage(tmp_name := __import__("pathlib").Path("blob.png"), pixels, Window(1400, 1200), ImageMetadata())
    before = analyze(image, model, AnalysisOptions(mc_samples=0)).maps["gradcam"].absolute
    torch.manual_seed(99)
    for name in ("layer4", "fc"):
        for p in model.backend.model.get_submodule(name).parameters():
            p.copy_(torch.randn_like(p) * p.std())
    after = analyze(image, model, AnalysisOptions(mc_samples=0)).maps["gradcam"].absolute
    assert tmp_name.name == "blob.png"
    for c in range(3):
        a, b = before[c].ravel(), after[c].ravel()
        if a.std() == 0 or b.std() == 0:
            continue
        assert np.corrcoef(a, b)[0, 1] < 0.9


def test_all_class_gradients_come_from_one_batched_backward(tmp_path, monkeypatch):
    calls = []
    original = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    TorchBackend(small_bundle(tmp_path), SmallNet()).explain(np.zeros((1, 1, 32, 32), np.float32))
    assert calls == [True]


def test_densenet_with_an_in_place_relu_after_the_explained_layer(tmp_path):
    from tests.conftest import make_bundle

    bundle = make_bundle(tmp_path / "densenet", architecture="densenet121", size=64)
    backend = load_model(bundle, "torch").backend
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    outputs = backend.explain(x)
    assert outputs.gradients.shape[0] == 3 and np.abs(outputs.gradients).max() > 0
    np.testing.assert_allclose(outputs.logits, backend.forward(x)[0], rtol=1e-4, atol=1e-5)
