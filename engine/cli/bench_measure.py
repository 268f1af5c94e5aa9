"""How ``lantern-engine bench`` times one engine: in a fresh subprocess of its own, so that memory
figures belong to that engine alone and no engine inherits another's threads or caches.

``python -m engine.cli.bench_measure BUNDLE ENGINE REPEATS [--no-throughput]`` prints one JSON
line with the figures of :func:`bench_engine`; ``... BUNDLE plain:GRAPH.onnx REPEATS`` times a
plain classifier graph (input -> logits) on the same prepared input (:func:`bench_plain_graph`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.backends.base import thread_count
from engine.bundle import load_bundle
from engine.images import SourceImage, load_image
from engine.preprocess import prepare_input
from engine.resources import DEMO_STUDIES, ROOT
from engine.uncertainty import DEFAULT_SAMPLES

MC_SAMPLES = DEFAULT_SAMPLES
THROUGHPUT_BATCH = 32
PLAIN_PREFIX = "plain:"


def demo_image() -> SourceImage:
    for path in sorted(DEMO_STUDIES.glob("*.dcm")):
        return load_image(path)
    from engine.making.training import phantom_image
    from engine.synthetic.phantoms import make_phantom

    return phantom_image(make_phantom(np.random.default_rng(0), 1, 512).image, "phantom")


def timed(fn, repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def percentiles(ms: np.ndarray) -> dict:
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def model_files(bundle, engine: str) -> list[Path]:
    if engine == "torch":
        return [bundle.weights]
    files = [bundle.onnx["int8" if engine == "onnx-int8" else "fp32"]]
    if "head" in bundle.onnx:
        files.append(bundle.onnx["head"])
    return files


def _threads(engine: str) -> int:
    if engine == "torch":
        import torch

        return torch.get_num_threads()  # the torch engine keeps torch's own default
    return thread_count()


def interleaved(calls: dict, repeats: int, warmup: int = 3) -> dict[str, np.ndarray]:
    """Milliseconds of each call, run in turn within every round: another process taking the
    CPU for a while slows all of them alike, so their ratio stays meaningful on a busy machine
    (timed one block after another, a ratio could come out below 1)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) * 1000.0 for name, t in times.items()}


def bench_engine(bundle_path: Path, engine: str, image: SourceImage, repeats: int, throughput: bool = True,
                 plain: Path | None = None) -> dict:
    """Figures for one engine, measured in this process.

    ``forward``, ``analysis`` and preprocessing alone are timed interleaved (:func:`interleaved`);
    ``analysis_over_preprocess_and_forward`` compares an analysis with a plain classification of
    the image (preprocessing + forward), ``analysis_over_forward`` (issue 12's ratio) with the
    forward pass alone. ``stages_ms``: the
    median of each stage of ``analyze`` as it times itself (preprocess, forward = explain with
    every class's gradient, maps, uncertainty), to see where an analysis spends what a plain
    forward does not. ``plain``: a plain classifier graph to time interleaved with this engine's
    forward and analysis, after the memory figures (:func:`plain_figures`)."""
    rss_before = status_kb("VmRSS")
    model = load_model(bundle_path, engine)
    tensor = prepare_input(image, model.bundle.input).tensor
    options = AnalysisOptions(methods=("gradcam",), mc_samples=MC_SAMPLES)
    stages: dict[str, list[float]] = {}

    def analysis() -> None:
        for stage, seconds in analyze(image, model, options).timings.items():
            stages.setdefault(stage, []).append(seconds * 1000.0)

    ms = interleaved({"forward": lambda: model.backend.forward(tensor), "analysis": analysis,
                      "preprocess": lambda: prepare_input(image, model.bundle.input)}, repeats)
    forward, full, prepare = (float(np.median(ms[k])) for k in ("forward", "analysis", "preprocess"))
    figures = {
        "forward": percentiles(ms["forward"]),
        "analysis": percentiles(ms["analysis"]),
        "analysis_over_forward": round(full / forward, 3),
        # A plain classification of an image needs the same preprocessing an analysis does.
        "preprocess_p50_ms": round(prepare, 3),
        "analysis_over_preprocess_and_forward": round(full / (prepare + forward), 3),
        "stages_ms": {k: round(float(np.median(v[-repeats:])), 3) for k, v in stages.items()},
        "threads": _threads(engine),
    }
    if throughput:
        batch = np.repeat(tensor, THROUGHPUT_BATCH, axis=0)
        per_batch = timed(lambda: model.backend.forward(batch), max(3, repeats // 10), warmup=1)
        figures["throughput_images_per_s"] = round(float(THROUGHPUT_BATCH / (np.median(per_batch) / 1000.0)), 2)
    peak = status_kb("VmHWM")
    figures.update({
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_rss_rise_mb": round((peak - rss_before) / 1024, 1),
        "model_bytes": sum(f.stat().st_size for f in model_files(model.bundle, engine)),
    })
    if plain is not None:
        figures["plain_int8"] = plain_figures(plain, tensor, repeats, {
            "engine_forward": lambda: model.backend.forward(tensor), "engine_analysis": analysis})
    return figures


def plain_figures(graph: Path, tensor: np.ndarray, repeats: int, others: dict | None = None) -> dict:
    """A plain classifier graph (``input`` -> ``logits``) in onnxruntime with the session options
    Lantern's ONNX engines use (threads, no spinning, all graph optimisations), on the same
    prepared input the engines get (preprocessing is not timed, as for ``forward``); timed
    interleaved with ``others`` (an engine's forward and analysis) when given, whose medians and
    ratios to the plain forward come back under ``paired``."""
    from engine.backends.onnx_backend import open_session

    session = open_session(graph)
    name = session.get_inputs()[0].name
    ms = interleaved({"plain": lambda: session.run(None, {name: tensor}), **(others or {})}, repeats)
    plain = ms.pop("plain")
    out = {"forward": percentiles(plain), "threads": thread_count(), "model_bytes": graph.stat().st_size}
    if ms:
        base = float(np.median(plain))
        out["paired"] = {"plain_p50_ms": round(base, 3),
                         **{f"{k}_p50_ms": round(float(np.median(v)), 3) for k, v in ms.items()},
                         **{f"{k}_over_plain": round(float(np.median(v)) / base, 3) for k, v in ms.items()}}
    return out


def bench_plain_graph(bundle_path: Path, graph: Path, image: SourceImage, repeats: int) -> dict:
    """:func:`plain_figures` alone, for a bundle none of whose INT8 engines runs."""
    return plain_figures(graph, prepare_input(image, load_bundle(bundle_path).input).tensor, repeats)


def run_in_subprocess(bundle_path: Path, engine: str, repeats: int, throughput: bool = True,
                      plain: Path | None = None) -> dict:
    """The figures of one engine (or ``plain:GRAPH``) from a fresh interpreter; ``{"error": ...}``
    with the last line it printed on failure."""
    command = [sys.executable, "-m", "engine.cli.bench_measure", str(bundle_path), engine, str(repeats)]
    command += ([] if throughput else ["--no-throughput"]) + ([] if plain is None else ["--plain", str(plain)])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(argv: list[str]) -> int:
    bundle_path, engine, repeats = Path(argv[0]), argv[1], int(argv[2])
    if engine.startswith(PLAIN_PREFIX):
        figures = bench_plain_graph(bundle_path, Path(engine[len(PLAIN_PREFIX):]), demo_image(), repeats)
    else:
        plain = Path(argv[argv.index("--plain") + 1]) if "--plain" in argv else None
        figures = bench_engine(bundle_path, engine, demo_image(), repeats, throughput="--no-throughput" not in argv,
                               plain=plain)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))


# Issue 12's speed targets, for every architecture: an analysis (all-class maps of one method +
# MC dropout) costs at most 1.3 plain forwards on torch and on INT8, and the INT8 analysis at most
# 1.2 plain onnxruntime INT8 classifications of the same network.
TARGET_ANALYSIS_OVER_FORWARD_12 = 1.3
TARGET_INT8_OVER_PLAIN = 1.2


def _target(value: float | None, limit: float) -> dict:
    return {"value": None if value is None else round(value, 3), "target": f"<= {limit}",
            "met": value is not None and value <= limit}


def speed_targets(engines: dict, plain: dict | None) -> dict:
    """Issue 12's targets for one model from its engines' figures and the plain INT8 classifier's."""
    out = {}
    for engine in ("torch", "onnx-int8"):
        r = engines.get(engine)
        if r and "error" not in r:
            out[f"{engine} analysis/forward"] = _target(r["analysis_over_forward"], TARGET_ANALYSIS_OVER_FORWARD_12)
    int8 = engines.get("onnx-int8")
    if int8 and "error" not in int8 and plain and "error" not in plain:
        # Timed interleaved in the INT8 engine's process when it could be (see plain_figures).
        paired = plain.get("paired", {}).get("engine_analysis_over_plain")
        ratio = paired if paired is not None else int8["analysis"]["p50_ms"] / plain["forward"]["p50_ms"]
        out["onnx-int8 analysis/plain ORT int8"] = _target(ratio, TARGET_INT8_OVER_PLAIN)
    return out


def print_targets(targets: dict, indent: str = "") -> None:
    for name, t in targets.items():
        print(f"{indent}target (#12) {name}: {t['value']} (want {t['target']}) {'met' if t['met'] else 'MISSED'}")
