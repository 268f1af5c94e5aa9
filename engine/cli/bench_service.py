"""``lantern-engine bench --service``: what the HTTP service costs over analysing in process.

A real ``lantern-engine serve`` in a subprocess on a free loopback port (INT8 unless
``--engine`` says otherwise), driven by httpx clients on threads of this process, one keep-alive
connection each:

requests per second and p50/p95 latency
    for ``POST /classify`` and ``POST /explain`` (Grad-CAM, the predicted class's PNG overlay:
    the defaults), with 1 and with 4 concurrent clients, after a warm-up.
overhead
    the p50 latency of one client's requests over the p50 of the same work in this process on
    the same 512 x 512 DICOM: ``load_image`` + ``analyze`` (+ the PNG overlay for explain) + the
    result record. The rest is HTTP, the multipart upload, the temporary file and JSON. The two
    are timed interleaved (bench_measure.interleaved), so a busy machine slows both alike.
    Target: at most 1.3x (issue 18).

Both processes share the machine's cores, so the clients' own work counts against the service
at 4 clients; the 1-minute load average before and after says how quiet the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.cli.bench_measure import interleaved, percentiles
from engine.errors import LanternError
from engine.exports.overlay import encode_png, render_overlay
from engine.images import load_image
from engine.resources import DEMO_STUDIES, ROOT

TARGET_OVERHEAD = 1.3
CLIENT_COUNTS = (1, 4)
ENDPOINTS = ("/classify", "/explain")
IMAGE = DEMO_STUDIES / "demo_nodule.dcm"
WARMUP = 5
_LISTENING = re.compile(rb"on http://127\.0\.0\.1:(\d+) ")


def overhead_calls(path: Path, model, client) -> dict:
    """Per endpoint, the work in this process and the same work asked of the service."""
    data = path.read_bytes()

    def classify():
        return analyze(load_image(path, with_tags=False), model, AnalysisOptions(methods=())).to_dict()

    def explain():
        image = load_image(path, with_tags=False)
        analysis = analyze(image, model, AnalysisOptions(methods=("gradcam",)))
        encode_png(render_overlay(image, analysis.maps["gradcam"].normalized_map(analysis.predicted)))
        return analysis.to_dict("gradcam")

    def served(endpoint: str):
        def call():
            r = client.post(endpoint, files={"file": ("image.dcm", data, "application/dicom")})
            if r.status_code != 200:
                raise LanternError(f"the service answered {endpoint} with {r.status_code}: {r.text[:200]}")
        return call

    return {"/classify in process": classify, "/classify": served("/classify"),
            "/explain in process": explain, "/explain": served("/explain")}


def _start_service(model: Path, engine: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "serve", "--port", "0", "--model", str(model),
                                "--engine", engine], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = process.stdout.readline()
    found = _LISTENING.search(line)
    if not found:
        process.kill()
        raise LanternError(f"the service did not start: {line.decode(errors='replace').strip()}")
    return process, f"http://127.0.0.1:{int(found.group(1))}"


def drive(url: str, endpoint: str, clients: int, per_client: int, data: bytes) -> dict:
    """``clients`` threads, each sending ``per_client`` requests one after another."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for n in range(WARMUP + per_client):
                start = time.perf_counter()
                r = c.post(endpoint, files={"file": ("image.dcm", data, "application/dicom")})
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                    elif n >= WARMUP:
                        latencies.append(ms)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started  # warm-up included in the wall time, so scale by count
    total = clients * (WARMUP + per_client)
    return {"clients": clients, "requests": len(latencies), "failed": len(failures),
            "requests_per_s": round(total / seconds, 2), **percentiles(np.array(latencies or [np.nan]))}


def service_bench(model_path: Path, engine: str, repeats: int) -> dict:
    import httpx

    load_before = os.getloadavg()[0]
    model = load_model(model_path, engine)
    data = IMAGE.read_bytes()
    process, url = _start_service(model_path, engine)
    try:
        deadline = time.monotonic() + 60
        while True:  # the socket is bound before the app is up: wait for /healthz
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=120) as client:
            paired = interleaved(overhead_calls(IMAGE, model, client), repeats, warmup=WARMUP)
        served = {e: [drive(url, e, n, repeats, data) for n in CLIENT_COUNTS] for e in ENDPOINTS}
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = {"model": f"{model.bundle.name} {model.bundle.version}", "engine": model.engine,
              "image": f"{IMAGE.name} 512x512", "repeats": repeats, "cpu_count": os.cpu_count(),
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "paired": {name: percentiles(ms) for name, ms in paired.items()}, "service": served, "overhead": {}}
    for endpoint in ENDPOINTS:
        ratio = float(np.median(paired[endpoint]) / np.median(paired[f"{endpoint} in process"]))
        report["overhead"][endpoint] = {"value": round(ratio, 3), "target": f"<= {TARGET_OVERHEAD}",
                                        "met": bool(ratio <= TARGET_OVERHEAD)}
    return report


def service_command(args: argparse.Namespace) -> int:
    engine = "onnx-int8" if args.engine == "auto" else args.engine
    report = service_bench(Path(args.model), engine, max(args.repeats, 40))
    if args.json:
        print(json.dumps(report))
        return 0
    load = report["load_average_1min"]
    print(f"Service {report['model']} ({report['engine']}) on {report['image']}, {report['repeats']} requests per "
          f"client after {WARMUP} warm-up ({report['cpu_count']} CPUs, load average {load['before']} before, "
          f"{load['after']} after)")
    for endpoint in ENDPOINTS:
        for name in (f"{endpoint} in process", endpoint):
            p = report["paired"][name]
            print(f"{endpoint:10s} {'in process' if name != endpoint else 'served':10s} interleaved  "
                  f"p50 {p['p50_ms']:7.1f} ms  p95 {p['p95_ms']:7.1f} ms")
        for r in report["service"][endpoint]:
            print(f"{endpoint:10s} {r['clients']} client{'s' if r['clients'] > 1 else ' '} at once  "
                  f"p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  {r['requests_per_s']:6.1f} requests/s"
                  + (f"  ({r['failed']} failed)" if r["failed"] else ""))
    for endpoint, o in report["overhead"].items():
        print(f"overhead {endpoint}, one client, over the same work in process: x{o['value']:.2f} (want {o['target']}: "
              f"{'met' if o['met'] else 'NOT met'})")
    return 0
