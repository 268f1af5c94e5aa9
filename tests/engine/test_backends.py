"""Every engine answers the same calls the same way: forward_features is the batched half of
explain (logits and head inputs, no maps)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import load_image, load_model
from engine.backends import available_engines
from engine.bundle import load_bundle
from engine.preprocess import prepare_input


def inputs(bundle, studies) -> np.ndarray:
    names = ("demo_nodule.dcm", "demo_effusion.dcm", "demo_normal.dcm")
    return np.concatenate([prepare_input(load_image(studies / n), bundle.input).tensor for n in names])


@pytest.mark.parametrize("engine", ["torch", "onnx-int8"])
def test_forward_features_agree_with_forward_and_explain(demo_bundle, demo_studies, engine):
    bundle = load_bundle(demo_bundle)
    if engine not in available_engines(bundle):
        pytest.skip(f"{engine} is not available here")
    model = load_model(bundle, engine)
    batch = inputs(bundle, demo_studies)
    logits, head_inputs = model.backend.forward_features(batch)
    assert logits.shape == (3, len(bundle.classes))
    np.testing.assert_allclose(logits, model.backend.forward(batch), rtol=1e-4, atol=1e-4)
    for i in range(3):
        single = model.backend.explain(batch[i : i + 1])
        np.testing.assert_allclose(head_inputs[i], single.head_input, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(logits[i], single.logits, rtol=1e-3, atol=1e-3)
    # Three different studies: three different predictions, so the batch was not one image repeated.
    assert len({int(np.argmax(row)) for row in logits}) == 3
