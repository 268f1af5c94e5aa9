"""Experiment (not part of Lantern): does OpenVINO run Lantern's explain graphs, and faster than
onnxruntime at equal maps? Findings: docs/benchmarks.md, section "OpenVINO".

    .venv/bin/pip install openvino          # experiment only; never a Lantern dependency
    .venv/bin/python build/openvino_experiment.py [--repeats 30] [--arch resnet18 densenet121] [--no-demo]
    .venv/bin/pip uninstall -y openvino openvino-telemetry

For the demo bundle (resources/models/demo: int8 + head only) and, per ``--arch``, a random-weight
3 x 224 x 224 bundle made, exported and quantized in a temporary folder as ``lantern-engine bench
--arch`` makes it, every ONNX file of the bundle (model.onnx, model.int8.onnx, head.onnx):

* load: ``Core.read_model`` + ``compile_model("CPU")`` (the ``If`` on ``with_gradients``, the QDQ
  int8 graph), with Lantern's thread count, latency hint, and f32 inference precision (this CPU
  has AMX-BF16, where OpenVINO would otherwise compute fp32 graphs in bf16; ``--bf16`` measures
  that too);
* equal: logits (max abs difference), activations and gradients (Pearson r over the whole
  tensor) and every class's Grad-CAM map (engine.making.export_verification's correlation)
  against onnxruntime with Lantern's session options, and both runtimes' maps against the
  PyTorch fp32 engine's, on the demo image and 4 held-out phantoms (minimum over them);
* speed: forward (with_gradients False, logits only) and explain (True, all outputs) p50 ms,
  both runtimes interleaved in one process so that other load on the machine hits both alike;
  head.onnx with 20 MC-dropout masks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.backends.base import thread_count  # noqa: E402
from engine.backends.onnx_backend import OnnxSessions  # noqa: E402
from engine.bundle import load_bundle  # noqa: E402
from engine.cli.bench_measure import demo_image, interleaved  # noqa: E402
from engine.preprocess import prepare_input  # noqa: E402
from engine.resources import DEMO_MODEL  # noqa: E402

OUTPUTS = ("logits", "activations", "head_input", "gradients")


def compile_ov(core, path: Path, bf16: bool):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    model = core.read_model(str(path))
    config = {props.inference_num_threads: thread_count(), hints.performance_mode: hints.PerformanceMode.LATENCY,
              hints.inference_precision: ov.Type.bf16 if bf16 else ov.Type.f32}
    start = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    return compiled, time.perf_counter() - start


def ov_runner(compiled):
    request = compiled.create_infer_request()
    names = {o.get_any_name(): o for o in compiled.outputs}

    def run(feed: dict, wanted: tuple[str, ...]) -> list[np.ndarray]:
        request.infer(feed)
        return [np.array(request.get_tensor(names[n]).data, copy=True) for n in wanted]

    return run


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def compare_graph(bundle, path: Path, core, repeats: int, bf16: bool, reference=None) -> dict:
    from engine.making.export_verification import VERIFY_SEED, class_map_correlations, heldout_inputs
    from engine.cam import get_method

    out: dict = {"file": path.name, "mb": round(path.stat().st_size / 1e6, 1)}
    try:
        compiled, seconds = compile_ov(core, path, bf16)
    except Exception as exc:  # OpenVINO raises its own exception types
        out["loads"] = False
        out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}"
        return out
    out["loads"], out["compile_s"] = True, round(seconds, 2)
    ort = OnnxSessions(path, None)
    run = ov_runner(compiled)
    tensor = prepare_input(demo_image(), bundle.input).tensor
    phantoms, _ = heldout_inputs(bundle, 4, VERIFY_SEED)
    gradcam = get_method("gradcam")
    worst = {"logits_max_abs": 0.0, "activations_r": 1.0, "gradients_r": 1.0, "gradcam_map_r": 1.0}
    if reference is not None:
        worst |= {"ort_vs_torch_fp32_map_r": 1.0, "ov_vs_torch_fp32_map_r": 1.0}
    for x in [tensor] + [phantoms[i : i + 1] for i in range(len(phantoms))]:
        want = ort.model.run(list(OUTPUTS), {"input": x, "with_gradients": np.array(True)})
        got = run({"input": x, "with_gradients": np.array(True)}, OUTPUTS)
        w, g = dict(zip(OUTPUTS, want)), dict(zip(OUTPUTS, got))
        worst["logits_max_abs"] = max(worst["logits_max_abs"], float(np.abs(w["logits"] - g["logits"]).max()))
        worst["activations_r"] = min(worst["activations_r"], _r(w["activations"], g["activations"]))
        worst["gradients_r"] = min(worst["gradients_r"], _r(w["gradients"], g["gradients"]))
        maps_w = gradcam.raw_maps(w["activations"][0], w["gradients"][:, 0])
        maps_g = gradcam.raw_maps(g["activations"][0], g["gradients"][:, 0])
        worst["gradcam_map_r"] = min(worst["gradcam_map_r"], min(class_map_correlations(maps_g, maps_w)))
        if reference is not None:  # each runtime's maps against the PyTorch fp32 engine's
            ref = reference.explain(x)
            maps_r = gradcam.raw_maps(ref.activations, ref.gradients)
            worst["ort_vs_torch_fp32_map_r"] = min(worst["ort_vs_torch_fp32_map_r"],
                                                   min(class_map_correlations(maps_w, maps_r)))
            worst["ov_vs_torch_fp32_map_r"] = min(worst["ov_vs_torch_fp32_map_r"],
                                                  min(class_map_correlations(maps_g, maps_r)))
    out["equal"] = {k: round(v, 5) for k, v in worst.items()}
    plain = {"input": tensor, "with_gradients": np.array(False)}
    full = {"input": tensor, "with_gradients": np.array(True)}
    ms = interleaved({
        "ort_forward": lambda: ort.model.run(["logits"], plain),
        "ov_forward": lambda: run(plain, ("logits",)),
        "ort_explain": lambda: ort.model.run(list(OUTPUTS), full),
        "ov_explain": lambda: run(full, OUTPUTS),
    }, repeats)
    out["p50_ms"] = {k: round(float(np.median(v)), 2) for k, v in ms.items()}
    return out


def compare_head(path: Path, core, repeats: int, bf16: bool) -> dict:
    out: dict = {"file": path.name}
    try:
        compiled, _ = compile_ov(core, path, bf16)
    except Exception as exc:
        return out | {"loads": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}"}
    from engine.backends.onnx_backend import open_session

    head = open_session(path)
    dropout = [float(p) for p in json.loads(head.get_modelmeta().custom_metadata_map.get("lantern.dropout", "[]"))]
    shapes = [tuple(int(d) for d in i.shape[1:]) for i in head.get_inputs() if i.name.startswith("mask")]
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20, *(int(d) for d in head.get_inputs()[0].shape[1:]))).astype(np.float32)
    masks = [((rng.random((20, *shape)) >= p) / (1.0 - p)).astype(np.float32) for p, shape in zip(dropout, shapes)]
    feed = {"head_input": features} | {f"mask{i}": m for i, m in enumerate(masks)}
    run = ov_runner(compiled)
    want, got = head.run(["logits"], feed)[0], run(feed, ("logits",))[0]
    ms = interleaved({"ort_head20": lambda: head.run(["logits"], feed), "ov_head20": lambda: run(feed, ("logits",))},
                     repeats)
    return out | {"loads": True, "logits_max_abs": float(np.abs(want - got).max()),
                  "p50_ms": {k: round(float(np.median(v)), 3) for k, v in ms.items()}}


def compare_bundle(name: str, folder: Path, core, repeats: int, bf16: bool) -> dict:
    from engine.analysis import load_model

    bundle = load_bundle(folder)
    reference = load_model(bundle, "torch").backend if bundle.weights else None
    report = {"bundle": name, "graphs": []}
    for key in ("fp32", "int8"):
        if bundle.onnx.get(key):
            report["graphs"].append(compare_graph(bundle, bundle.onnx[key], core, repeats, bf16, reference))
    if bundle.onnx.get("head"):
        report["head"] = compare_head(bundle.onnx["head"], core, repeats, bf16)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--arch", nargs="*", default=["resnet18", "densenet121"])
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="let OpenVINO compute fp32 graphs in bf16 (its default on CPUs with AMX)")
    args = parser.parse_args()
    import openvino as ov

    core = ov.Core()
    print(json.dumps({"openvino": ov.get_version(), "threads": thread_count(), "bf16": args.bf16}), flush=True)
    if not args.no_demo:
        print(json.dumps(compare_bundle("demo", DEMO_MODEL, core, args.repeats, args.bf16)), flush=True)
    from engine.cli.bench_models import export_and_quantize, make_arch_bundle

    with tempfile.TemporaryDirectory(prefix="lantern-openvino-") as tmp:
        for arch in args.arch:
            folder = make_arch_bundle(arch, Path(tmp))
            export_and_quantize(folder)
            print(json.dumps(compare_bundle(arch, folder, core, args.repeats, args.bf16)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
