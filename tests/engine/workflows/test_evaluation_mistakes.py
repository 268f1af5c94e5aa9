"""An evaluation's mistakes: which cases are listed and in what order, their MC-dropout figures
(at the report's temperature), probability-only without dropout, and mistakes.csv / mistakes.png."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from engine.exports.figures import COLUMNS_PER_SHEET, TILE
from engine.resources import TEACHING_SET
from engine.uncertainty import DEFAULT_THRESHOLD, UncertaintySummary
from engine.workflows.evaluation_outputs import thumbnail, write_outputs
from engine.workflows.evaluation_run import MISCLASSIFIED, UNSURE, CaseResult, EvaluationRun, build_report
from engine.workflows.labels import LabelledCase, LabelledSet

CLASSES = ("normal", "nodule", "effusion")
IMAGES = TEACHING_SET / "images"


def result(n: int, label: int, logits, mc=None) -> CaseResult:
    path = IMAGES / f"case{n:02d}.png"
    return CaseResult(LabelledCase(path, label, None, n + 1), np.asarray(logits, dtype=np.float64), {}, {}, 15.0,
                      None, None if mc is None else np.asarray(mc, dtype=np.float64))


def run_of(results) -> EvaluationRun:
    labelled = LabelledSet(TEACHING_SET / "labels.csv", CLASSES, tuple(r.case for r in results))
    return EvaluationRun(labelled, "m", "1", "onnx", 1.0, tuple(results), ())


def steady(logits, samples: int = 20) -> np.ndarray:
    return np.tile(logits, (samples, 1))


def spread(logits, seed: int, scale: float = 2.5, samples: int = 20) -> np.ndarray:
    return np.asarray(logits) + np.random.default_rng(seed).normal(0, scale, (samples, len(logits)))


@pytest.fixture
def mc_run() -> EvaluationRun:
    return run_of([
        result(1, 0, [0, 5, 0], steady([0, 5, 0])),  # normal called nodule, confidently
        result(2, 1, [2, 1, 0], steady([2, 1, 0])),  # nodule called normal, barely
        result(3, 2, [0, 0, 8], steady([0, 0, 8])),  # effusion, right and sure: not listed
        result(4, 0, [3, 0, 0], spread([3, 0, 0], 1)),  # right, but the samples disagree: unsure
        result(5, 1, [0, 6, 0], steady([0, 6, 0])),  # right and sure
    ])


def test_misclassified_first_most_confident_first_then_the_unsure(mc_run):
    report = build_report(mc_run)
    mistakes = report["mistakes"]
    assert [(m["line"], m["kind"]) for m in mistakes] == [(2, MISCLASSIFIED), (3, MISCLASSIFIED), (5, UNSURE)]
    first = mistakes[0]
    assert (first["true"], first["predicted"], first["file"]) == ("normal", "nodule", "images/case01.png")
    assert first["path"] == str(IMAGES / "case01.png")
    p = np.exp([0, 5, 0]) / np.exp([0, 5, 0]).sum()
    assert first["probability"] == pytest.approx(p[1], abs=1e-6)
    assert first["true_probability"] == pytest.approx(p[0], abs=1e-6)
    expected = UncertaintySummary.from_logit_samples(mc_run.results[3].mc_logits, DEFAULT_THRESHOLD, 1.0)
    unsure = mistakes[2]["uncertainty"]
    assert unsure["flagged"] and unsure["samples"] == 20
    assert unsure["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
    assert unsure["mutual_information"] == pytest.approx(expected.mutual_information, abs=1e-6)
    assert unsure["mutual_information"] > 0.01  # the samples disagree: the model's own doubt
    sure = [c for c in report["cases"] if c["line"] == 4][0]["uncertainty"]
    assert not sure["flagged"] and sure["mutual_information"] == 0.0  # identical samples
    assert "probability-only" in report["mistakes_definition"]


def test_mc_figures_follow_the_reports_temperature(mc_run):
    cold, warm = build_report(mc_run, 1.0), build_report(mc_run, 3.0)
    line = lambda report, n: [c for c in report["cases"] if c["line"] == n][0]["uncertainty"]  # noqa: E731
    assert line(warm, 6)["confidence"] < line(cold, 6)["confidence"]  # softer probabilities, less confidence
    expected = UncertaintySummary.from_logit_samples(mc_run.results[4].mc_logits, DEFAULT_THRESHOLD, 3.0)
    assert line(warm, 6)["confidence"] == pytest.approx(expected.confidence, abs=1e-6)


def test_without_dropout_the_list_is_probability_only():
    run = run_of([result(1, 0, [0, 3, 0]), result(2, 1, [1.0, 1.5, 0]), result(3, 2, [0, 0, 6])])
    mistakes = build_report(run)["mistakes"]
    # line 3: right with p(nodule) ~0.55 < 0.85; line 4: right with p ~0.99, not listed
    assert [(m["line"], m["kind"]) for m in mistakes] == [(2, MISCLASSIFIED), (3, UNSURE)]
    assert all(m["uncertainty"] is None for m in mistakes)


def test_outputs_hold_the_mistakes_as_csv_and_a_contact_sheet(mc_run, tmp_path):
    report = build_report(mc_run)
    report["mistakes"][1]["path"] = str(tmp_path / "moved-away.png")  # a tile that cannot be read
    folder = write_outputs(report, tmp_path, "evaluation-x")
    assert sorted(p.name for p in folder.iterdir()) == ["confusion.png", "metrics.json", "mistakes.csv",
                                                        "mistakes.png", "pr.png", "reliability.png", "roc.png"]
    with open(folder / "mistakes.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["kind"], t["line"], t["true"], t["predicted"]) for t in table] == [
        (MISCLASSIFIED, "2", "normal", "nodule"), (MISCLASSIFIED, "3", "nodule", "normal"), (UNSURE, "5", "normal", "normal")]
    assert table[2]["confidence"] == f"{report['mistakes'][2]['uncertainty']['confidence']:.4f}"
    assert table[2]["mc_samples"] == "20"
    sheet = cv2.cvtColor(cv2.imread(str(folder / "mistakes.png")), cv2.COLOR_BGR2RGB)
    cell_w, cell_h = TILE + 24, TILE + 26 + 16 * 3
    assert sheet.shape == (50 + cell_h, COLUMNS_PER_SHEET * cell_w + 20, 3)  # one row of three tiles
    assert tuple(sheet[50 - 2, 20 + 5]) == (213, 50, 40)  # the first frame: misclassified red
    assert tuple(sheet[50 - 2, 20 + 2 * cell_w + 5]) == (230, 159, 0)  # the third: unsure amber
    # above the middle, where the unreadable tile's "not readable" is not
    band = lambda k: sheet[50 + 10: 50 + TILE // 3, 20 + k * cell_w + 10: 20 + k * cell_w + TILE - 10]  # noqa: E731
    assert band(0).std() > 10 and band(1).std() == 0  # a real picture; the unreadable one a plain tile


def test_thumbnail_fits_the_size_and_keeps_the_aspect():
    picture = thumbnail(IMAGES / "case01.png", 64)
    assert max(picture.shape[:2]) == 64 and picture.dtype == np.uint8 and picture.shape[2] == 3
    assert thumbnail(IMAGES / "no-such-case.png") is None
