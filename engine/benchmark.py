"""``lantern-engine bench``: the engine's figures, printed by one command.

Full analysis = preprocessing + one forward with all-class gradients + all-class maps for one
method warped onto the source image + 20 MC-dropout samples. Plain forward = the model alone on
an already prepared input. Both timed on the same demo image, in one process, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .analysis import AnalysisOptions, analyze, load_model
from .backends import available_engines
from .bundle import load_bundle
from .images import SourceImage, load_image
from .preprocess import prepare_input


def _demo_image() -> SourceImage:
    from .cli import DEMO_STUDIES

    for path in sorted(DEMO_STUDIES.glob("*.dcm")):
        return load_image(path)
    from .phantoms import make_phantom
    from .training import phantom_image

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


def bench_engine(bundle_path: Path, engine: str, image: SourceImage, repeats: int) -> dict:
    model = load_model(bundle_path, engine)
    tensor = prepare_input(image, model.bundle.input).tensor
    options = AnalysisOptions(methods=("gradcam",), mc_samples=20)
    forward = _timed(lambda: model.backend.forward(tensor), repeats)
    full = _timed(lambda: analyze(image, model, options), repeats)
    return {
        "forward": _percentiles(forward),
        "analysis": _percentiles(full),
        "analysis_over_forward": round(float(np.median(full) / np.median(forward)), 3),
    }


def bench_command(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.model)
    image = _demo_image()
    engines = available_engines(bundle) if args.engine == "auto" else [args.engine]
    report = {
        "model": f"{bundle.name} {bundle.version}",
        "image": f"{image.path.name} {image.shape[1]}x{image.shape[0]}",
        "repeats": args.repeats,
        "engines": {e: bench_engine(args.model, e, image, args.repeats) for e in engines},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"Model {report['model']} on {report['image']}, {args.repeats} runs each (median = p50)")
    for engine, r in report["engines"].items():
        f, a = r["forward"], r["analysis"]
        print(f"  {engine:10s} forward p50 {f['p50_ms']:8.2f} ms  p95 {f['p95_ms']:8.2f}  p99 {f['p99_ms']:8.2f}")
        print(f"  {'':10s} analysis p50 {a['p50_ms']:7.2f} ms  p95 {a['p95_ms']:8.2f}  p99 {a['p99_ms']:8.2f}"
              f"   ratio analysis/forward {r['analysis_over_forward']:.2f} (target <= 1.3)")
    return 0
