import cv2
import numpy as np
import pytest

from engine.analysis import load_model
from engine.errors import EngineUnavailableError
from engine.synthetic.phantoms import make_phantom
from engine.preprocess import prepare_input
from engine.trust.sanity import BARELY_CHANGES, check_randomization, randomization_steps, torch_model_for
from engine.trust.similarity import average_ranks, method_agreement, spearman, ssim


def edge_detector(backend, model_input, class_index):
    """A deliberately broken "explanation": the input's edge strength, which ignores the model
    (and the class) entirely -- the kind of map the sanity check exists to catch."""
    image = model_input.tensor[0, 0]
    return np.hypot(cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1))


def test_ranks_average_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 0.0, 0.0, 5.0, 0.0])), [3, 1, 1, 4, 1])


def test_spearman_matches_hand_values_and_ignores_scale():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks [0,1,2,3] vs [1,0,3,2]: d^2 sum = 4, rho = 1 - 6*4/(4*15) = 0.6
    assert spearman(a, np.array([[2.0, 1.0], [4.0, 3.0]])) == pytest.approx(0.6)
    assert spearman(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        spearman(a, np.zeros(3))


def test_ssim_is_one_for_identical_structure_and_low_for_unrelated_noise():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.random((64, 64)), (0, 0), 4)
    assert ssim(smooth, smooth * 3.0 + 1.0) == pytest.approx(1.0, abs=1e-6)
    assert ssim(smooth, rng.random((64, 64))) < 0.3
    assert ssim(smooth, 1.0 - smooth) < 0.0


def _phantom_input(bundle, label, seed):
    from engine.making.training import phantom_image

    return prepare_input(phantom_image(make_phantom(np.random.default_rng(seed), label, 256).image), bundle.input)


@pytest.mark.slow
def test_randomisation_changes_gradcam_a_lot_and_flags_the_edge_detector(demo_bundle):
    pytest.importorskip("torch")
    model = load_model(demo_bundle, "onnx-int8")  # the check re-opens the bundle on torch itself
    model_input = _phantom_input(model.bundle, 1, seed=4)
    real = check_randomization(model, model_input, 1, "gradcam")
    broken = check_randomization(model, model_input, 1, "edges", map_function=edge_detector)
    assert real.steps[0].layers == "fc" and real.steps[-1].layers == "conv1"
    assert len(real.steps) >= 8
    assert not real.barely_changes
    assert real.final_spearman < BARELY_CHANGES and real.steps[-1].ssim < 0.3
    assert min(s.spearman for s in real.steps) < 0.2
    assert broken.barely_changes
    assert all(s.spearman > 0.99 and s.ssim > 0.99 for s in broken.steps)
    data = real.to_dict()
    assert data["barely_changes"] is False and len(data["steps"]) == len(real.steps)


@pytest.mark.slow
def test_randomisation_leaves_the_trained_model_untouched(demo_bundle):
    pytest.importorskip("torch")
    model = load_model(demo_bundle, "torch")
    model_input = _phantom_input(model.bundle, 2, seed=5)
    before = model.backend.forward(model_input.tensor)
    steps = randomization_steps(model, model_input, 2)
    stages = [next(steps).stage for _ in range(3)]
    steps.close()  # cancelled after two randomised blocks
    assert stages == ["trained map", "randomising fc", "randomising layer4.1"]
    np.testing.assert_array_equal(model.backend.forward(model_input.tensor), before)


def test_onnx_only_bundle_says_the_check_needs_pytorch(demo_bundle, tmp_path):
    import json
    import shutil

    for name in ("model.int8.onnx", "head.onnx", "ood.safetensors"):  # what the package ships
        shutil.copy(demo_bundle / name, tmp_path / name)
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    del manifest["weights"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = load_model(tmp_path, "onnx-int8")
    with pytest.raises(EngineUnavailableError, match="needs PyTorch"):
        torch_model_for(model)


def test_method_agreement_pairs_every_method(demo_bundle):
    from engine.analysis import AnalysisOptions, analyze
    from engine.making.training import phantom_image

    model = load_model(demo_bundle, "onnx-int8")
    image = phantom_image(make_phantom(np.random.default_rng(9), 1, 256).image)
    analysis = analyze(image, model, AnalysisOptions(methods=("gradcam", "gradcam++", "layercam"), mc_samples=0))
    agreement = method_agreement(analysis.maps, 1)
    assert set(agreement) == {("gradcam", "gradcam++"), ("gradcam", "layercam"), ("gradcam++", "layercam")}
    assert all(-1.0 <= v <= 1.0 for v in agreement.values())
    # On a clear nodule the trained model's methods agree more than chance would.
    assert agreement[("gradcam", "gradcam++")] > 0.3
