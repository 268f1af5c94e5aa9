import json

import numpy as np
import pytest

from engine.trust.calibration import ReliabilityDiagram, reliability_diagram


def test_bins_and_ece_match_hand_computed_values():
    # Bins of width 0.25. Bin 0: 0.1 (wrong). Bin 1: 0.3 (right), 0.4 (wrong).
    # Bin 2: empty. Bin 3: 0.8, 0.9 (right), 1.0 (wrong) -- 1.0 falls in the last bin.
    diagram = reliability_diagram([0.1, 0.3, 0.4, 0.8, 0.9, 1.0], [0, 1, 0, 1, 1, 0], bins=4)
    np.testing.assert_allclose(diagram.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(diagram.counts, [1, 2, 0, 3])
    np.testing.assert_allclose(diagram.mean_confidence[[0, 1, 3]], [0.1, 0.35, 0.9])
    np.testing.assert_allclose(diagram.accuracy[[0, 1, 3]], [0.0, 0.5, 2 / 3])
    assert np.isnan(diagram.mean_confidence[2]) and np.isnan(diagram.accuracy[2])
    # ECE = 1/6*|0-0.1| + 2/6*|0.5-0.35| + 3/6*|2/3-0.9| = 0.016667 + 0.05 + 0.116667
    assert diagram.ece == pytest.approx(0.1 / 6 + 2 / 6 * 0.15 + 3 / 6 * (0.9 - 2 / 3))
    assert diagram.total == 6


def test_bin_edge_goes_to_the_upper_bin():
    diagram = reliability_diagram([0.5, 0.5], [True, True], bins=2)
    np.testing.assert_array_equal(diagram.counts, [0, 2])
    assert diagram.ece == pytest.approx(0.5)


def test_perfectly_calibrated_cases_have_zero_ece():
    # In each bin the accuracy equals the mean confidence exactly.
    conf = [0.25] * 4 + [0.75] * 4
    correct = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert reliability_diagram(conf, correct, bins=2).ece == pytest.approx(0.0)


def test_dict_round_trip_is_json_safe_with_empty_bins():
    diagram = reliability_diagram([0.05, 0.95], [0, 1], bins=10)
    data = json.loads(json.dumps(diagram.to_dict(), allow_nan=False))
    assert data["mean_confidence"][5] is None and data["counts"][0] == 1
    back = ReliabilityDiagram.from_dict(data)
    np.testing.assert_array_equal(back.counts, diagram.counts)
    np.testing.assert_allclose(back.accuracy, diagram.accuracy, equal_nan=True)
    assert back.ece == pytest.approx(diagram.ece, abs=1e-6)


@pytest.mark.parametrize(
    "confidences, correct, message",
    [
        ([], [], "at least one case"),
        ([0.5, 0.6], [1], "2 confidences but 1"),
        ([1.2], [1], "within 0..1"),
        ([float("nan")], [1], "within 0..1"),
        ([0.5], [2], "true/false"),
    ],
)
def test_bad_input_is_refused_in_plain_words(confidences, correct, message):
    with pytest.raises(ValueError, match=message):
        reliability_diagram(confidences, correct)
