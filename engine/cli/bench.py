"""``lantern-engine bench``: the engines side by side (torch fp32, onnx fp32, onnx int8), one run.

``--model BUNDLE`` (default: the demo model) measures that bundle's engines; ``--arch NAME ...``
(``families``: one member of every torchvision family) builds a random-weight bundle of each
architecture in a temporary folder, exports and quantizes it, and measures what runs
(:mod:`engine.cli.bench_arch`, :mod:`engine.cli.bench_models`). For each engine, in its own
fresh subprocess (:mod:`engine.cli.bench_measure`; so memory figures belong to that engine alone):

plain forward
    the model alone on one already prepared input (logits only; for ONNX the gradient branch of
    the explain graph is switched off), p50/p95/p99 over ``--repeats`` runs after warm-up.
full analysis
    ``analyze`` on the demo image: preprocessing + one forward with every class's gradient +
    Grad-CAM maps for all classes (on the feature grid; warped onto the source only when shown)
    + 20 MC-dropout samples; with the median of each of those stages.
throughput
    images/s of ``forward`` on a batch of 32 prepared images.
peak memory
    ``VmHWM`` (peak resident set size, from /proc/self/status) of the engine's subprocess at the
    end of its run, and how much it rose over the RSS measured right before the engine was opened
    (after importing Lantern's engine package; for torch the rise includes importing torch).
    Native allocations count, unlike tracemalloc.
model size
    bytes of the files the engine reads (torch: safetensors; onnx: model + head).

plain ORT INT8 classifier
    the same network exported as a plain classifier (input -> logits) and quantized with
    Lantern's static INT8 settings, timed with Lantern's session options (``bench_models``).

Ratios compare each engine with torch fp32 (speed-ups > 1 mean faster than torch). Issue 12's
targets (``bench_measure.speed_targets``): analysis/forward <= 1.3 on torch and on INT8, INT8
analysis <= 1.2 plain ORT INT8 classifications.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.backends import available_engines
from engine.backends.base import THREADS_VARIABLE, thread_count
from engine.bundle import load_bundle
from engine.cli.bench_measure import (  # noqa: F401 (bench_engine, THROUGHPUT_BATCH: used by tests)
    MC_SAMPLES, THROUGHPUT_BATCH, bench_engine, demo_image, percentiles, print_targets, speed_targets,
    timed,
)
from engine.files import folder_size
from engine.images import SourceImage
from engine.resources import ROOT

BENCH_ENGINES = ("torch", "onnx", "onnx-int8")
TARGET_INT8_SPEEDUP = 4.0  # int8 full analysis vs torch fp32 full analysis
TARGET_ANALYSIS_OVER_FORWARD = 1.5  # int8 full analysis vs its own plain forward
PACKAGE_BUDGET_MB = 350  # issue 6: the packaged app's folder (build/package.py checks it too)
DEFAULT_PACKAGE = ROOT / "dist" / "lantern"
_demo_image, _timed, _percentiles = demo_image, timed, percentiles  # earlier names


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


BATCH_IMAGES = 200
TARGET_BATCH_IMAGES_PER_S = 50.0


def bench_batch(bundle_path: Path, engine: str, images: int = BATCH_IMAGES) -> dict:
    """Batch triage throughput: ``images`` demo-size (512x512) phantom DICOMs in a temporary
    folder through ``engine.workflows.batch`` as ``lantern-engine batch`` runs it (scan, load, preprocess,
    batched forward, 20 MC samples, one result JSON per image, the CSV); model loading excluded.
    The second run over the same folder shows what resuming costs when everything is done."""
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
            "throughput_ratio": round(r["throughput_images_per_s"] / base["throughput_images_per_s"], 2)
            if "throughput_images_per_s" in r and "throughput_images_per_s" in base else None,
            "peak_rss_ratio": round(r["peak_rss_mb"] / base["peak_rss_mb"], 2),
            "model_size_ratio": round(r["model_bytes"] / base["model_bytes"], 3),
        }
    return out


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "service", False):
        from engine.cli.bench_service import service_command

        return service_command(args)
    if getattr(args, "batch_ray", False):
        from engine.cli.bench_ray import bench_ray_command

        return bench_ray_command(args)
    if getattr(args, "listen", False):
        from engine.cli.bench_listen import listen_bench_command

        return listen_bench_command(args)
    if getattr(args, "ood", False):
        from engine.cli.bench_ood import ood_bench, print_ood_report

        engine = "onnx-int8" if args.engine == "auto" else args.engine
        report = ood_bench(args.model, engine)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_ood_report(report)
        return 0
    if getattr(args, "arch", None):
        from engine.cli.bench_arch import arch_command

        return arch_command(args, list(BENCH_ENGINES) if args.engine == "auto" else [args.engine])
    bundle = load_bundle(args.model)
    bundle.require_single_input("bench")  # its forward and plain classifier take one image
    image = _demo_image()
    found = available_engines(bundle)
    engines = [e for e in BENCH_ENGINES if e in found] if args.engine == "auto" else [args.engine]
    load_before = os.getloadavg()[0]
    from engine.cli.bench_arch import run_engines

    with tempfile.TemporaryDirectory(prefix="lantern-bench-plain-") as tmp:
        results, plain = run_engines(Path(args.model), engines, args.repeats, Path(tmp), throughput=True)
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
        # Issue 12: the INT8 engine against a plain onnxruntime INT8 classifier of the same network
        # (engine.cli.bench_models.plain_int8_classifier), and analysis/forward on torch and INT8.
        "plain_int8": plain,
        "speed_targets": speed_targets(results, plain),
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
    if plain is not None:
        paired = plain.get("paired")
        print(f"plain ORT int8 classifier (same network, input -> logits only, Lantern's static INT8 settings): "
              + (plain["error"] if "error" in plain else f"forward p50 {plain['forward']['p50_ms']:.1f} ms, "
                 f"p95 {plain['forward']['p95_ms']:.1f} ms, {plain['threads']} threads")
              + (f"; interleaved with onnx-int8: int8 forward {paired['engine_forward_p50_ms']:.1f} ms, "
                 f"analysis {paired['engine_analysis_p50_ms']:.1f} ms" if paired else ""))
    for name, t in report.get("targets", {}).items():
        print(f"target {name}: {t['value']} (want {t['target']}) {'met' if t['met'] else 'NOT met'}")
    print_targets(report["speed_targets"])
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
