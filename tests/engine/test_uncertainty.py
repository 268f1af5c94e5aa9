"""MC dropout: cached-feature sampling equals naive full passes; the summary's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from engine.uncertainty import UncertaintySummary, entropy, softmax


def test_summary_of_identical_samples_has_no_model_uncertainty():
    logits = np.tile([[4.0, 0.0, 0.0]], (10, 1))
    s = UncertaintySummary.from_logit_samples(logits, threshold=0.85)
    p = softmax(np.array([4.0, 0.0, 0.0]))
    assert s.mutual_information == pytest.approx(0.0, abs=1e-9)
    assert s.predictive_entropy == pytest.approx(float(entropy(p)))
    assert s.confidence == pytest.approx(1 - entropy(p) / np.log(3))
    np.testing.assert_allclose(s.std_probabilities, 0, atol=1e-7)


def test_disagreeing_samples_raise_mutual_information_and_flag():
    # Each sample is confident, but they disagree: epistemic uncertainty.
    logits = np.array([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0]] * 4)
    s = UncertaintySummary.from_logit_samples(logits, threshold=0.85)
    assert s.predictive_entropy == pytest.approx(np.log(3), rel=1e-6)
    assert s.mutual_information > 0.9 * np.log(3)
    assert s.confidence < 0.01 and s.flagged
    assert s.std_probabilities.min() > 0.4


def test_flag_follows_threshold():
    logits = np.array([[3.0, 0.0], [2.5, 0.2]])
    s = UncertaintySummary.from_logit_samples(logits, threshold=0.0)
    assert not s.flagged
    s = UncertaintySummary.from_logit_samples(logits, threshold=0.99)
    assert s.flagged


def test_cached_feature_mc_equals_naive_full_passes(tiny_bundle):
    torch = pytest.importorskip("torch")
    from engine.analysis import load_model
    from engine.backends.torch_backend import dropout_active

    model = load_model(tiny_bundle, "torch")
    backend = model.backend
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    outputs = backend.explain(x)
    cached = backend.mc_logits(outputs.head_input, 20, seed=11)
    # Naive: 20 full passes of the whole network, same dropout masks (same seed, same draws).
    with torch.random.fork_rng(devices=[]), torch.inference_mode(), dropout_active(backend.head):
        torch.manual_seed(11)
        naive = backend.model(torch.from_numpy(np.repeat(x, 20, axis=0))).numpy()
    np.testing.assert_allclose(cached, naive, rtol=1e-4, atol=1e-5)
    assert cached.std(axis=0).max() > 1e-4


def test_model_without_dropout_reports_unavailable(tmp_path):
    pytest.importorskip("torch")
    from tests.conftest import make_bundle
    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.images import ImageMetadata, SourceImage, Window

    bundle = make_bundle(tmp_path / "nodrop", dropout=0.0)
    image = SourceImage(tmp_path / "x.png", np.random.default_rng(1).random((80, 70), dtype=np.float32),
                        Window(0.5, 1.0), ImageMetadata())
    result = analyze(image, load_model(bundle, "torch"), AnalysisOptions(mc_samples=20))
    assert result.uncertainty is None
    assert "no dropout" in result.uncertainty_note
    assert result.to_dict()["uncertainty"] is None
