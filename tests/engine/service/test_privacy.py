"""What the service keeps to itself: no patient name or ID (nor a client's file name) in its
log or its temporary files' names, no upload left on disk, and no torch on the ONNX path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from engine.resources import DEMO_STUDIES, ROOT
from tests.engine.service.service_process import running_service, upload

pytestmark = pytest.mark.slow
# Client file names a careless or hostile client might send: a patient's name, a way out.
HOSTILE_NAMES = ("DOE^JANE 1234567.dcm", "../../../../tmp/escaped-upload.dcm", "/etc/lantern-owned.png")


def patient_words() -> set[str]:
    words = set()
    for path in DEMO_STUDIES.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        words |= {str(ds.PatientName), str(ds.PatientID), *str(ds.PatientName).split("^")}
    return {w for w in words if len(w) > 3}


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """A service with its own TMPDIR (so its private folder can be inspected), a mixed workload
    with hostile file names, and what it wrote to its log. Stopped before the tests look."""
    folder = tmp_path_factory.mktemp("private")
    tmp = folder / "tmp"
    tmp.mkdir()
    seen = {}
    with running_service(folder / "service.log", "--max-upload-mb", "2", env={"TMPDIR": str(tmp)}) as service:
        with service.client() as c:
            bodies = []
            for n, name in enumerate(("demo_nodule.dcm", "demo_effusion.dcm", "demo_multiframe.dcm",
                                      "demo_nodule.png")):
                renamed = (HOSTILE_NAMES[n % len(HOSTILE_NAMES)], upload(name)[1], "application/dicom")
                bodies.append(c.post("/classify", files={"file": renamed}).text)
                bodies.append(c.post("/explain", files={"file": renamed}, data={"output": "png,dicom"}).text)
            bodies.append(c.post("/classify/batch", files=[("files", (n, b"junk", "x")) for n in HOSTILE_NAMES]).text)
            bodies.append(c.post("/classify", files={"file": (HOSTILE_NAMES[0], b"\0" * 3 * 2**20, "x")}).text)
            bodies.append(c.get("/healthz", params={"patient": "DOE^JANE"}).text)
            bodies.append(c.get("/DOE^JANE/1234567").text)
            # onnxruntime keeps a session-id file (.ses) in the temporary folder too: not the service's.
            seen["folders"] = [p for p in tmp.iterdir() if p.name != ".ses"]
            seen["files during"] = [p for f in seen["folders"] for p in f.rglob("*")]
        seen["pid"] = service.process.pid
        seen["maps"] = Path(f"/proc/{service.process.pid}/maps").read_text() if Path("/proc").is_dir() else None
    seen["after"] = [p for p in tmp.iterdir() if p.name != ".ses"]
    seen["log"] = (folder / "service.log").read_text()
    seen["bodies"] = bodies
    return seen


def test_the_log_names_no_patient_and_no_file(private_run):
    log = private_run["log"]
    assert log.count("request ") >= 12  # one line per request was written
    for word in patient_words() | {"DOE", "JANE", "1234567", "escaped-upload", "lantern-owned", "demo_"}:
        assert word not in log, word


def test_responses_never_echo_the_clients_file_name(private_run):
    for body in private_run["bodies"]:
        for name in ("DOE^JANE", "1234567", "escaped-upload", "lantern-owned"):
            assert name not in body


def test_uploads_pass_through_one_private_folder_under_generated_names_and_are_removed(private_run):
    [folder] = private_run["folders"]
    assert folder.name.startswith("lantern-service-")
    assert private_run["files during"] == []  # every upload removed when its request was done
    assert not Path("/tmp/escaped-upload.dcm").exists() and not Path("/etc/lantern-owned.png").exists()
    assert private_run["after"] == []  # and the folder itself when the service stopped


def test_the_onnx_service_runs_without_torch(private_run):
    if private_run["maps"] is None:
        pytest.skip("no /proc here")
    assert "libtorch" not in private_run["maps"]
    code = ("import sys, engine.service.app, engine.cli.serve_command; from engine.cli.main import build_parser; "
            "build_parser(); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_an_unexpected_failure_is_a_500_whose_log_line_names_only_its_type(monkeypatch, caplog):
    """A bug's message may quote the file (a DICOM value, a patient's name): the client gets 500
    with the request id, the log the exception's type, neither the message."""
    from starlette.testclient import TestClient

    from engine.analysis import load_model
    from engine.resources import DEMO_MODEL
    from engine.service.app import create_app
    from engine.service.jobs import Analyst
    from engine.service.settings import ServiceSettings

    def broken(self, upload, frame):
        raise RuntimeError("could not parse DOE^JANE 1234567")

    monkeypatch.setattr(Analyst, "classify", broken)
    app = create_app(load_model(DEMO_MODEL, "onnx-int8"), ServiceSettings(workers=1, queue=0))
    with caplog.at_level("INFO", logger="lantern.service"), TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/classify", files={"file": upload("demo_nodule.dcm")})
    assert r.status_code == 500
    assert r.headers["x-request-id"] in r.json()["detail"] and "DOE" not in r.text
    assert f"request {r.headers['x-request-id']} failed: RuntimeError" in caplog.text
    assert "DOE" not in caplog.text and "1234567" not in caplog.text
