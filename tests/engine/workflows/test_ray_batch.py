"""The batch on Ray: the same rows and files as the local batch, every result exactly once when a
node is lost mid-run, every failure listed; ``--ray`` alone through the command line.

The cluster is Ray's own multi-node test cluster on this machine (a head without CPUs and two
one-CPU worker nodes, so each worker lives on a node that can be removed), on loopback only,
with token authentication on and a token of its own (never the user's ~/.ray)."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest

# Read when ray is imported (so set here, for this test process): Ray then binds to loopback and
# keeps 127.0.0.1 addresses as they are; token authentication is on, with a token of this run's own.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ray = pytest.importorskip("ray", reason="ray is not installed (the cluster extra; `make` installs it)")

from engine import load_model  # noqa: E402
from engine.cli.main import main  # noqa: E402
from engine.resources import DEMO_STUDIES  # noqa: E402
from engine.workflows.batch import BatchOptions, batch_steps, run_batch  # noqa: E402
from engine.workflows.batch_sources import read_file_list  # noqa: E402
from engine.workflows.ray_batch import LOOPBACK, ray_runner  # noqa: E402

OPTIONS = BatchOptions(chunk=2, mc_samples=4)


@pytest.fixture(scope="module")
def int8_model(demo_bundle):
    return load_model(demo_bundle, "onnx-int8")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # A lost node is noticed within seconds, not Ray's default of about half a minute.
    head = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, node_ip_address=LOOPBACK, include_dashboard=False,
        _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}))
    try:
        for _ in range(2):
            head.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        ray.init(address=head.address, namespace="lantern-tests", log_to_driver=False)
        deadline = time.monotonic() + 60
        while ray.cluster_resources().get("CPU", 0) < 2:  # the nodes' resources reach the head a moment later
            assert time.monotonic() < deadline, "the test cluster's worker nodes did not come up"
            time.sleep(0.2)
        yield head
    finally:
        ray.shutdown()
        head.shutdown()


def _mixed_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    for name in ("demo_nodule.dcm", "demo_normal.dcm", "demo_nodule.png"):
        shutil.copy(DEMO_STUDIES / name, folder / name)
    shutil.copy(DEMO_STUDIES / "demo_multiframe.dcm", folder / "sub" / "demo_multiframe.dcm")
    (folder / "truncated.dcm").write_bytes((DEMO_STUDIES / "demo_effusion.dcm").read_bytes()[:3000])
    (folder / "notes.txt").write_text("reading list\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "empty.dcm").write_bytes(b"")
    return folder


def _results(out: Path) -> dict[str, dict]:
    """Each result file's content, without the per-stage timings (the only figures that differ)."""
    found = {}
    for path in sorted((out / "results").glob("*.json")):
        data = json.loads(path.read_text())
        data.pop("timings_ms", None)
        found[path.name] = data
    return found


def _failures(out: Path) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO((out / "failures.csv").read_text())))
    return [{k: v for k, v in row.items() if k != "when"} for row in rows]


def test_ray_alone_runs_a_local_loopback_instance_with_the_same_worklist_and_exports(tmp_path, demo_bundle, capsys):
    assert not ray.is_initialized()  # runs before the cluster fixture: this test starts its own instance
    folder = _mixed_folder(tmp_path / "incoming")
    common = ["--model", str(demo_bundle), "--engine", "onnx-int8", "--mc", "4", "--png"]
    assert main(["batch", str(folder), "--out", str(tmp_path / "local"), *common]) == 1  # the damaged files
    assert main(["batch", str(folder), "--out", str(tmp_path / "ray"), *common, "--ray"]) == 1
    assert "Analysed 6 image(s)" in capsys.readouterr().err
    assert not ray.is_initialized()  # the local instance is stopped when the batch ends
    local, cluster = tmp_path / "local", tmp_path / "ray"
    assert (cluster / "worklist.csv").read_bytes() == (local / "worklist.csv").read_bytes()
    assert _results(cluster) == _results(local)
    assert _failures(cluster) == _failures(local)
    pictures = sorted(p.name for p in (local / "png").iterdir())
    assert len(pictures) == 6 and pictures == sorted(p.name for p in (cluster / "png").iterdir())
    for name in pictures:  # made on the driver from the workers' analyses, as locally
        assert (cluster / "png" / name).read_bytes() == (local / "png" / name).read_bytes()


def test_a_folder_gives_the_same_rows_and_result_files_locally_and_on_the_cluster(cluster, tmp_path, int8_model):
    folder = _mixed_folder(tmp_path / "incoming")
    local = run_batch(folder, tmp_path / "local", int8_model, OPTIONS)
    stats = {}
    remote = run_batch(folder, tmp_path / "ray", int8_model, OPTIONS, runner=ray_runner(stats=stats))
    assert stats["asked"] == 2 and stats["cpus_per_worker"] == 1  # one per worker node
    assert remote.rows == local.rows and len(local.rows) == 6
    assert remote.csv.read_bytes() == local.csv.read_bytes()
    assert _results(tmp_path / "ray") == _results(tmp_path / "local")

    listing = tmp_path / "files.txt"  # a list of the same files, relative to the list and absolute
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing.write_text("\n".join(str(p.relative_to(tmp_path)) if i % 2 else str(p) for i, p in enumerate(files)))
    listed = run_batch(read_file_list(listing), tmp_path / "listed", int8_model, OPTIONS, runner=ray_runner())
    assert listed.csv.read_bytes() == local.csv.read_bytes()
    assert _failures(tmp_path / "listed") == _failures(tmp_path / "local")


def test_every_corrupt_and_non_image_file_is_in_the_output_folder_s_failures_csv(cluster, tmp_path, int8_model):
    folder = _mixed_folder(tmp_path / "incoming")
    result = run_batch(folder, tmp_path / "out", int8_model, OPTIONS, runner=ray_runner(workers=2))
    listed = {Path(row["file"]).name: row for row in _failures(tmp_path / "out")}
    assert set(listed) == {"truncated.dcm", "notes.txt", "broken.png", "empty.dcm"}
    assert listed["notes.txt"]["status"] == "skipped" and listed["truncated.dcm"]["status"] == "failed"
    assert all(len(row["reason"]) > 8 for row in listed.values())
    assert len(result.failed) == 3 and len(result.skipped) == 1


def test_a_cluster_batch_interrupted_on_the_driver_resumes_from_its_record(cluster, tmp_path, int8_model):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i in range(8):
        shutil.copy(DEMO_STUDIES / ("demo_nodule.dcm", "demo_normal.dcm")[i % 2], folder / f"{i}.dcm")
    steps = batch_steps(folder, tmp_path / "out", int8_model, OPTIONS, runner=ray_runner())
    next(steps), next(steps)  # the first chunk written
    steps.close()  # as Ctrl-C or the viewer's cancel: the record keeps what was done, the workers stop
    again = run_batch(folder, tmp_path / "out", int8_model, OPTIONS, runner=ray_runner())
    assert again.reused >= 2 and again.reused + again.analysed == 8
    assert len(list((tmp_path / "out" / "results").iterdir())) == 8


def test_a_node_lost_mid_batch_costs_no_result_and_duplicates_none(cluster, tmp_path, int8_model):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i in range(24):
        shutil.copy(DEMO_STUDIES / ("demo_nodule.dcm", "demo_normal.dcm", "demo_effusion.dcm")[i % 3],
                    folder / f"{i:02d}.dcm")
    out, stats = tmp_path / "out", {}
    steps = batch_steps(folder, out, int8_model, BatchOptions(chunk=1, mc_samples=4), runner=ray_runner(stats=stats))
    remover = None
    try:
        while True:
            update = next(steps)
            if remover is None and update.step >= 3:  # some chunks done, most still to come
                # The node of a worker that has taken chunks (the other may not have started yet).
                lost = next(n for n in cluster.worker_nodes if n.node_id in stats["nodes"])
                remover = threading.Thread(target=cluster.remove_node, args=(lost,))
                remover.start()
                remover.join(60)  # the batch waits: what is left must go to the surviving worker
    except StopIteration as stop:
        result = stop.value
    assert remover is not None and not remover.is_alive()
    assert stats["resubmitted"] >= 1  # the lost worker's chunks were redone elsewhere
    with open(result.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in table) == sorted(p.name for p in folder.iterdir())
    written = sorted(p.relative_to(out).as_posix() for p in (out / "results").iterdir())
    assert written == sorted(r["result"] for r in table) and len(written) == 24  # a second write: a -2 name
    assert not result.failures


def test_a_folder_written_right_after_ray_is_the_source_not_an_address(tmp_path):
    """argparse gives 'batch --ray DIR --out OUT' the folder as --ray's optional address."""
    from engine.cli.batch_command import _source_and_runner
    from engine.cli.main import build_parser

    folder = tmp_path / "studies"
    folder.mkdir()
    args = build_parser().parse_args(["batch", "--ray", str(folder), "--out", str(tmp_path / "out")])
    args.ray_workers = 0  # refused before any Ray instance starts: the source was found first
    from engine.errors import LanternError

    with pytest.raises(LanternError, match="--ray-workers must be at least 1"):
        _source_and_runner(args)
    assert args.source == folder
