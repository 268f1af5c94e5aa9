"""The explanation as DICOM (read back with pydicom), anonymization, and the HTML report."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from engine import AnalysisOptions, LanternError, analyze, load_image, load_model
from engine.exports.anonymize import Pseudonymizer
from engine.exports.dicom_export import export_dicom
from engine.exports.pictures import side_by_side
from engine.exports.report import render_report, report_entry, study_details
from engine.resources import DEMO_STUDIES
from tests.conftest import dciodvfy_errors

STUDY = DEMO_STUDIES
IDENTIFYING = (b"DEMO^NODULE", b"LANTERN-DEMO-1", b"DEMO^MULTIFRAME", b"LANTERN-DEMO-4", b"20240315", b"DEMO0001")


@pytest.fixture(scope="module")
def model(demo_bundle):
    return load_model(demo_bundle, "onnx-int8")


@pytest.fixture(scope="module")
def nodule(model):
    image = load_image(STUDY / "demo_nodule.dcm")
    return image, analyze(image, model, AnalysisOptions(methods=("gradcam", "gradcam++"), mc_samples=10))


def test_export_reads_back_in_the_source_study_as_a_new_series_pointing_at_its_source(tmp_path, nodule):
    image, analysis = nodule
    source = pydicom.dcmread(STUDY / "demo_nodule.dcm", stop_before_pixels=True)
    path = export_dicom(tmp_path / "explanation.dcm", image, analysis, "gradcam++")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID not in (source.SOPInstanceUID, "")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for sequence in (ds.SourceImageSequence, ds.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
    assert "not for primary diagnosis" in ds.SeriesDescription and "Grad-CAM++" in ds.SeriesDescription
    for text in (ds.ImageComments, ds.DerivationDescription):
        assert analysis.model_name in text and analysis.model_version in text
        assert "Grad-CAM++" in text and "not for primary diagnosis" in text
    pixels = ds.pixel_array
    assert pixels.shape == (512, 512, 3) and ds.PhotometricInterpretation == "RGB"
    row, col = analysis.maps["gradcam++"].peak(analysis.predicted)
    r, g, b = (int(v) for v in pixels[row, col])
    assert abs(r - b) > 30  # the map's peak is coloured, not the grey radiograph
    assert ds.PixelSpacing == source.PixelSpacing
    assert dciodvfy_errors(path) == []


def test_values_invalid_in_the_source_are_not_copied_into_the_export(tmp_path, model):
    ds = pydicom.dcmread(STUDY / "demo_nodule.dcm")
    ds.PixelSpacing = [0, 0]  # as some modalities write it: dciodvfy calls it an error
    ds.PatientBirthDate = "1962"  # not a DA
    ds.Laterality = "B"
    ds.save_as(tmp_path / "odd.dcm")
    image = load_image(tmp_path / "odd.dcm")
    path = export_dicom(tmp_path / "out" / "odd-explained.dcm", image, analyze(image, model))
    out = pydicom.dcmread(path)
    assert "PixelSpacing" not in out and out.PatientBirthDate == "" and "Laterality" not in out
    assert out.PatientName == ds.PatientName  # valid values still come along
    assert dciodvfy_errors(path) == []


def test_exports_never_overwrite_an_earlier_export_or_the_source(tmp_path, nodule, model):
    image, analysis = nodule
    first = export_dicom(tmp_path / "x.dcm", image, analysis)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    second = export_dicom(tmp_path / "x.dcm", image, analysis)
    assert second.name == "x-2.dcm"
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest
    copy = tmp_path / "source.dcm"
    copy.write_bytes((STUDY / "demo_nodule.dcm").read_bytes())
    moved = load_image(copy)
    written = export_dicom(copy, moved, analyze(moved, model))
    assert written != copy and copy.read_bytes() == (STUDY / "demo_nodule.dcm").read_bytes()


def test_anonymized_exports_hold_no_patient_name_or_id_and_pseudonyms_are_consistent(tmp_path, model, nodule):
    image, analysis = nodule
    frames = [load_image(STUDY / "demo_multiframe.dcm", f) for f in (0, 2)]
    pseudonyms = Pseudonymizer(b"batch-salt-0001!")
    paths = [export_dicom(tmp_path / "a.dcm", image, analysis, pseudonyms=pseudonyms)]
    paths += [export_dicom(tmp_path / "m.dcm", f, analyze(f, model), pseudonyms=pseudonyms) for f in frames]
    for path in paths:
        raw = path.read_bytes()
        assert not any(secret in raw for secret in IDENTIFYING), path
    a, m0, m2 = (pydicom.dcmread(p) for p in paths)
    assert a.PatientIdentityRemoved == "YES" and a.PatientID.startswith("ANON-")
    assert m0.PatientID == m2.PatientID != a.PatientID  # one patient, one pseudonym
    assert m0.StudyInstanceUID == m2.StudyInstanceUID != a.StudyInstanceUID
    source = pydicom.dcmread(STUDY / "demo_multiframe.dcm", stop_before_pixels=True)
    assert m0.StudyInstanceUID != source.StudyInstanceUID
    assert m0.SourceImageSequence[0].ReferencedSOPInstanceUID == pseudonyms.uid(source.SOPInstanceUID)
    assert [m0.SourceImageSequence[0].ReferencedFrameNumber, m2.SourceImageSequence[0].ReferencedFrameNumber] == [1, 3]
    assert "not for primary diagnosis" in a.ImageComments  # Lantern's own text survives
    other = pydicom.dcmread(export_dicom(tmp_path / "b.dcm", image, analysis, pseudonyms=Pseudonymizer(b"another-salt-02!")))
    assert other.PatientID != a.PatientID  # nothing links two batches


def test_a_png_source_starts_a_study_of_its_own(tmp_path, model):
    image = load_image(STUDY / "demo_nodule.png")
    path = export_dicom(tmp_path / "png.dcm", image, analyze(image, model))
    ds = pydicom.dcmread(path)
    assert dciodvfy_errors(path) == []
    assert ds.StudyInstanceUID and "SourceImageSequence" not in ds
    assert ds.Modality == "OT" and ds.pixel_array.shape == (512, 512, 3)


def test_a_triage_result_without_maps_cannot_be_exported(tmp_path, model):
    image = load_image(STUDY / "demo_nodule.png")
    bare = analyze(image, model, AnalysisOptions(methods=(), mc_samples=0))
    with pytest.raises(LanternError, match="no explanation map"):
        export_dicom(tmp_path / "none.dcm", image, bare)
    assert not list(tmp_path.iterdir())


def test_side_by_side_picture_and_report(nodule, model):
    image, analysis = nodule
    picture = side_by_side(image, analysis)
    assert picture.shape[0] == 512 and picture.shape[1] > 2 * 512
    assert np.array_equal(picture[300, 10], picture[300, 10][[0, 0, 0]])  # left half stays grey
    entry = report_entry(image, analysis)
    title, details = study_details(image)
    html = render_report(title, details, [entry], model.bundle, analysis.engine)
    assert html.count("data:image/png;base64,") == 1
    assert "not for primary diagnosis" in html and "Model card" in html and "Confidence" in html
    assert "LANTERN-DEMO-1" in html  # not anonymized: the reader's own report names the patient
    title, details = study_details(image, "ANON-1234")
    anonymous = render_report(title, details, [entry], model.bundle, "onnx-int8")
    assert "LANTERN-DEMO-1" not in anonymous and "DEMO^NODULE" not in anonymous and "ANON-1234" in anonymous
