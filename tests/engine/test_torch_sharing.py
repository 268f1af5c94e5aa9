"""One PyTorch model shared by two threads (the viewer's analysis and the trust panel's
faithfulness score, or the Evaluate dialog) gives exactly what a serial run gives."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("torch")

from engine import AnalysisOptions, analyze, load_image, load_model  # noqa: E402
from engine.trust.faithfulness import score_analysis  # noqa: E402

ANALYSES, SCORES = 12, 3  # about as long as each other on the demo model


def _same_analysis(a, b) -> None:
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.maps["gradcam"].grid, b.maps["gradcam"].grid, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.uncertainty.mean_probabilities, b.uncertainty.mean_probabilities, atol=1e-6)


def test_analysis_and_faithfulness_on_one_torch_model_from_two_threads_match_a_serial_run(
        demo_bundle, demo_studies):
    model = load_model(demo_bundle, "torch")
    images = [load_image(demo_studies / name) for name in ("demo_nodule.dcm", "demo_effusion.dcm", "demo_nodule.png")]
    options = AnalysisOptions(methods=("gradcam",), mc_samples=8, seed=3)
    serial = [analyze(image, model, options) for image in images]
    serial_scores = [score_analysis(a, model.backend, "gradcam", a.predicted, steps=10) for a in serial]

    analyses, scores, errors = [], [], []
    start = threading.Barrier(2)

    def analyse() -> None:
        try:
            start.wait()
            for n in range(ANALYSES):
                analyses.append((n % len(images), analyze(images[n % len(images)], model, options)))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def score() -> None:
        try:
            start.wait()
            for n in range(SCORES):
                i = n % len(images)
                scores.append((i, score_analysis(serial[i], model.backend, "gradcam", serial[i].predicted, steps=10)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=analyse), threading.Thread(target=score)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert (len(analyses), len(scores)) == (ANALYSES, SCORES)
    for i, analysis in analyses:
        _same_analysis(analysis, serial[i])
    for i, found in scores:
        np.testing.assert_allclose(found.deletion_curve, serial_scores[i].deletion_curve, atol=1e-5)
        np.testing.assert_allclose(found.insertion_curve, serial_scores[i].insertion_curve, atol=1e-5)
    # The model itself is left as it was: no hooks, dropout off.
    backend = model.backend
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in backend.model.modules())
    assert not any(m.training for m in backend.model.modules())


@pytest.mark.parametrize("pause_in", ["gradients", "dropout"])
def test_a_forward_cannot_slip_into_the_middle_of_an_explanation_or_mc_dropout(demo_bundle, demo_studies,
                                                                               monkeypatch, pause_in):
    """The interleaving forced: one thread stops inside explain (hooks on the model) or inside
    MC dropout (dropout switched on) until another thread's forward has run, or 1.5 s have
    passed. With the engine's lock the forward waits its turn; without it, it would see the
    hooks or the dropout, and one of the two results would differ from a serial run."""
    import contextlib

    from engine.backends import torch_backend

    model = load_model(demo_bundle, "torch")
    image = load_image(demo_studies / "demo_nodule.dcm")
    options = AnalysisOptions(methods=("gradcam",), mc_samples=8, seed=3)
    serial = analyze(image, model, options)
    # The other thread runs another image, so that anything it leaves in a shared hook shows.
    batch = analyze(load_image(demo_studies / "demo_effusion.dcm"), model, options).model_input.tensor
    serial_logits = model.backend.forward(batch)

    inside, forward_done = threading.Event(), threading.Event()

    def pause() -> None:
        inside.set()
        forward_done.wait(1.5)

    if pause_in == "gradients":
        original = torch_backend.all_class_gradients

        def paused_gradients(logits, activation):
            pause()
            return original(logits, activation)

        monkeypatch.setattr(torch_backend, "all_class_gradients", paused_gradients)
    else:
        original = torch_backend.dropout_active

        @contextlib.contextmanager
        def paused_dropout(module):
            with original(module):
                pause()
                yield

        monkeypatch.setattr(torch_backend, "dropout_active", paused_dropout)

    found, errors = {}, []

    def other() -> None:
        try:
            assert inside.wait(30)
            found["logits"] = model.backend.forward(batch)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            forward_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        analysis = analyze(image, model, options)
    finally:
        thread.join(timeout=60)
    assert not errors, errors
    np.testing.assert_allclose(found["logits"], serial_logits, rtol=1e-5, atol=1e-5)
    _same_analysis(analysis, serial)
