"""Every endpoint of ``lantern-engine serve`` on the demo study, through a real server."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pydicom
import pytest

from engine.resources import DEMO_STUDIES
from tests.engine.service.service_process import upload

pytestmark = pytest.mark.slow
CLASSES = ["normal", "nodule", "effusion"]


@pytest.fixture(scope="module")
def client(demo_service):
    with demo_service.client() as c:
        yield c


def test_healthz_says_ok_and_how_busy(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["engine"] == "onnx-int8"
    assert body["capacity"] == 18 and body["workers"] == 2
    assert len(r.headers["x-request-id"]) == 12


def test_model_describes_what_a_client_must_know(client):
    body = client.get("/model").json()
    assert body["name"] == "lantern-demo-chest-phantom" and body["engine"] == "onnx-int8"
    assert body["classes"] == CLASSES
    assert "not for diagnosis" in body["intended_use"].lower()
    assert body["model_card"]["metrics"]["accuracy"] > 0.9
    assert body["calibration"]["temperature"] == pytest.approx(1.0)
    assert body["intended_inputs"]["modalities"] == ["DX", "CR"]
    assert body["ood_check"]["fitted"] is True and body["ood_check"]["threshold"] > 0
    assert body["result_schema"] == "lantern.result/1"


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/model", "/classify", "/classify/batch", "/explain"} <= set(spec["paths"])
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    assert "file" in spec["components"]["schemas"][body.rpartition("/")[2]]["required"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "POST /classify/batch" in docs.text and "<code>files</code>" in docs.text
    # Nothing fetched from elsewhere (FastAPI's own page loads Swagger UI from a CDN).
    assert "http://" not in docs.text and "https://" not in docs.text and "<script" not in docs.text


@pytest.mark.parametrize("name, expected", [("demo_nodule.dcm", "nodule"), ("demo_effusion.dcm", "effusion"),
                                            ("demo_normal.dcm", "normal"), ("demo_nodule.png", "nodule"),
                                            ("demo_nodule_16bit.png", "nodule")])
def test_classify_returns_the_result_schema(client, name, expected):
    r = client.post("/classify", files={"file": upload(name)})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["schema"] == "lantern.result/1" and record["source"] == "upload"
    assert record["predicted_class"] == expected
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert record["uncertainty"]["samples"] == 20
    check = record["input_check"]
    assert check["outside_intended_use"] is False and check["ood_score"] < check["ood_threshold"]
    assert record["methods"] == [] and record["map_peaks"] == {}


def test_classify_a_frame_of_a_multiframe_file(client):
    frames = [client.post("/classify", files={"file": upload("demo_multiframe.dcm")}, data={"frame": str(n)}).json()
              for n in range(3)]
    assert [f["predicted_class"] for f in frames] == ["nodule", "effusion", "normal"]
    assert [f["frame"] for f in frames] == [0, 1, 2]
    r = client.post("/classify", files={"file": upload("demo_multiframe.dcm")}, data={"frame": "3"})
    assert r.status_code == 422 and "frame" in r.json()["detail"]


def test_batch_gives_a_result_or_an_error_per_file_in_order(client):
    files = [("files", upload(n)) for n in ("demo_effusion.dcm", "demo_nodule.png")]
    files.insert(1, ("files", ("notes.txt", b"not an image at all", "text/plain")))
    r = client.post("/classify/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [200, 422, 200]
    assert [x["index"] for x in body["results"]] == [0, 1, 2]
    assert body["results"][0]["result"]["predicted_class"] == "effusion"
    assert body["results"][1]["error"] == "not an image file Lantern knows (DICOM, PNG, JPEG or TIFF)"
    assert body["results"][2]["result"]["predicted_class"] == "nodule"
    assert (body["analysed"], body["failed"]) == (2, 1)


def test_explain_the_predicted_class_by_default_as_a_png_overlay(client):
    r = client.post("/explain", files={"file": upload("demo_nodule.dcm")})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["method"] == "gradcam" and record["methods"] == ["gradcam"]
    row, column = record["map_peaks"]["gradcam"]["nodule"]
    assert abs(row - 208) < 40 and abs(column - 382) < 40  # the phantom's nodule (resources/studies/README.txt)
    [entry] = record["explanations"]
    assert (entry["class"], entry["class_index"], entry["method"]) == ("nodule", 1, "gradcam")
    assert set(entry) >= {"png_base64"} and "array" not in entry and "dicom_objects" not in record
    png = cv2.imdecode(np.frombuffer(base64.b64decode(entry["png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (512, 512, 3)


def test_explain_methods_classes_and_every_output(client):
    r = client.post("/explain", files={"file": upload("demo_effusion.dcm")},
                    data={"methods": "gradcam, layercam", "classes": "effusion,0", "output": "png,array,dicom"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["methods"] == ["gradcam", "layercam"]
    pairs = [(e["method"], e["class"]) for e in record["explanations"]]
    assert pairs == [("gradcam", "effusion"), ("gradcam", "normal"), ("layercam", "effusion"), ("layercam", "normal")]
    array = record["explanations"][0]["array"]
    values = np.frombuffer(base64.b64decode(array["data_base64"]), "<f4").reshape(array["shape"])
    assert values.shape == (512, 512) and values.max() > 0
    peak = np.unravel_index(np.argmax(values), values.shape)
    assert abs(peak[0] - record["map_peaks"]["gradcam"]["effusion"][0]) < 40
    source = pydicom.dcmread(DEMO_STUDIES / "demo_effusion.dcm", stop_before_pixels=True)
    entries = record["dicom_objects"]
    # Per method: the secondary capture of each chosen class and a parametric map of every
    # class; one structured report, for the first method.
    assert [(e["kind"], e["method"], e.get("class")) for e in entries] == [
        ("sc", "gradcam", "effusion"), *[("pm", "gradcam", c) for c in CLASSES], ("sr", "gradcam", None),
        ("sc", "gradcam", "normal"),
        ("sc", "layercam", "effusion"), *[("pm", "layercam", c) for c in CLASSES], ("sc", "layercam", "normal")]
    objects = [pydicom.dcmread(io.BytesIO(base64.b64decode(e["data_base64"]))) for e in entries]
    assert {str(o.StudyInstanceUID) for o in objects} == {str(source.StudyInstanceUID)}
    assert [str(o.SOPClassUID) for o in objects] == [e["sop_class_uid"] for e in entries]
    assert objects[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert entries[1]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    only = client.post("/explain", files={"file": upload("demo_nodule.png")}, data={"output": "dicom", "dicom": "sr"})
    assert [e["kind"] for e in only.json()["dicom_objects"]] == ["sr"] and "explanations" not in only.json()


def test_explain_all_classes(client):
    r = client.post("/explain", files={"file": upload("demo_nodule.png")}, data={"classes": "all"})
    assert [e["class"] for e in r.json()["explanations"]] == CLASSES


@pytest.mark.parametrize("field, value, words", [("methods", "saliency", "unknown explanation method"),
                                                 ("classes", "pneumonia", "no class pneumonia"),
                                                 ("classes", "7", "no class 7"),
                                                 ("output", "pdf", "'output' takes"),
                                                 ("dicom", "seg", "unknown DICOM object kind seg")])
def test_explain_refuses_choices_it_cannot_make(client, field, value, words):
    r = client.post("/explain", files={"file": upload("demo_nodule.dcm")}, data={field: value})
    assert r.status_code == 422 and words in r.json()["detail"]
