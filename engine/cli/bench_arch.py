"""``lantern-engine bench --arch NAME ...``: for each torchvision architecture, a random-weight
bundle made, exported and quantized in a temporary folder (:mod:`engine.cli.bench_models`), each
engine timed in its own subprocess (:mod:`engine.cli.bench_measure`) next to the plain ORT INT8
classifier of the same network, and issue 12's targets checked. ``--model`` uses
:func:`run_engines` too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from engine.cli.bench_models import (
    ARCH_CHANNELS, ARCH_CLASSES, ARCH_DROPOUT, ARCH_SIZE, FAMILIES, PLAIN_KIND, export_and_quantize, failure_reason,
    make_arch_bundle, make_plain,
)
from engine.errors import LanternError


def run_engines(folder: Path, engines: list[str], repeats: int, tmp: Path, throughput: bool,
                refusals: dict | None = None) -> tuple[dict, dict | None]:
    """Each engine's figures in its own subprocess, and the plain ORT INT8 classifier's (timed
    interleaved in the INT8 engine's subprocess, or alone when that engine is not there);
    ``refusals``: engine -> why it is missing, for the report."""
    from engine.backends import available_engines
    from engine.bundle import load_bundle
    from engine.cli.bench_measure import PLAIN_PREFIX, run_in_subprocess

    found = available_engines(load_bundle(folder))
    graph, plain = make_plain(folder, tmp) if "onnx-int8" in engines else (None, None)
    results = {}
    for engine in engines:
        if engine not in found:
            results[engine] = {"error": (refusals or {}).get(engine, "not available for this bundle")}
            continue
        results[engine] = run_in_subprocess(folder, engine, repeats, throughput,
                                            plain=graph if engine == "onnx-int8" else None)
        if engine == "onnx-int8" and "plain_int8" in results[engine]:
            plain = results[engine].pop("plain_int8") | plain
    if graph is not None and "forward" not in plain:
        plain = run_in_subprocess(folder, PLAIN_PREFIX + str(graph), repeats) | plain
    return results, plain


def bench_architecture(arch: str, engines: list[str], repeats: int, tmp: Path) -> dict:
    """Everything ``bench --arch`` reports for one architecture (see the module docstring)."""
    from engine.cli.bench_measure import speed_targets

    report: dict = {"bundle": {"architecture": arch, "input": f"{ARCH_CHANNELS} x {ARCH_SIZE} x {ARCH_SIZE}",
                               "classes": len(ARCH_CLASSES), "dropout": ARCH_DROPOUT, "weights": "random (seed 0)"}}
    try:
        folder = make_arch_bundle(arch, tmp)
    except Exception as exc:
        report["error"] = f"could not build the bundle: {failure_reason(exc)}"
        return report
    report["export"], report["quantize"] = export_and_quantize(folder)
    refusals = {e: f"refused: {report[step].get('refused', 'not available')}"
                for e, step in (("onnx", "export"), ("onnx-int8", "quantize"))}
    report["engines"], report["plain_int8"] = run_engines(folder, engines, repeats, tmp, False, refusals)
    report["speed_targets"] = speed_targets(report["engines"], report["plain_int8"])
    return report


def _ms(figures: dict | None, key: str) -> str:
    if not figures or "error" in figures or key not in figures:
        return "-"
    return f"{figures[key]['p50_ms']:.1f}"


def print_architecture(arch: str, r: dict) -> None:
    b = r["bundle"]
    print(f"\n{arch}: {b['weights']} weights, {b['input']}, {b['classes']} classes, head dropout {b['dropout']}")
    if "error" in r:
        print(f"  {r['error']}")
        return
    e, q = r["export"], r["quantize"]
    print(f"  export: {'refused: ' + e['refused'] if 'refused' in e else 'verified in %.0f s' % e['seconds']}")
    if "refused" in q:
        print(f"  int8:   refused: {q['refused']}")
    else:
        v = q["validation"]
        refuse = "; ".join(q["default_thresholds_would_refuse"]) or "none"
        corr = ", ".join(f"{m} {c:.3f}" for m, c in v["min_map_correlation_with_fp32"].items())
        agreement, size = v["top1_agreement_with_fp32"], v["size_ratio"]
        print(f"  int8:   quantized in {q['seconds']:.0f} s; on {v['heldout_phantoms']} phantoms top-1 agreement "
              f"{'?' if agreement is None else f'{agreement:.2f}'}, min map r {corr or '?'}, size "
              f"{'?' if size is None else f'{size:.0%}'} of fp32 (the default thresholds would refuse it for: {refuse})")
    print(f"  {'engine':14s} {'threads':>7s} {'forward p50':>11s} {'analysis p50':>12s} {'an/fw':>6s} "
          f"{'an/(pre+fw)':>11s}   analysis stages p50 ms (preprocess / explain / maps / uncertainty)")
    for engine, f in r["engines"].items():
        if "error" in f:
            print(f"  {engine:14s} {f['error']}")
            continue
        s = f["stages_ms"]
        stages = " / ".join(f"{s.get(k, 0):.1f}" for k in ("preprocess", "forward", "maps", "uncertainty"))
        print(f"  {engine:14s} {f['threads']:7d} {_ms(f, 'forward'):>11s} {_ms(f, 'analysis'):>12s} "
              f"{f['analysis_over_forward']:6.2f} {f['analysis_over_preprocess_and_forward']:11.2f}   {stages}")
    p = r["plain_int8"]
    if p is not None:
        if "error" in p:
            print(f"  {'plain ORT int8':14s} {p['error']}")
        else:
            agreement = p.get("top1_agreement_with_bundle_graph")
            paired = p.get("paired")
            print(f"  {'plain ORT int8':14s} {p['threads']:7d} {_ms(p, 'forward'):>11s} {'-':>12s} {'-':>6s}   "
                  f"logits-only graph, {p['model_bytes'] / 1e6:.1f} MB"
                  + (f", top-1 agreement with the bundle's graph {agreement:.2f}" if agreement is not None else "")
                  + (f"; interleaved with onnx-int8: plain {paired['plain_p50_ms']:.1f}, int8 forward "
                     f"{paired['engine_forward_p50_ms']:.1f}, int8 analysis {paired['engine_analysis_p50_ms']:.1f} ms"
                     if paired else ""))
    from engine.cli.bench_measure import print_targets

    print_targets(r["speed_targets"], indent="  ")


def arch_command(args: argparse.Namespace, engines: list[str]) -> int:
    from engine.backends.base import THREADS_VARIABLE, thread_count
    from engine.bundle import ARCHITECTURES
    from engine.cli.bench_measure import MC_SAMPLES

    names = [n for a in args.arch for n in (FAMILIES if a == "families" else [a])]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise LanternError(f"unknown architecture {', '.join(unknown)} (known: families, {', '.join(ARCHITECTURES)})")
    load_before = os.getloadavg()[0]
    report: dict = {
        "cpu_count": os.cpu_count(), "threads": thread_count(),
        "threads_variable": os.environ.get(THREADS_VARIABLE) or None, "repeats": args.repeats,
        "mc_samples": MC_SAMPLES, "analysis": "analyze() with default options: Grad-CAM for every class + "
        f"{MC_SAMPLES} MC-dropout samples, on the first demo study", "plain_int8_kind": PLAIN_KIND,
        "architectures": {}}
    if not args.json:
        print(f"bench --arch: {len(names)} architecture(s), {args.repeats} runs each, one subprocess per engine; "
              f"threads {report['threads']} ({report['cpu_count']} CPUs, {THREADS_VARIABLE}="
              f"{report['threads_variable'] or 'unset'}); 1-min load average {load_before:.2f}")
        print("forward: the model alone on the prepared input (ONNX: explain graph, gradient branch off); "
              "analysis: preprocessing + all-class Grad-CAM + 20 MC samples; an/(pre+fw): analysis over "
              "preprocessing + forward (a plain classification of the image); timed interleaved")
        print(f"{PLAIN_KIND}")
    with tempfile.TemporaryDirectory(prefix="lantern-bench-arch-") as tmp:
        for name in names:
            result = bench_architecture(name, engines, args.repeats, Path(tmp) / name)
            report["architectures"][name] = result
            if not args.json:
                print_architecture(name, result)
                sys.stdout.flush()  # a large network takes minutes: show each as it is done
    report["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\n1-min load average {load_before:.2f} before, {report['load_average_1min']['after']} after "
              f"(other processes on the CPU skew every figure; re-measure on a quiet machine)")
    return 0
