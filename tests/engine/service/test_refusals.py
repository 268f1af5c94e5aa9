"""Everything the service refuses, and how: no token, wrong token, a foreign Host, too large
(announced or streamed), files Lantern cannot read, wrong fields, a full queue; and that the
server is still healthy after all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (BasicTextSRStorage, ExplicitVRLittleEndian, RTPlanStorage, SegmentationStorage,
                        generate_uid)

from engine.errors import LanternError
from engine.images import load_image
from engine.resources import DEMO_STUDIES, ROOT
from tests.engine.service.service_process import httpx, running_service, serve_command, upload

pytestmark = pytest.mark.slow
LIMIT_MB = 1
TOKEN = "a3f5c0ffee6d4b2e9a7c1d8e0f2b4c6d"


@pytest.fixture(scope="module")
def small_service(tmp_path_factory):
    """One worker, a queue of one, uploads up to 1 MB: every limit is easy to reach."""
    log = tmp_path_factory.mktemp("small") / "service.log"
    with running_service(log, "--workers", "1", "--queue", "1", "--max-upload-mb", str(LIMIT_MB)) as service:
        yield service


@pytest.fixture(scope="module")
def client(small_service):
    with small_service.client() as c:
        yield c


def dicom_bytes(sop_class: str, **attributes) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lantern-test-{generate_uid()}.dcm"
    try:
        ds.save_as(path, enforce_file_format=True)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def engine_reason(tmp_path: Path, data: bytes) -> str:
    """What load_image (and so the viewer) says about these bytes."""
    path = tmp_path / "probe"
    path.write_bytes(data)
    with pytest.raises(LanternError) as caught:
        load_image(path)
    return caught.value.reason


NODULE = (DEMO_STUDIES / "demo_nodule.dcm").read_bytes()
UNREADABLE = {
    "truncated DICOM": NODULE[: len(NODULE) // 2],
    "RT plan": dicom_bytes(RTPlanStorage, Modality="RTPLAN", PatientName="PLAN^ONLY"),
    "structured report": dicom_bytes(BasicTextSRStorage, Modality="SR"),
    "segmentation": dicom_bytes(SegmentationStorage, Modality="SEG", Rows=8, Columns=8, BitsAllocated=1,
                                SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", PixelData=b"\0" * 8),
    "random bytes": np.random.default_rng(0).bytes(4096),
    "empty file": b"",
}


@pytest.mark.parametrize("what", list(UNREADABLE))
def test_a_file_lantern_cannot_read_gets_422_with_the_viewers_reason(client, tmp_path, what):
    data = UNREADABLE[what]
    r = client.post("/classify", files={"file": upload("upload.dcm", data)})
    assert r.status_code == 422
    assert r.json()["detail"] == engine_reason(tmp_path, data)
    explained = client.post("/explain", files={"file": upload("upload.dcm", data)})
    assert explained.status_code == 422 and explained.json()["detail"] == r.json()["detail"]


@pytest.mark.parametrize("what, words", [("RT plan", "an RT Plan"), ("structured report", "a structured report"),
                                         ("segmentation", "a segmentation")])
def test_a_non_picture_is_named_as_what_it_is(client, what, words):
    detail = client.post("/classify", files={"file": upload("object.dcm", UNREADABLE[what])}).json()["detail"]
    assert detail.startswith(f"this DICOM file holds {words}") and detail.endswith("not an image to classify")


@pytest.mark.parametrize("path, fields, named", [
    ("/classify", {"image": upload("demo_nodule.dcm")}, "'file' is missing"),
    ("/explain", {"upload": upload("demo_nodule.dcm")}, "'file' is missing"),
    ("/classify/batch", {"file": upload("demo_nodule.png")}, "'files' is missing"),
])
def test_wrong_field_names_get_422_naming_the_right_one(client, path, fields, named):
    r = client.post(path, files=fields)
    assert r.status_code == 422
    assert named in r.json()["detail"] and "multipart field" in r.json()["detail"]


def test_no_form_at_all_gets_422(client):
    r = client.post("/classify", json={"file": "demo_nodule.dcm"})
    assert r.status_code == 422 and "'file' is missing" in r.json()["detail"]
    r = client.post("/classify", files={"file": upload("demo_nodule.png")}, data={"frame": "first"})
    assert r.status_code == 422 and "'frame'" in r.json()["detail"]
    r = client.post("/classify", data={"file": "demo_nodule.png"})
    assert r.status_code == 422 and "'file' must be a file" in r.json()["detail"]


def test_a_batch_of_more_than_50_files_is_refused(client):
    r = client.post("/classify/batch", files=[("files", upload(f"{n}.png", b"x")) for n in range(51)])
    assert r.status_code == 422 and "at most 50 files" in r.json()["detail"]


def log_line(service, response) -> str:
    """The service's log line for this response's request (written just after the response)."""
    deadline = time.monotonic() + 10
    while True:
        found = [x for x in service.log_text().splitlines() if f"request {response.headers['x-request-id']}" in x]
        if found or time.monotonic() > deadline:
            assert found, "no log line for the request"
            return found[0]
        time.sleep(0.05)


def test_an_announced_oversize_upload_gets_413_before_it_is_read(client, small_service):
    big = os.urandom(LIMIT_MB * 2**20 + 1000)
    r = client.post("/classify", files={"file": upload("big.dcm", big)})
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
    # Refused on its Content-Length: not one byte of the body read.
    assert "status 413, 0 bytes in" in log_line(small_service, r)


def test_a_streamed_oversize_upload_gets_413_while_it_streams(client, small_service):
    boundary = "lantern-test-boundary"

    def body():  # chunked: no Content-Length to refuse it by
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.dcm"\r\n'
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(4 * LIMIT_MB * 16):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/classify", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    received = int(log_line(small_service, r).split("status 413, ")[1].split(" bytes")[0])
    assert LIMIT_MB * 2**20 < received < 2 * LIMIT_MB * 2**20  # stopped soon after the limit, not at the end


def test_a_foreign_host_header_gets_421_on_a_service_without_token(client):
    r = client.get("/healthz", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 421
    assert client.get("/healthz", headers={"Host": "localhost:1234"}).status_code == 200


def _hold_a_place(url: str) -> socket.socket:
    """An upload that starts and never finishes: it holds its place in the pool."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                 b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\n')
    return sock


def _wait_for_admitted(client, wanted: int) -> None:
    deadline = time.monotonic() + 30
    while client.get("/healthz").json()["admitted"] != wanted:
        assert time.monotonic() < deadline, f"the pool never held {wanted} requests"
        time.sleep(0.05)


def test_a_full_queue_gets_503_with_retry_after_and_recovers(client, small_service):
    held = [_hold_a_place(small_service.url) for _ in range(2)]  # one worker + a queue of one
    try:
        _wait_for_admitted(client, 2)
        r = client.post("/classify", files={"file": upload("demo_nodule.png")})
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert "busy" in r.json()["detail"]
    finally:
        for sock in held:
            sock.close()
    _wait_for_admitted(client, 0)
    assert client.post("/classify", files={"file": upload("demo_nodule.png")}).status_code == 200


def test_still_healthy_after_every_refusal(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "lantern-demo-chest-phantom",
                                             "engine": "onnx-int8", "workers": 1, "capacity": 2, "admitted": 0}
    r = client.post("/classify", files={"file": upload("demo_effusion.dcm")})
    assert r.status_code == 200 and r.json()["predicted_class"] == "effusion"


# The token: a second server, on loopback too, that requires one.

@pytest.fixture(scope="module")
def token_service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("token")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with running_service(folder / "service.log", "--token-file", str(token_file)) as service:
        yield service


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
                         ids=["none", "wrong", "no scheme", "basic", "empty"])
def test_without_the_right_token_every_request_gets_401(token_service, headers):
    with token_service.client(headers=headers) as c:
        for r in (c.get("/healthz"), c.get("/model"), c.get("/docs"), c.get("/openapi.json"),
                  c.post("/classify", files={"file": upload("demo_nodule.png")})):
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in r.json()["detail"]


def test_with_the_right_token_it_answers(token_service):
    with token_service.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/classify", files={"file": upload("demo_nodule.dcm")})
        assert r.status_code == 200 and r.json()["predicted_class"] == "nodule"
    assert httpx.get(f"{token_service.url}/healthz", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def _refused_start(*args: str) -> str:
    run = subprocess.run(serve_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    return run.stderr


def test_refuses_to_listen_off_loopback_without_a_token():
    assert "refusing to listen on 0.0.0.0 without a token" in _refused_start("--host", "0.0.0.0")


def test_refuses_a_weak_or_exposed_token_file(tmp_path):
    short = tmp_path / "short"
    short.write_text("secret")
    short.chmod(0o600)
    assert "at least 16 characters" in _refused_start("--token-file", str(short))
    exposed = tmp_path / "exposed"
    exposed.write_text(TOKEN)
    exposed.chmod(0o644)
    assert "readable by every user" in _refused_start("--token-file", str(exposed))
