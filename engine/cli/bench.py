"""``lantern-engine bench``: the engines side by side (torch fp32, onnx fp32, onnx int8), one run.

For each engine, in its own fresh subprocess (so memory figures belong to that engine alone):

plain forward
    the model alone on one already prepared input (logits only; for ONNX the gradient branch of
    the explain graph is switched off), p50/p95/p99 over ``--repeats`` runs after warm-up.
full analysis
    ``analyze`` on the demo image: preprocessing + one forward with every class's gradient +
    Grad-CAM maps for all classes warped onto the source image + 20 MC-dropout samples.
throughput
    images/s of ``forward`` on a batch of 32 prepared images.
peak memory
    ``VmHWM`` (peak resident set size, from /proc/self/status) of the engine's subprocess at the
    end of its run, and how much it rose over the RSS measured right before the engine was opened
    (after importing Lantern's engine package; for torch the rise includes importing torch).
    Native allocations count, unlike tracemalloc.
model size
    bytes of the files the engine reads (torch: safetensors; onnx: model + head).

Ratios compare each engine with torch fp32 (speed-ups > 1 mean faster than torch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.backends import available_engines
from engine.backends.base import THREADS_VARIABLE, thread_count
from engine.bundle import load_bundle
from engine.files import folder_size
from engine.images import SourceImage, load_image
from engine.preprocess import prepare_input
from engine.resources import DEMO_STUDIES, ROOT
from engine.uncertainty import DEFAULT_SAMPLES

BENCH_ENGINES = ("torch", "onnx", "onnx-int8")
MC_SAMPLES = DEFAULT_SAMPLES
THROUGHPUT_BATCH = 32
TARGET_INT8_SPEEDUP = 4.0  # int8 full analysis vs torch fp32 full analysis
TARGET_ANALYSIS_OVER_FORWARD = 1.5  # int8 full analysis vs its own plain forward
PACKAGE_BUDGET_MB = 350  # issue 6: the packaged app's folder (build/package.py checks it too)
DEFAULT_PACKAGE = ROOT / "dist" / "lantern"


def _demo_image() -> SourceImage:

    for path in sorted(DEMO_STUDIES.glob("*.dcm")):
        return load_image(path)
    from engine.synthetic.phantoms import make_phantom
    from engine.making.training import phantom_image

    return phantom_image(make_phantom(np.random.default_rng(0), 1, 512).image, "phantom")


def _timed(fn, repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def _percentiles(ms: np.ndarray) -> dict:
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


FAITHFULNESS_ENGINE = "onnx-int8"
TARGET_FAITHFULNESS_MS = 1000.0


def bench_faithfulness(bundle_path: Path, image: SourceImage, repeats: int) -> dict:
    """Deletion + insertion for one map and one class (the predicted one) on the INT8 engine:
    16 steps each, 33 forward passes in two batches (engine.trust.faithfulness)."""
    from engine.trust.faithfulness import score_analysis

    model = load_model(bundle_path, FAITHFULNESS_ENGINE)
    analysis = analyze(image, model, AnalysisOptions(methods=("gradcam",), mc_samples=0))
    ms = _timed(lambda: score_analysis(analysis, model.backend, "gradcam", analysis.predicted),
                max(3, repeats // 10), warmup=1)
    p50 = float(np.percentile(ms, 50))
    return {"engine": FAITHFULNESS_ENGINE, **_percentiles(ms), "target": f"< {TARGET_FAITHFULNESS_MS:.0f} ms",
            "met": p50 < TARGET_FAITHFULNESS_MS}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _model_files(bundle, engine: str) -> list[Path]:
    if engine == "torch":
        return [bundle.weights]
    files = [bundle.onnx["int8" if engine == "onnx-int8" else "fp32"]]
    if "head" in bundle.onnx:
        files.append(bundle.onnx["head"])
    return files


def bench_engine(bundle_path: Path, engine: str, image: SourceImage, repeats: int) -> dict:
    """Figures for one engine, measured in this process."""
    rss_before = _status_kb("VmRSS")
    model = load_model(bundle_path, engine)
    tensor = prepare_input(image, model.bundle.input).tensor
    options = AnalysisOptions(methods=("gradcam",), mc_samples=MC_SAMPLES)
    forward = _timed(lambda: model.backend.forward(tensor), repeats)
    full = _timed(lambda: analyze(image, model, options), repeats)
    batch = np.repeat(tensor, THROUGHPUT_BATCH, axis=0)
    rounds = max(3, repeats // 10)
    per_batch = _timed(lambda: model.backend.forward(batch), rounds, warmup=1)
    peak = _status_kb("VmHWM")
    return {
        "forward": _percentiles(forward),
        "analysis": _percentiles(full),
        "analysis_over_forward": round(float(np.median(full) / np.median(forward)), 3),
        "throughput_images_per_s": round(float(THROUGHPUT_BATCH / (np.median(per_batch) / 1000.0)), 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_rss_rise_mb": round((peak - rss_before) / 1024, 1),
        "model_bytes": sum(f.stat().st_size for f in _model_files(model.bundle, engine)),
    }


BATCH_IMAGES = 200
TARGET_BATCH_IMAGES_PER_S = 50.0


def bench_batch(bundle_path: Path, engine: str, images: int = BATCH_IMAGES) -> dict:
    """Batch triage throughput: ``images`` demo-size (512x512) phantom DICOMs in a temporary
    folder through ``engine.workflows.batch`` as ``lantern-engine batch`` runs it (scan, load, preprocess,
    batched forward, 20 MC samples, one result JSON per image, the CSV); model loading excluded.
    The second run over the same folder shows what resuming costs when everything is done."""
    import tempfile

    from engine.workflows.batch import BatchOptions, run_batch
    from engine.synthetic.demo_data import radiograph_dicom_bytes
    from engine.files import write_bytes_atomic
    from engine.synthetic.phantoms import make_phantom

    model = load_model(bundle_path, engine)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lantern-batch-bench-") as tmp:
        source, out = Path(tmp) / "images", Path(tmp) / "out"
        for i in range(images):
            pixels = make_phantom(rng, i % 3, 512).image
            write_bytes_atomic(source / f"{i:03d}.dcm", radiograph_dicom_bytes(pixels, key=f"bench{i}"))
        options = BatchOptions(mc_samples=MC_SAMPLES)
        start = time.perf_counter()
        result = run_batch(source, out, model, options)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        run_batch(source, out, model, options)
        rerun = time.perf_counter() - start
    return {"engine": engine, "images": images, "analysed": result.analysed, "seconds": round(seconds, 3),
            "images_per_s": round(result.analysed / seconds, 1), "resume_seconds": round(rerun, 3),
            "target": f">= {TARGET_BATCH_IMAGES_PER_S}", "met": result.analysed / seconds >= TARGET_BATCH_IMAGES_PER_S}


def _bench_in_subprocess(bundle_path: Path, engine: str, repeats: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli.bench", str(bundle_path), engine, str(repeats)],
        capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratios(report: dict) -> dict:
    base = report.get("torch")
    if not base or "error" in base:
        return {}
    out = {}
    for engine, r in report.items():
        if "error" in r:
            continue
        out[engine] = {
            "forward_speedup": round(base["forward"]["p50_ms"] / r["forward"]["p50_ms"], 2),
            "analysis_speedup": round(base["analysis"]["p50_ms"] / r["analysis"]["p50_ms"], 2),
            "throughput_ratio": round(r["throughput_images_per_s"] / base["throughput_images_per_s"], 2),
            "peak_rss_ratio": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2),
            "model_size_ratio": round(r["model_bytes"] / base["model_bytes"], 3),
        }
    return out


def bench_command(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.model)
    image = _demo_image()
    found = available_engines(bundle)
    engines = [e for e in BENCH_ENGINES if e in found] if args.engine == "auto" else [args.engine]
    load_before = os.getloadavg()[0]
    results = {e: _bench_in_subprocess(Path(args.model), e, args.repeats) for e in engines}
    report = {
        # Other processes on the machine skew every figure (2 cores: one busy core can double the
        # latency of an engine that computes on both); the 1-minute load average before and after
        # says how quiet it was.
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpu_count": os.cpu_count(),
        # What the ONNX engines compute on (the subprocesses inherit LANTERN_THREADS).
        "threads": thread_count(),
        "model": f"{bundle.name} {bundle.version}",
        "image": f"{image.path.name} {image.shape[1]}x{image.shape[0]}",
        "repeats": args.repeats,
        "mc_samples": MC_SAMPLES,
        "throughput_batch": THROUGHPUT_BATCH,
        "engines": results,
        "vs_torch": _ratios(results),
    }
    # The batch figure is for the engines a triage runs on; torch explains one image at a time.
    batch_engine = next((e for e in ("onnx-int8", "onnx") if e in engines), None)
    report["batch"] = bench_batch(Path(args.model), batch_engine) if batch_engine else None
    int8, ratios = results.get("onnx-int8"), report["vs_torch"].get("onnx-int8")
    if int8 and "error" not in int8:
        report["targets"] = {
            "int8_analysis_speedup_vs_torch": {
                "value": ratios["analysis_speedup"] if ratios else None, "target": f">= {TARGET_INT8_SPEEDUP}",
                "met": bool(ratios and ratios["analysis_speedup"] >= TARGET_INT8_SPEEDUP)},
            "int8_analysis_over_forward": {
                "value": int8["analysis_over_forward"], "target": f"<= {TARGET_ANALYSIS_OVER_FORWARD}",
                "met": int8["analysis_over_forward"] <= TARGET_ANALYSIS_OVER_FORWARD},
        }
    if FAITHFULNESS_ENGINE in found:
        report["faithfulness"] = bench_faithfulness(Path(args.model), image, args.repeats)
    report["package"] = package_size(args.package or DEFAULT_PACKAGE)
    if args.json:
        print(json.dumps(report))
        return 0
    load = report["load_average_1min"]
    print(f"Model {report['model']} on {report['image']}, {args.repeats} runs each, one subprocess per engine "
          f"({report['cpu_count']} CPUs, load average {load['before']} before, {load['after']} after)")
    print(f"threads   {report['threads']} per ONNX session (the cores this process may use, lowered by "
          f"{THREADS_VARIABLE}, here {os.environ.get(THREADS_VARIABLE) or 'unset'})")
    print(f"{'engine':10s} {'forward p50/p95/p99 ms':>26s} {'analysis p50/p95/p99 ms':>27s} "
          f"{'an/fw':>6s} {'img/s@32':>9s} {'peak MB':>8s} {'rise MB':>8s} {'size MB':>8s}")
    for engine, r in results.items():
        if "error" in r:
            print(f"{engine:10s} failed: {r['error']}")
            continue
        f, a = r["forward"], r["analysis"]
        print(f"{engine:10s} {f['p50_ms']:8.1f} {f['p95_ms']:8.1f} {f['p99_ms']:8.1f} "
              f"{a['p50_ms']:9.1f} {a['p95_ms']:8.1f} {a['p99_ms']:8.1f} {r['analysis_over_forward']:6.2f} "
              f"{r['throughput_images_per_s']:9.1f} {r['peak_rss_mb']:8.0f} {r['peak_rss_rise_mb']:8.0f} "
              f"{r['model_bytes'] / 1e6:8.1f}")
    for engine, q in report["vs_torch"].items():
        print(f"vs torch  {engine:10s} forward x{q['forward_speedup']:.2f}  analysis x{q['analysis_speedup']:.2f}  "
              f"throughput x{q['throughput_ratio']:.2f}  peak memory x{q['peak_rss_ratio']:.2f}  "
              f"size x{q['model_size_ratio']:.3f}")
    b = report["batch"] or {}
    if b:
        print(f"batch     {b['engine']}: {b['images']} images 512x512 DICOM in {b['seconds']:.2f} s = "
              f"{b['images_per_s']:.1f} images/s (want {b['target']}: {'met' if b['met'] else 'NOT met'}); "
              f"resumed run {b['resume_seconds']:.2f} s")
    for name, t in report.get("targets", {}).items():
        print(f"target {name}: {t['value']} (want {t['target']}) {'met' if t['met'] else 'NOT met'}")
    if "faithfulness" in report:
        f = report["faithfulness"]
        print(f"faithfulness {f['engine']} one map + one class: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms "
              f"(want {f['target']}: {'met' if f['met'] else 'NOT met'})")
    p = report["package"]
    if p["built"]:
        print(f"package   {p['folder']}: {p['mb']:.0f} MB (want <= {p['budget_mb']} MB: "
              f"{'met' if p['met'] else 'NOT met'}; cold start: {p['folder']}/lantern --selftest)")
    else:
        print(f"package   not built at {p['folder']} (make package)")
    return 0


def package_size(folder: Path) -> dict:
    """The packaged app's folder size against issue 6's budget (make package builds it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {"folder": str(folder), "built": False}
    size = folder_size(folder)
    return {"folder": str(folder), "built": True, "mb": round(size / 1e6, 1), "budget_mb": PACKAGE_BUDGET_MB,
            "met": size / 1e6 <= PACKAGE_BUDGET_MB}


def _worker(argv: list[str]) -> int:
    bundle_path, engine, repeats = Path(argv[0]), argv[1], int(argv[2])
    print(json.dumps(bench_engine(bundle_path, engine, _demo_image(), repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
