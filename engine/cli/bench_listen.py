"""``lantern-engine bench --listen``: how fast the listener receives and analyses.

The listener of ``lantern-engine listen`` (receiving, and the batch over the inbox as images
arrive) runs in this process on a loopback port; four dcmtk storescu processes send copies of
the demo radiographs with fresh UIDs between them, as four modalities would. Two figures: images
received per second (first send to last stored), and analysed per second (first send to the
last in the worklist: receiving and analysing share the machine's cores, as they do in use).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from engine.analysis import load_model
from engine.cli.listen_command import ReceiveAndAnalyse
from engine.errors import LanternError
from engine.resources import DEMO_STUDIES
from engine.workflows.batch import BatchOptions

SENDERS = 4
INSTANCES = 400
CALLING = "BENCH"
_TIMEOUT_S = 600


def demo_copies(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the single-frame demo radiographs, each a new instance, ten a study."""
    sources = [pydicom.dcmread(p) for p in sorted(DEMO_STUDIES.glob("*.dcm")) if "multiframe" not in p.name]
    folder.mkdir(parents=True, exist_ok=True)
    paths, study = [], ""
    for i in range(count):
        ds = sources[i % len(sources)]
        study = generate_uid() if i % 10 == 0 else study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        paths.append(folder / f"{i:05d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _wait(condition, what: str) -> float:
    deadline = time.monotonic() + _TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise LanternError(f"the listener benchmark gave up waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter()


def bench_listen(bundle_path: Path, engine: str, instances: int = INSTANCES) -> dict:
    if not shutil.which("storescu"):
        raise LanternError("bench --listen sends with dcmtk's storescu, which is not installed (make system-deps)")
    model = load_model(bundle_path, engine)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lantern-listen-bench-") as tmp:
        files = demo_copies(Path(tmp) / "send", instances)
        node = ReceiveAndAnalyse(Path(tmp) / "inbox", Path(tmp) / "out", model, BatchOptions(), port=0,
                                 allowed_ae=[CALLING], min_free_bytes=0).start()
        try:
            start = time.perf_counter()
            senders = [subprocess.Popen(["storescu", "-aet", CALLING, "-aec", node.scp.node.ae_title, "127.0.0.1",
                                         str(node.scp.port), *map(str, files[i::SENDERS])],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(SENDERS)]
            failed = [s.wait(timeout=_TIMEOUT_S) for s in senders]
            if any(failed) or node.received != instances:
                raise LanternError(f"storescu exit codes {failed}, {node.received} of {instances} received")
            received = time.perf_counter()
            analysed = _wait(lambda: node.loop.analysed >= instances, "the analyses")
        finally:
            node.stop()
    return {
        "engine": model.engine, "instances": instances, "senders": SENDERS, "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "received_seconds": round(received - start, 2),
        "received_per_s": round(instances / (received - start), 1),
        "analysed_seconds": round(analysed - start, 2),
        "analysed_per_s": round(instances / (analysed - start), 1),
        "batch_runs": node.loop.runs,
    }


def listen_bench_command(args: argparse.Namespace) -> int:
    engine = "onnx-int8" if args.engine == "auto" else args.engine
    report = bench_listen(Path(args.model), engine, args.instances)
    if args.json:
        print(json.dumps(report))
        return 0
    load = report["load_average_1min"]
    print(f"listen    {report['instances']} demo radiographs (512x512 DICOM) from {report['senders']} storescu at "
          f"once, {report['engine']}, {report['cpu_count']} CPUs (load average {load['before']} before, "
          f"{load['after']} after)")
    print(f"received  {report['received_per_s']:.1f} images/s ({report['received_seconds']:.2f} s)")
    print(f"analysed  {report['analysed_per_s']:.1f} images/s ({report['analysed_seconds']:.2f} s from the first "
          f"send to the last in the worklist, {report['batch_runs']} batch run(s))")
    return 0
