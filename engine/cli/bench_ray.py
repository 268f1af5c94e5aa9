"""``lantern-engine bench --batch-ray``: the batch on Ray against the local batch, on this machine.

``--images`` copies of the demo radiographs (512 x 512 DICOM, a new instance each, ten a study)
in a temporary folder go through ``lantern-engine batch``'s triage (onnx-int8 by default, 20
MC-dropout samples, one result JSON each, the worklist) three times: the local batch, then on a
local Ray instance (loopback) with one worker (all the CPUs) and with two (a CPU each). Model
loading and the Ray instance's start are left out, as bench's other batch figures leave out
model loading. Starting the workers (a Python process each, importing Lantern and opening the
model: the cluster's model loading) is in the Ray wall times, and left out of the like-for-like
ratio (``ratio_ray2_local``, the target's): a batch pays it once, whatever its size, while the
rate after it is what an archive-sized batch runs at (``ratio_ray2_local_wall``: with it).

Lantern's overhead per image on the cluster is what two workers spend per image once started
(time x 2 CPUs / images) beyond the engine's batched forward pass and the file read, both measured on
one thread as a worker runs them: preparing the input, MC dropout, the result record, Ray's
transfers and scheduling, and the driver's writing. It is split into the workers' part (their
time in chunks) and the rest (Ray and the driver).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from engine.analysis import load_model
from engine.backends.base import THREADS_VARIABLE
from engine.cli.bench_measure import MC_SAMPLES
from engine.files import write_bytes_atomic
from engine.images import load_image
from engine.preprocess import prepare_input
from engine.resources import DEMO_STUDIES
from engine.workflows.batch import BatchOptions, run_batch
from engine.workflows.ray_batch import ray_connection, ray_runner

IMAGES = 200
TARGET_RATIO = 0.8  # Ray with two workers against the local batch, on the same machine
CHUNK = BatchOptions().chunk


def demo_folder(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the single-frame demo radiographs, each a new instance, ten a study."""
    sources = [pydicom.dcmread(p) for p in sorted(DEMO_STUDIES.glob("*.dcm")) if "multiframe" not in p.name]
    paths, study = [], ""
    for i in range(count):
        ds = sources[i % len(sources)]
        study = generate_uid() if i % 10 == 0 else study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        buffer = io.BytesIO()
        ds.save_as(buffer)
        paths.append(write_bytes_atomic(folder / f"{i:05d}.dcm", buffer.getvalue()))
    return paths


def _engine_alone(bundle: Path, engine: str, files: list[Path]) -> dict:
    """Per image, on one thread (as a one-CPU worker): reading the file, and the batched forward."""
    previous = os.environ.get(THREADS_VARIABLE)
    os.environ[THREADS_VARIABLE] = "1"
    try:
        model = load_model(bundle, engine)
    finally:
        os.environ.pop(THREADS_VARIABLE) if previous is None else os.environ.__setitem__(THREADS_VARIABLE, previous)
    sample = files[:64]
    start = time.perf_counter()
    images = [load_image(path, 0, with_tags=False) for path in sample]
    read = (time.perf_counter() - start) / len(sample)
    batch = np.concatenate([prepare_input(image, model.bundle.input).tensor for image in images[:CHUNK]])
    model.backend.forward_features(batch)  # warm-up
    start, rounds = time.perf_counter(), 4
    for _ in range(rounds):
        model.backend.forward_features(batch)
    forward = (time.perf_counter() - start) / (rounds * len(batch))
    return {"read_ms": round(read * 1000, 2), "forward_ms": round(forward * 1000, 2)}


def bench_batch_ray(bundle: Path, engine: str = "onnx-int8", images: int = IMAGES) -> dict:
    model = load_model(bundle, engine)
    options = BatchOptions(mc_samples=MC_SAMPLES)
    report: dict = {"engine": model.engine, "images": images, "cpu_count": len(os.sched_getaffinity(0)),
                    "load_average_1min_before": round(os.getloadavg()[0], 2), "mc_samples": MC_SAMPLES}
    with tempfile.TemporaryDirectory(prefix="lantern-ray-bench-") as tmp:
        files = demo_folder(Path(tmp) / "images", images)
        start = time.perf_counter()
        local = run_batch(Path(tmp) / "images", Path(tmp) / "local", model, options)
        seconds = time.perf_counter() - start
        report["local"] = {"seconds": round(seconds, 2), "images_per_s": round(local.analysed / seconds, 1)}
        with ray_connection(None):  # one local instance (loopback) for both runs, its start left out
            for workers in (1, 2):
                stats: dict = {}
                start = time.perf_counter()
                result = run_batch(Path(tmp) / "images", Path(tmp) / f"ray{workers}", model, options,
                                   runner=ray_runner(workers=workers, stats=stats))
                seconds = time.perf_counter() - start
                same = result.csv.read_bytes() == local.csv.read_bytes()
                report[f"ray_{workers}"] = {
                    "workers": stats.get("workers"), "cpus_per_worker": stats.get("cpus_per_worker"),
                    "seconds": round(seconds, 2), "images_per_s": round(result.analysed / seconds, 1),
                    "worker_start_s": round(stats.get("start_s", 0.0), 2),
                    "images_per_s_after_start": round(result.analysed / (seconds - stats.get("start_s", 0.0)), 1),
                    "worker_s": round(stats.get("worker_s", 0.0), 2), "same_worklist_as_local": same}
        report["alone"] = _engine_alone(bundle, model.engine, files)
    two, alone = report["ray_2"], report["alone"]
    cpus = two["workers"] * two["cpus_per_worker"]
    spent = (two["seconds"] - two["worker_start_s"]) * cpus / images * 1000  # CPU-ms per image
    in_workers = two["worker_s"] / images * 1000
    report["overhead_ms_per_image"] = {
        "total": round(spent - alone["read_ms"] - alone["forward_ms"], 2),
        "in_workers": round(in_workers - alone["read_ms"] - alone["forward_ms"], 2),
        "ray_and_driver": round(spent - in_workers, 2)}
    report["ratio_ray2_local"] = round(two["images_per_s_after_start"] / report["local"]["images_per_s"], 2)
    report["ratio_ray2_local_wall"] = round(two["images_per_s"] / report["local"]["images_per_s"], 2)
    report["target"] = f">= {TARGET_RATIO}"
    report["met"] = report["ratio_ray2_local"] >= TARGET_RATIO
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return report


def bench_ray_command(args: argparse.Namespace) -> int:
    engine = "onnx-int8" if args.engine == "auto" else args.engine
    report = bench_batch_ray(Path(args.model), engine, args.images)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"batch on Ray: {report['images']} demo radiographs (512x512 DICOM), {report['engine']}, "
          f"{report['mc_samples']} MC samples, {report['cpu_count']} CPUs (load average "
          f"{report['load_average_1min_before']} before, {report['load_average_1min_after']} after)")
    print(f"  local batch           {report['local']['images_per_s']:7.1f} images/s ({report['local']['seconds']} s)")
    for key, label in (("ray_1", "Ray, 1 worker "), ("ray_2", "Ray, 2 workers")):
        r = report[key]
        print(f"  {label}        {r['images_per_s']:7.1f} images/s ({r['seconds']} s; workers started in "
              f"{r['worker_start_s']} s, {r['images_per_s_after_start']} images/s after; "
              f"{r['workers']} x {r['cpus_per_worker']} CPU; same worklist: {r['same_worklist_as_local']})")
    over, alone = report["overhead_ms_per_image"], report["alone"]
    print(f"  Ray-2 / local: {report['ratio_ray2_local']} once the workers are up (target {report['target']}: "
          f"{'met' if report['met'] else 'NOT met'}); {report['ratio_ray2_local_wall']} with their start")
    print(f"  per image on one thread: read {alone['read_ms']} ms, forward {alone['forward_ms']} ms; Lantern's "
          f"overhead on the cluster {over['total']} ms ({over['in_workers']} in the workers: prepare, MC dropout, "
          f"record; {over['ray_and_driver']} Ray and the driver)")
    return 0
