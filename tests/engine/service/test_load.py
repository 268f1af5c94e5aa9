"""A bounded load: 8 concurrent clients, 400 requests, classify and explain mixed. Every request
is answered, nothing fails but deliberate 503s (retried after Retry-After), and every result is
the one ``lantern-engine explain`` writes to result.json for the same file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.resources import DEMO_STUDIES, ROOT
from tests.engine.service.service_process import DEMO_FILES, upload

pytestmark = pytest.mark.slow
CLIENTS, PER_CLIENT = 8, 50  # 400 requests: about 20 s on two shared cores
MAX_TRIES = 20  # per request, counting 503s: bounded, so the test always ends
NOT_COMPARED = ("source", "timings_ms", "explanations")  # the upload's stand-in name, clocks, the maps' pixels


@pytest.fixture(scope="module")
def command_line_results(tmp_path_factory) -> dict[str, dict]:
    """result.json of ``lantern-engine explain`` for each demo file (INT8, its defaults)."""
    folder = tmp_path_factory.mktemp("cli")
    # Distinct stems (demo_nodule.dcm and .png would share a result folder): demo_nodule_png.png.
    stems = {name: name.replace(".", "_") for name in DEMO_FILES}
    sources = [shutil.copy(DEMO_STUDIES / name, folder / f"{stems[name]}{Path(name).suffix}") for name in DEMO_FILES]
    out = folder / "out"
    subprocess.run([sys.executable, "-m", "engine.cli.main", "explain", *map(str, sources), "--out", str(out),
                    "--engine", "onnx-int8"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return {name: json.loads((out / stems[name] / "result.json").read_text()) for name in DEMO_FILES}


def same(a, b, path="record") -> None:
    """Equal, numbers to 1e-6 (the schema rounds to 6 decimals)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for n, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{n}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_eight_clients_four_hundred_requests(demo_service, command_line_results):
    answers, errors = [], []
    lock = threading.Lock()

    def client(number: int) -> None:
        with demo_service.client() as c:
            for n in range(PER_CLIENT):
                kind = ("/classify", "/explain")[(number + n) % 2]
                name = DEMO_FILES[(number * PER_CLIENT + n) % len(DEMO_FILES)]
                statuses = []
                try:
                    for _ in range(MAX_TRIES):
                        r = c.post(kind, files={"file": upload(name)})
                        statuses.append(r.status_code)
                        if r.status_code != 503:
                            break
                        time.sleep(int(r.headers["Retry-After"]))
                except Exception as exc:  # a dropped connection must fail the test, not hang it
                    with lock:
                        errors.append(f"{kind} {name}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    answers.append((kind, name, statuses, r.json()))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    seconds = time.perf_counter() - started
    print(f"\n{CLIENTS * PER_CLIENT} requests from {CLIENTS} clients in {seconds:.1f} s "
          f"({CLIENTS * PER_CLIENT / seconds:.1f} requests/s); "
          f"{sum(s.count(503) for _, _, s, _ in answers)} deliberate 503s retried")
    assert not errors, errors[:5]
    assert len(answers) == CLIENTS * PER_CLIENT
    for kind, name, statuses, record in answers:
        assert set(statuses[:-1]) <= {503} and statuses[-1] == 200, (kind, name, statuses)
        expected = command_line_results[name]
        if kind == "/explain":
            same({k: v for k, v in record.items() if k not in NOT_COMPARED},
                 {k: v for k, v in expected.items() if k not in NOT_COMPARED})
        else:
            for key in ("logits", "probabilities", "predicted_class", "uncertainty", "input_check", "classes",
                        "engine", "model", "schema", "frame"):
                same(record[key], expected[key], key)
    assert demo_service.process.poll() is None  # the server lived through it
