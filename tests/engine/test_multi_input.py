"""Multi-input models: several images of one case through branches into one dropout head."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.bundle import load_bundle, parse_manifest
from engine.errors import LanternError, ModelBundleError
from engine.images import load_image
from engine.resources import DEMO_STUDIES, ROOT
from tests.conftest import make_multi_input_bundle

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    return {b: make_multi_input_bundle(root / b, branches=b) for b in ("shared", "separate")}


@pytest.fixture(scope="module")
def case():
    return {"PA": load_image(DEMO_STUDIES / "demo_nodule.dcm"), "LAT": load_image(DEMO_STUDIES / "demo_effusion.dcm")}


def _manifest(**changes):
    manifest = {"format_version": 1, "name": "m", "architecture": "resnet18", "classes": ["a", "b"],
                "weights": "model.safetensors",
                "inputs": [{"name": "PA", "channels": 1, "size": [64, 64]},
                           {"name": "LAT", "channels": 1, "size": [64, 64]}]}
    manifest.update(changes)
    return manifest


@pytest.mark.parametrize("changes, words", [
    ({"input": {"channels": 1, "size": [64, 64]}}, "both 'input' and 'inputs'"),
    ({"inputs": [{"name": "PA", "channels": 1, "size": [64, 64]}]}, "2 to 8"),
    ({"inputs": [{"name": "P A", "channels": 1, "size": 64}, {"name": "L", "channels": 1, "size": 64}]}, "'name'"),
    ({"inputs": [{"name": "PA", "channels": 1, "size": 64}, {"name": "PA", "channels": 1, "size": 64}]}, "differ"),
    ({"inputs": [{"name": "PA", "channels": 1, "size": 64}, {"name": "LAT", "channels": 3, "size": 64}]},
     "same architecture and channels"),
    ({"inputs": [{"name": "PA", "channels": 2, "size": 64}, {"name": "LAT", "channels": 1, "size": 64}]},
     "input 'PA': input channels"),
    ({"branches": "both"}, "'branches' must be one of"),
    ({"architecture": "vit_b_17"}, "architecture|backbone"),
    ({"inputs": [{"name": "PA", "channels": 1, "size": 64, "view_positions": "PA"},
                 {"name": "LAT", "channels": 1, "size": 64}]}, "View Position"),
])
def test_manifest_inputs_are_checked_in_plain_words(tmp_path, changes, words):
    with pytest.raises(ModelBundleError, match=words):
        parse_manifest(_manifest(**changes), tmp_path)


def test_branches_without_inputs_is_refused(tmp_path):
    manifest = _manifest(input={"channels": 1, "size": [64, 64]}, branches="shared")
    del manifest["inputs"]
    with pytest.raises(ModelBundleError, match="only for a model with several"):
        parse_manifest(manifest, tmp_path)


def test_separate_branches_may_differ(tmp_path):
    bundle = parse_manifest(_manifest(branches="separate", inputs=[
        {"name": "PA", "channels": 1, "size": [64, 64], "view_positions": ["pa", "AP"]},
        {"name": "LAT", "channels": 3, "size": [96, 96], "architecture": "densenet121"}]), tmp_path)
    assert bundle.multi_input and bundle.input_names == ("PA", "LAT")
    assert bundle.inputs[0].view_positions == ("PA", "AP")
    assert bundle.inputs[1].architecture == "densenet121" and bundle.inputs[1].map_alignment == "resize"
    assert bundle.inputs[0].map_alignment == "stride"
    assert bundle.input == bundle.inputs[0].spec


@pytest.mark.parametrize("branches", ["shared", "separate"])
def test_a_case_gives_one_result_and_a_map_per_input(bundles, case, branches):
    model = load_model(bundles[branches], "torch")
    result = analyze(case, model)
    assert [v.name for v in result.views] == ["PA", "LAT"]
    for view, image in zip(result.views, (case["PA"], case["LAT"])):
        maps = view.maps["gradcam"]
        assert maps.shape == image.shape and view.source == image.path
    # MC dropout ran once over the fused features (two ResNet-18 feature vectors).
    assert result.uncertainty is not None
    outputs = model.backend.explain(tuple(v.model_input.tensor for v in result.views))
    assert outputs.head_input.shape == (1024,)
    # A case is the same whatever order its images are named in.
    again = analyze({"LAT": case["LAT"], "PA": case["PA"]}, model)
    np.testing.assert_allclose(again.probabilities, result.probabilities, atol=1e-6)


def test_each_map_comes_from_its_own_input(tmp_path, case):
    """With the head blind to the lateral branch, the lateral view has no gradient and no map,
    while the PA view still has one: the gradients are routed per input."""
    from safetensors.torch import load_file, save_file

    folder = make_multi_input_bundle(tmp_path / "blind", branches="separate")
    state = load_file(str(folder / "model.safetensors"))
    state["head.weight"][:, 512:] = 0.0
    save_file(state, str(folder / "model.safetensors"))
    model = load_model(folder, "torch")
    result = analyze(case, model, AnalysisOptions(mc_samples=0))
    outputs = model.backend.explain(tuple(v.model_input.tensor for v in result.views))
    assert np.abs(outputs.layers[1].gradients).max() == 0.0
    assert np.abs(outputs.layers[0].gradients).max() > 0.0
    pa, lat = result.views
    assert lat.maps["gradcam"].grid.max() == 0.0
    assert max(pa.maps["gradcam"].grid[c].max() for c in range(3)) > 0.0


def test_maps_of_a_case_share_one_scale(bundles, case):
    result = analyze(case, load_model(bundles["separate"], "torch"), AnalysisOptions(mc_samples=0))
    for c in range(len(result.classes)):
        peaks = [v.maps["gradcam"].image_peak(c) for v in result.views]
        if max(peaks) == 0:
            continue
        shown = [float(v.maps["gradcam"].normalized_map(c).max()) for v in result.views]
        strongest = int(np.argmax(peaks))
        assert shown[strongest] == pytest.approx(1.0, abs=1e-3)
        weaker = 1 - strongest
        assert shown[weaker] == pytest.approx(peaks[weaker] / peaks[strongest], abs=0.02)


def test_a_case_missing_an_input_is_refused(bundles, case):
    model = load_model(bundles["shared"], "torch")
    with pytest.raises(LanternError, match="no image was given for the model's input LAT"):
        analyze({"PA": case["PA"]}, model)
    with pytest.raises(LanternError, match="no input named AP"):
        analyze({**case, "AP": case["PA"]}, model)
    with pytest.raises(LanternError, match="one image per input"):
        analyze(case["PA"], model)


def test_one_image_workflows_refuse_a_multi_input_model(bundles, tmp_path):
    from engine.workflows.batch import run_batch

    model = load_model(bundles["shared"], "torch")
    with pytest.raises(ModelBundleError, match="a batch over a folder takes models of one image"):
        run_batch(DEMO_STUDIES, tmp_path / "out", model)
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_are_refused(tmp_path):
    folder = make_multi_input_bundle(tmp_path / "shared", branches="shared")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["branches"] = "separate"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelBundleError, match="missing"):
        load_model(load_bundle(folder), "torch")


def _explain(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "explain", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_explain_command_writes_one_result_per_case(bundles, tmp_path):
    pa, lat = DEMO_STUDIES / "demo_nodule.dcm", DEMO_STUDIES / "demo_normal.dcm"
    run = _explain("--model", bundles["separate"], "--input", f"LAT={lat}", "--input", f"PA={pa}",
                   "--out", tmp_path, "--mc", "5")
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "demo_nodule-case"
    record = json.loads((folder / "result.json").read_text())
    assert record["schema"] == "lantern.result/1"
    assert [(i["name"], Path(i["source"]).name) for i in record["inputs"]] == [("PA", pa.name), ("LAT", lat.name)]
    assert set(record["inputs"][1]["map_peaks"]["gradcam"]) == {"normal", "nodule", "effusion"}
    assert record["uncertainty"]["samples"] == 5
    overlays = sorted(p.name for p in folder.glob("overlay-*.png"))
    assert overlays == sorted(f"overlay-{n}-{i}-{c}.png" for n in ("PA", "LAT")
                              for i, c in enumerate(("normal", "nodule", "effusion")))


@pytest.mark.parametrize("args, words", [
    (["--input", "PA"], "NAME=FILE"),
    (["--input", "PA=a.dcm", "--input", "PA=b.dcm"], "given twice"),
    (["--input", f"PA={DEMO_STUDIES / 'demo_nodule.dcm'}"], "no image was given for the model's input LAT"),
])
def test_explain_command_refuses_a_bad_case(bundles, tmp_path, args, words):
    run = _explain("--model", bundles["shared"], *args, "--out", tmp_path)
    assert run.returncode != 0 and words in run.stderr
    assert "Traceback" not in run.stderr


def test_images_are_proposed_for_inputs_by_view_position_then_order(bundles):
    from engine.case_inputs import BY_ORDER, BY_VIEW_POSITION, propose_inputs

    bundle = load_bundle(bundles["shared"])
    pa, lat = propose_inputs(bundle, ["ll", "", "AP"])
    assert (pa.image, pa.how) == (2, BY_VIEW_POSITION) and (lat.image, lat.how) == (0, BY_VIEW_POSITION)
    pa, lat = propose_inputs(bundle, ["", "LL"])
    assert (pa.image, pa.how) == (0, BY_ORDER) and (lat.image, lat.how) == (1, BY_VIEW_POSITION)
    pa, lat = propose_inputs(bundle, ["PA", "PA"])  # two frontal images: the second is only a guess
    assert (pa.image, pa.how) == (0, BY_VIEW_POSITION) and (lat.image, lat.how) == (1, BY_ORDER)
    pa, lat = propose_inputs(bundle, ["LATERAL"])
    assert pa.image is None and (lat.image, lat.how) == (0, BY_VIEW_POSITION)
