"""``lantern-engine bench --arch``: a torchvision architecture with random weights made into a
bundle in a temporary folder, exported, quantized and timed on every engine. No speed is
asserted anywhere here: timings depend on the machine and on what else runs on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.backends.base import thread_count
from engine.cli.bench_arch import print_architecture
from engine.cli.bench_models import FAMILIES
from engine.cli.bench_measure import interleaved, speed_targets
from engine.cli.main import build_parser, main
from engine.resources import ROOT


def _figures(forward: float, analysis: float) -> dict:
    return {"forward": {"p50_ms": forward}, "analysis": {"p50_ms": analysis},
            "analysis_over_forward": analysis / forward}


@pytest.mark.slow
def test_bench_arch_json_has_every_engine_and_the_thread_count(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))  # where the temporary bundle must go (and leave)
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "bench", "--arch", "resnet18", "--json",
                          "--repeats", "2"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)  # the whole of stdout is one JSON object
    assert report["threads"] == thread_count() and report["cpu_count"] >= 1
    assert report["mc_samples"] == 20 and report["repeats"] == 2
    arch = report["architectures"]["resnet18"]
    assert arch["bundle"]["input"] == "3 x 224 x 224" and arch["bundle"]["classes"] == 3
    assert "seconds" in arch["export"] and "seconds" in arch["quantize"]
    assert set(arch["engines"]) == {"torch", "onnx", "onnx-int8"}
    for engine, figures in arch["engines"].items():
        assert "error" not in figures, (engine, figures)
        assert figures["forward"]["p50_ms"] > 0 and figures["analysis"]["p50_ms"] > 0
        assert figures["analysis_over_forward"] == pytest.approx(
            figures["analysis"]["p50_ms"] / figures["forward"]["p50_ms"], rel=0.01)
        assert figures["threads"] >= 1
        assert set(figures["stages_ms"]) == {"preprocess", "forward", "maps", "uncertainty"}
    assert arch["engines"]["onnx-int8"]["threads"] == report["threads"]
    plain = arch["plain_int8"]
    assert plain["forward"]["p50_ms"] > 0 and plain["top1_agreement_with_bundle_graph"] is not None
    assert plain["paired"]["engine_analysis_over_plain"] > 0  # timed in the INT8 engine's process
    assert set(arch["speed_targets"]) == {"torch analysis/forward", "onnx-int8 analysis/forward",
                                          "onnx-int8 analysis/plain ORT int8"}
    assert all(isinstance(t["met"], bool) for t in arch["speed_targets"].values())
    # The bundle, its ONNX files and the plain classifier went to the temporary folder and were
    # removed with it (torch's exporter leaves its own caches there).
    assert [p.name for p in scratch.iterdir() if not p.name.startswith(("torchinductor_", "."))] == []


def test_bench_parser_takes_architectures_and_keeps_the_default_bench():
    args = build_parser().parse_args(["bench", "--arch", "resnet18", "swin_t", "--json", "--repeats", "2"])
    assert args.arch == ["resnet18", "swin_t"] and args.json and args.repeats == 2
    default = build_parser().parse_args(["bench"])
    assert default.arch is None and default.engine == "auto" and default.repeats == 30
    assert "families" not in FAMILIES and len(FAMILIES) == 9


def test_an_unknown_architecture_is_refused_in_plain_words(capsys):
    assert main(["bench", "--arch", "resnet_unknown"]) == 2
    assert "unknown architecture resnet_unknown" in capsys.readouterr().err


def test_speed_targets_use_the_interleaved_int8_figures():
    engines = {"torch": _figures(40.0, 48.0), "onnx": _figures(20.0, 30.0), "onnx-int8": _figures(5.0, 8.0)}
    plain = {"forward": {"p50_ms": 4.0}, "paired": {"engine_analysis_over_plain": 1.1}}
    targets = speed_targets(engines, plain)
    assert targets["torch analysis/forward"] == {"value": 1.2, "target": "<= 1.3", "met": True}
    assert targets["onnx-int8 analysis/forward"]["met"] is False
    assert targets["onnx-int8 analysis/plain ORT int8"] == {"value": 1.1, "target": "<= 1.2", "met": True}
    # Without a paired figure, the two processes' medians; without INT8, no INT8 target.
    assert speed_targets(engines, {"forward": {"p50_ms": 4.0}})["onnx-int8 analysis/plain ORT int8"]["value"] == 2.0
    assert set(speed_targets({"torch": engines["torch"], "onnx-int8": {"error": "refused"}}, None)) == {
        "torch analysis/forward"}


def test_interleaved_runs_every_call_in_every_round():
    order = []
    ms = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert {k: v.shape for k, v in ms.items()} == {"a": (3,), "b": (3,)} and np.all(ms["a"] >= 0)


def test_a_refused_export_is_reported_and_the_other_engines_still_print(capsys):
    report = {
        "bundle": {"architecture": "vit_b_16", "input": "3 x 224 x 224", "classes": 3, "dropout": 0.2,
                   "weights": "random (seed 0)"},
        "export": {"refused": "ONNX export does not support vision transformers yet (vit_b_16)"},
        "quantize": {"refused": "no fp32 ONNX model to quantize (export refused)"},
        "engines": {"torch": _figures(100.0, 120.0) | {"threads": 2, "analysis_over_preprocess_and_forward": 1.1,
                                                       "stages_ms": {"preprocess": 2.0, "forward": 110.0}},
                    "onnx": {"error": "refused: ONNX export does not support vision transformers yet"}},
        "plain_int8": {"forward": {"p50_ms": 30.0}, "threads": 2, "model_bytes": 90_000_000},
        "speed_targets": speed_targets({"torch": _figures(100.0, 120.0)}, None),
    }
    print_architecture("vit_b_16", report)
    out = capsys.readouterr().out
    assert "export: refused: ONNX export does not support vision transformers yet" in out
    assert "onnx           refused:" in out
    assert "torch" in out and "120.0" in out and "plain ORT int8" in out and "30.0" in out
    assert "target (#12) torch analysis/forward: 1.2 (want <= 1.3) met" in out


def test_bench_ood_prints_the_separation_of_the_demo_models_check():
    import json as _json
    import subprocess
    import sys

    from engine.resources import ROOT

    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "bench", "--ood", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    report = _json.loads(run.stdout)
    assert report["engine"] == "onnx-int8" and "the bundle's" in report["statistics"]
    assert report["auroc"]["mahalanobis"] >= 0.95  # the target, on data, not on time
    assert report["in_distribution_flagged"] <= 0.05 and report["ood_flagged"] >= 0.9
    assert {"pydicom CT", "pydicom MR", "phantom hand"} <= set(report["groups"])
