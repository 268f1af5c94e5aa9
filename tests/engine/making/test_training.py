"""The demo model's training command, run tiny: it must write a bundle that loads and analyses,
with float16 weights and a model card that says how it was trained."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_demo_writes_a_loadable_bundle(tmp_path, precision):
    from safetensors.numpy import load_file

    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.synthetic.phantoms import make_dataset
    from engine.making.training import phantom_image, train_demo

    lines = []
    metrics = train_demo(tmp_path, epochs=1, per_epoch=64, batch=32, precision=precision,
                         heldout=12, log=lines.append)
    expected = "bfloat16 autocast" if precision == "bf16" else "float32"
    assert lines[0].startswith(f"training in {expected}")
    assert metrics["training"]["precision"] == expected and metrics["training"]["phantoms_seen"] == 64
    assert metrics["heldout_phantoms"] == 12 and 0.0 <= metrics["accuracy"] <= 1.0

    card = json.loads((tmp_path / "manifest.json").read_text())["model_card"]
    assert card["metrics"]["training"]["precision"] == expected
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert {w.dtype for w in weights.values() if w.dtype.kind == "f"} == {np.dtype(np.float16)}

    model = load_model(tmp_path, engine="torch")
    image, _mask, _label = (a[0] for a in make_dataset(1, seed=5))
    result = analyze(phantom_image(image), model, AnalysisOptions(methods=("gradcam",), mc_samples=4))
    assert np.isclose(result.probabilities.sum(), 1.0, atol=1e-5)
    assert result.maps["gradcam"].source_map(0).shape == image.shape
