import json

import numpy as np
import pytest

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.trust.faithfulness import (
    DEFAULT_STEPS, FaithfulnessScore, chance_map, input_map, perturbed_inputs, pixel_order, score_analyses, score_analysis,
    score_map, score_map_steps, scores_to_dict,
)
from engine.synthetic.phantoms import make_phantom


class SquareDetector:
    """A real (tiny, hand-written) model: class 1's logit grows with the texture (standard
    deviation) of the input inside a square, class 0's is zero. Its evidence is known exactly."""

    engine = "square"

    def __init__(self, rows=slice(8, 16), cols=slice(8, 16)):
        self.rows, self.cols = rows, cols

    def forward(self, batch):
        inside = (batch[:, 0, self.rows, self.cols].std(axis=(1, 2)) - 0.15) * 40.0
        return np.stack([np.zeros_like(inside), inside], axis=1)


def test_pixel_order_puts_high_values_first_and_spreads_ties():
    saliency = np.zeros((8, 8), np.float32)
    saliency[2, 3], saliency[5, 5] = 2.0, 1.0
    order = pixel_order(saliency, seed=0)
    assert list(order[:2]) == [2 * 8 + 3, 5 * 8 + 5]
    # The 62 tied zeros are not taken in raster order.
    assert list(order[2:]) != sorted(order[2:])
    assert sorted(order) == list(range(64))


def test_perturbed_inputs_remove_and_reveal_the_ranked_pixels():
    tensor = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) + 1.0
    deletion_base, insertion_base = np.zeros_like(tensor), np.full_like(tensor, -1.0)
    order = np.arange(16)  # raster order
    batch = perturbed_inputs(tensor, order, 4, deletion_base, insertion_base)
    assert batch.shape == (8, 1, 4, 4)
    # Deletion step 1 removes the first quarter (row 0); the last deletion step removes all.
    assert np.all(batch[0, 0, 0] == 0.0) and np.array_equal(batch[0, 0, 1:], tensor[0, 0, 1:])
    assert np.all(batch[3] == 0.0)
    # Insertion starts from the insertion baseline and reveals row 0 at the next step.
    assert np.all(batch[4] == -1.0)
    assert np.array_equal(batch[5, 0, 0], tensor[0, 0, 0]) and np.all(batch[5, 0, 1:] == -1.0)


def test_the_true_evidence_scores_better_than_the_reverse_on_a_known_model():
    rng = np.random.default_rng(1)
    tensor = rng.random((1, 1, 32, 32)).astype(np.float32)
    truth = np.zeros((32, 32), np.float32)
    truth[8:16, 8:16] = 1.0
    right = score_map(SquareDetector(), tensor, truth, 1, method="truth")
    wrong = score_map(SquareDetector(), tensor, 1.0 - truth, 1, method="reverse")
    assert right.deletion_auc < wrong.deletion_auc - 0.2
    assert right.insertion_auc > wrong.insertion_auc + 0.2
    # Curves start and end at the image's own probability.
    assert right.deletion_curve[0] == pytest.approx(right.insertion_curve[-1])
    assert right.fractions[0] == 0.0 and right.fractions[-1] == 1.0 and len(right.fractions) == DEFAULT_STEPS + 1


def test_scoring_runs_in_steps_that_can_be_stopped_between_forward_batches():
    rng = np.random.default_rng(2)
    tensor = rng.random((1, 1, 32, 32)).astype(np.float32)
    saliency = rng.random((32, 32)).astype(np.float32)

    class Counting(SquareDetector):
        calls = 0

        def forward(self, batch):
            Counting.calls += 1
            return super().forward(batch)

    steps = score_map_steps(Counting(), tensor, saliency, 1, method="m", steps=40)
    first = next(steps)
    assert first.total == 3 and Counting.calls == 0  # 81 inputs in batches of 32, none run yet
    next(steps)
    steps.close()  # the viewer cancels here
    assert Counting.calls == 1
    whole = score_map(Counting(), tensor, saliency, 1, method="m", steps=40)
    assert Counting.calls == 4
    assert whole.deletion_auc == score_map(SquareDetector(), tensor, saliency, 1, method="m", steps=40).deletion_auc


def test_score_is_json_ready_and_refuses_a_map_of_the_wrong_size():
    tensor = np.ones((1, 1, 32, 32), np.float32)
    score = score_map(SquareDetector(), tensor, np.ones((32, 32)), 1, method="flat", steps=4)
    data = json.loads(json.dumps(scores_to_dict([score], ("normal", "nodule")), allow_nan=False))
    assert data["flat"]["nodule"]["deletion_baseline"] == "mean" and len(data["flat"]["nodule"]["fractions"]) == 5
    with pytest.raises(ValueError, match="model input is"):
        score_map(SquareDetector(), tensor, np.ones((16, 16)), 1)


def _phantom_analyses(model, count=6):
    from engine.making.training import phantom_image

    rng = np.random.default_rng(21)
    analyses = []
    for k in range(count):
        label = 1 + k % 2  # nodule, effusion, ...
        phantom = make_phantom(rng, label, 256)
        analyses.append((label, analyze(phantom_image(phantom.image), model, AnalysisOptions(mc_samples=0))))
    return analyses


@pytest.mark.slow
# torch runs fewer, coarser curves: its forward is several times slower than INT8 on 2 cores.
@pytest.mark.parametrize("engine, count, steps", [("onnx-int8", 6, 16), ("torch", 4, 8)])
def test_trained_maps_beat_random_maps_and_the_randomised_models_maps(demo_bundle, engine, count, steps):
    pytest.importorskip("torch")
    from engine.backends.torch_backend import cascading_randomization
    from engine.trust.sanity import cam_map_function, torch_model_for

    model = load_model(demo_bundle, engine)
    *_, (_, randomized) = cascading_randomization(torch_model_for(model).backend, seed=0)
    randomized_map = cam_map_function("gradcam", model.bundle.map_alignment)
    real, chance, broken = [], [], []
    for k, (label, analysis) in enumerate(_phantom_analyses(model, count)):
        tensor = analysis.model_input.tensor
        real.append(score_analysis(analysis, model.backend, "gradcam", label, steps=steps))
        chance.append(score_map(model.backend, tensor, chance_map(analysis.maps["gradcam"], seed=k), label,
                                steps=steps))
        broken.append(score_map(model.backend, tensor, randomized_map(randomized, analysis.model_input, label), label,
                                steps=steps))
    mean = {name: (np.mean([s.deletion_auc for s in scores]), np.mean([s.insertion_auc for s in scores]))
            for name, scores in (("real", real), ("random", chance), ("randomised model", broken))}
    for other in ("random", "randomised model"):
        assert mean["real"][0] < mean[other][0] - 0.05, mean
        assert mean["real"][1] > mean[other][1] + 0.02, mean


def test_batch_scoring_gives_one_list_per_analysis(demo_bundle):
    model = load_model(demo_bundle, "onnx-int8")
    analyses = [a for _, a in _phantom_analyses(model, count=2)]
    results = score_analyses(analyses, model, classes="all")
    assert [len(r) for r in results] == [3, 3]
    assert all(isinstance(s, FaithfulnessScore) and s.method == "gradcam" for r in results for s in r)
    assert [s.class_index for s in results[0]] == [0, 1, 2]
    predicted = score_analyses(analyses, model)
    assert [r[0].class_index for r in predicted] == [a.predicted for a in analyses]


def test_input_map_covers_the_model_input(demo_bundle):
    model = load_model(demo_bundle, "onnx-int8")
    (_, analysis), = _phantom_analyses(model, count=1)
    maps = analysis.maps["gradcam"]
    on_input = input_map(maps, 1)
    assert on_input.shape == tuple(model.bundle.input.size)
    assert on_input.max() == pytest.approx(maps.grid[1].max(), rel=1e-3)


def test_explain_writes_faithfulness_into_result_json(demo_bundle, demo_studies, tmp_path):
    from engine.cli.main import main

    code = main(["explain", str(demo_studies / "demo_nodule.dcm"), "--out", str(tmp_path), "--model",
                 str(demo_bundle), "--engine", "onnx-int8", "--mc", "0", "--faithfulness", "predicted"])
    assert code == 0
    record = json.loads((tmp_path / "demo_nodule" / "result.json").read_text())
    score = record["faithfulness"]["gradcam"][record["predicted_class"]]
    assert list(record["faithfulness"]["gradcam"]) == [record["predicted_class"]]
    assert 0.0 <= score["deletion_auc"] <= 1.0 and 0.0 <= score["insertion_auc"] <= 1.0
    assert len(score["deletion_curve"]) == DEFAULT_STEPS + 1
