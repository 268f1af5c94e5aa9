"""The explanation as standard DICOM objects (Secondary Capture, Parametric Maps, TID 1500 SR):
valid for dciodvfy from every kind of source, with the map's numbers, the analysis' probabilities
and references that find the source and each other, anonymized ones included."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from engine import AnalysisOptions, LanternError, analyze, load_image, load_model
from engine.exports.anonymize import Pseudonymizer
from engine.exports.dicom_objects import export_dicom_objects, parse_kinds
from engine.resources import DEMO_STUDIES, ROOT
from tests.conftest import dciodvfy_errors

PM, SR = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.88.34"
OPTIONS = AnalysisOptions(methods=("gradcam++",), mc_samples=10)
SOURCES = {  # name -> (file, frame)
    "radiograph": (DEMO_STUDIES / "demo_nodule.dcm", 0),
    "ct": (get_testdata_file("CT_small.dcm"), 0),
    "multiframe": (DEMO_STUDIES / "demo_multiframe.dcm", 2),
    "png": (DEMO_STUDIES / "demo_nodule.png", 0),
}


@pytest.fixture(scope="module")
def model(demo_bundle):
    return load_model(demo_bundle, "onnx-int8")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """Every source exported once (all three kinds): name -> (image, analysis, {kind: [data sets]}, paths)."""
    out, found = tmp_path_factory.mktemp("objects"), {}
    for name, (path, frame) in SOURCES.items():
        image = load_image(path, frame)
        analysis = analyze(image, model, OPTIONS)
        paths = export_dicom_objects(out, image, analysis, name=name, model_manufacturer="Lantern (synthetic demo)")
        found[name] = (image, analysis, by_kind(paths), paths)
    return found


def by_kind(paths) -> dict[str, list[pydicom.Dataset]]:
    kinds = {"sc": [], "pm": [], "sr": []}
    for path in paths:
        ds = pydicom.dcmread(path)
        kinds["pm" if ds.SOPClassUID == PM else "sr" if ds.SOPClassUID == SR else "sc"].append(ds)
    return kinds


def content_items(ds):
    """Every SR content item, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, code.get("CodeValue") or code.get("LongCodeValue")


def referenced_uids(ds) -> set[str]:
    return {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in content_items(ds) if i.ValueType == "IMAGE"}


def evidence_uids(ds) -> set[str]:
    return {sop.ReferencedSOPInstanceUID for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_object_from_every_kind_of_source_passes_dciodvfy(exported, name):
    _, analysis, kinds, paths = exported[name]
    assert [len(kinds[k]) for k in ("sc", "pm", "sr")] == [1, len(analysis.classes), 1]
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


@pytest.mark.parametrize("name", ["radiograph", "ct", "multiframe"])
def test_the_maps_hold_the_class_maps_on_the_source_grid_and_point_at_the_source(exported, name):
    image, analysis, kinds, _ = exported[name]
    source = pydicom.dcmread(SOURCES[name][0], stop_before_pixels=True)
    series = set()
    for index, pm in enumerate(kinds["pm"]):
        expected = analysis.maps["gradcam++"].source_map(index)
        assert (pm.Rows, pm.Columns) == image.shape == expected.shape
        assert np.allclose(pm.pixel_array.reshape(expected.shape), expected, rtol=0, atol=1e-6)
        assert pm.StudyInstanceUID == source.StudyInstanceUID and pm.SeriesInstanceUID != source.SeriesInstanceUID
        assert analysis.classes[index] in pm.SeriesDescription and "not for primary diagnosis" in pm.SeriesDescription
        assert pm.ContentDescription == "AI explanation, not for primary diagnosis"
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130402"  # Class activation
        derived = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert (derived.ReferencedSOPInstanceUID, derived.ReferencedSOPClassUID) == (source.SOPInstanceUID,
                                                                                     source.SOPClassUID)
        assert derived.get("ReferencedFrameNumber") == (3 if name == "multiframe" else None)
        assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        series.add(pm.SeriesInstanceUID)
    assert len(series) == len(analysis.classes)  # one series per class: a viewer toggles each
    shared = kinds["pm"][0].SharedFunctionalGroupsSequence[0]
    if name == "ct":  # a slice: its plane is copied
        position = kinds["pm"][0].PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == [float(v) for v in source.ImagePositionPatient]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        assert [float(v) for v in orientation] == [float(v) for v in source.ImageOrientationPatient]
        assert kinds["pm"][0].FrameOfReferenceUID == source.FrameOfReferenceUID
    else:  # a radiograph has no plane: the map's own frame of reference, never the source's
        assert kinds["pm"][0].FrameOfReferenceUID != source.get("FrameOfReferenceUID")
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in source.PixelSpacing]


@pytest.mark.parametrize("name", ["radiograph", "multiframe"])
def test_the_report_holds_the_probabilities_and_points_at_the_source_and_the_maps(exported, name):
    _, analysis, kinds, _ = exported[name]
    source = pydicom.dcmread(SOURCES[name][0], stop_before_pixels=True)
    sr = kinds["sr"][0]
    assert sr.StudyInstanceUID == source.StudyInstanceUID and "not for primary diagnosis" in sr.SeriesDescription
    assert concept(sr) == ("DCM", "126000") and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = [i for i in content_items(sr) if concept(i) == ("DCM", "125007")]  # Measurement Group
    assert len(groups) == len(analysis.classes) + 1  # one per class, one for confidence and input check
    for index, group in enumerate(groups[:-1]):
        finding = next(i for i in group.ContentSequence if i.ValueType == "CODE" and concept(i) == ("DCM", "121071"))
        assert finding.ConceptCodeSequence[0].CodeMeaning == analysis.classes[index]
        probabilities = [i for i in group.ContentSequence if concept(i) == ("DCM", "122157")]
        plain = [i for i in probabilities if "ContentSequence" not in i]  # no derivation: dropout off
        value = float(plain[0].MeasuredValueSequence[0].NumericValue)
        assert value == pytest.approx(float(analysis.probabilities[index]), abs=1e-6)
        mean = float(probabilities[1].MeasuredValueSequence[0].NumericValue)
        assert mean == pytest.approx(float(analysis.uncertainty.mean_probabilities[index]), abs=1e-6)
        activation = next(i for i in group.ContentSequence if concept(i) == ("DCM", "130402"))
        inferred = next(i for i in activation.ContentSequence if i.ValueType == "IMAGE")
        assert inferred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == kinds["pm"][index].SOPInstanceUID
        names = {concept(i): i.get("TextValue") for i in group.ContentSequence if i.ValueType == "TEXT"}
        assert names[("DCM", "111001")] == analysis.model_name and names[("DCM", "111003")] == analysis.model_version
        assert names[("DCM", "122405")] == "Lantern (synthetic demo)"  # the algorithm's manufacturer
        source_ref = next(i for i in group.ContentSequence if i.ValueType == "IMAGE")
        assert source_ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        if name == "multiframe":
            assert source_ref.ReferencedSOPSequence[0].ReferencedFrameNumber == 3
    case = {concept(i): i for i in groups[-1].ContentSequence}
    assert case[("99LANTERN", "OUTSIDE")].ConceptCodeSequence[0].CodeMeaning == "No"  # a phantom: inside
    assert float(case[("99LANTERN", "CONFIDENCE")].MeasuredValueSequence[0].NumericValue) == pytest.approx(
        analysis.uncertainty.confidence, abs=1e-6)
    texts = [i.TextValue for i in content_items(sr) if i.ValueType == "TEXT" and concept(i)[0] == "99LANTERN"]
    assert texts[0].startswith("AI explanation, not for primary diagnosis")
    maps = {pm.SOPInstanceUID for pm in kinds["pm"]}
    assert {source.SOPInstanceUID} | maps <= referenced_uids(sr) <= evidence_uids(sr)
    assert maps | {source.SOPInstanceUID, kinds["sc"][0].SOPInstanceUID} == evidence_uids(sr)


def test_a_ct_slice_outside_the_models_world_says_so_in_the_report(exported):
    _, analysis, kinds, _ = exported["ct"]
    assert analysis.input_check.outside
    sr = kinds["sr"][0]
    verdict = next(i for i in content_items(sr) if concept(i) == ("99LANTERN", "OUTSIDE"))
    assert verdict.ConceptCodeSequence[0].CodeMeaning == "Yes"
    reasons = [i.TextValue for i in content_items(sr) if concept(i) == ("99LANTERN", "OUTSIDEREASON")]
    assert reasons == list(analysis.input_check.reasons)


def test_a_png_source_gets_one_new_study_and_references_only_what_exists(exported):
    _, _, kinds, _ = exported["png"]
    sc, sr = kinds["sc"][0], kinds["sr"][0]
    assert len({ds.StudyInstanceUID for ds in (sc, sr, *kinds["pm"])}) == 1
    for pm in kinds["pm"]:
        assert "SourceImageSequence" not in pm and "ReferencedSeriesSequence" not in pm
        assert "DerivationImageSequence" not in pm.PerFrameFunctionalGroupsSequence[0]
    written = {ds.SOPInstanceUID for ds in (sc, *kinds["pm"])}
    assert referenced_uids(sr) <= written and evidence_uids(sr) == written


def test_an_anonymized_export_names_no_one_in_any_byte_and_its_references_still_hold(model, tmp_path):
    folder = tmp_path / "Smithers_Waylon"
    folder.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # a source with other IDs, age, institution...
    ds.PatientName, ds.PatientID = "Smithers^Waylon", "SMITHERS-1962"
    ds.StudyDescription, ds.InstitutionName = "Chest of Waylon Smithers", "Springfield General"
    ds.save_as(folder / "Smithers_Waylon_CT.dcm")
    image = load_image(folder / "Smithers_Waylon_CT.dcm")
    pseudonyms = Pseudonymizer(b"batch-salt-0001!")
    out = tmp_path / "shared"
    out.mkdir()
    paths = export_dicom_objects(out, image, analyze(image, model, OPTIONS), pseudonyms=pseudonyms,
                                 name=pseudonyms.image_name("SMITHERS-1962", image.path))
    secrets = [b"smithers", b"waylon", b"springfield", b"1ct1", b"abcd1234", b"smithers_waylon_ct",
               str(ds.StudyInstanceUID).encode(), str(ds.SOPInstanceUID).encode()]
    for path in paths:
        raw = path.read_bytes().lower()
        assert not [s for s in secrets if s in raw or s in path.name.lower().encode()], path.name
        assert dciodvfy_errors(path) == [], path.name
    kinds = by_kind(paths)
    every = (*kinds["sc"], *kinds["pm"], *kinds["sr"])
    assert all(d.PatientIdentityRemoved == "YES" and d.PatientID.startswith("ANON-") for d in every)
    assert len({d.StudyInstanceUID for d in every}) == 1 and every[0].StudyInstanceUID == pseudonyms.uid(
        ds.StudyInstanceUID)
    source_uid = pseudonyms.uid(ds.SOPInstanceUID)
    for pm in kinds["pm"]:
        derived = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derived.ReferencedSOPInstanceUID == pm.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
    sr = kinds["sr"][0]
    written = {kinds["sc"][0].SOPInstanceUID} | {pm.SOPInstanceUID for pm in kinds["pm"]}
    assert referenced_uids(sr) == written | {source_uid} == evidence_uids(sr)  # remapped alike
    assert "not for primary diagnosis" in sr.SeriesDescription and kinds["pm"][0].ContentDescription


def test_values_invalid_in_the_source_stay_out_of_every_object(model, tmp_path):
    ds = pydicom.dcmread(DEMO_STUDIES / "demo_nodule.dcm")
    ds.PixelSpacing, ds.PatientBirthDate, ds.PatientSex = [0, 0], "1962", "X"  # as some sources have them
    del ds.PatientOrientation
    ds.save_as(tmp_path / "odd.dcm")
    image = load_image(tmp_path / "odd.dcm")
    (tmp_path / "out").mkdir()
    paths = export_dicom_objects(tmp_path / "out", image, analyze(image, model, OPTIONS), name="odd")
    assert len(paths) == 5
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name
        out = pydicom.dcmread(path, stop_before_pixels=True)
        assert out.PatientBirthDate == "" and out.PatientSex == "" and out.PatientName == ds.PatientName


def test_kinds_are_chosen_by_name_and_a_triage_result_writes_nothing(model, tmp_path):
    assert parse_kinds("SR, sc") == ("sc", "sr") and parse_kinds(["pm"]) == ("pm",)
    with pytest.raises(LanternError, match="unknown DICOM object kind xx"):
        parse_kinds("pm,xx")
    image = load_image(DEMO_STUDIES / "demo_nodule.dcm")
    analysis = analyze(image, model, OPTIONS)
    only_maps = export_dicom_objects(tmp_path, image, analysis, kinds="pm", name="maps")
    assert [p.name for p in only_maps] == ["maps-pm-1-normal.dcm", "maps-pm-2-nodule.dcm", "maps-pm-3-effusion.dcm"]
    again = export_dicom_objects(tmp_path, image, analysis, name="maps")  # taken names: one fresh stem for all
    assert [p.name for p in again][::len(again) - 1] == ["maps-2.dcm", "maps-2-sr.dcm"]
    bare = analyze(image, model, AnalysisOptions(methods=(), mc_samples=0))
    with pytest.raises(LanternError, match="no explanation map"):
        export_dicom_objects(tmp_path / "none", image, bare)
    assert not (tmp_path / "none").exists()


def test_batch_writes_the_chosen_objects_in_one_series_per_kind_and_study(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for n in (1, 2):
        shutil.copy(DEMO_STUDIES / "demo_multiframe.dcm", source / f"frames{n}.dcm")  # one study, twice
    ds = pydicom.dcmread(source / "frames2.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(source / "frames2.dcm")
    run = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(source), "--out", str(out),
                          "--dicom-objects", "pm,sr", "--engine", "onnx-int8", "--mc", "4"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    kinds = by_kind(sorted((out / "dicom").glob("*.dcm")))
    assert kinds["sc"] == [] and len(kinds["sr"]) == 6 and len(kinds["pm"]) == 18  # 2 files x 3 frames
    assert len({d.SeriesInstanceUID for d in kinds["sr"]}) == 1
    assert len({d.SeriesInstanceUID for d in kinds["pm"]}) == 3  # one per class
    assert sorted(d.InstanceNumber for d in kinds["sr"]) == [1, 2, 3, 4, 5, 6]
    bad = subprocess.run([sys.executable, "-m", "engine.cli.main", "batch", str(source), "--out", str(tmp_path / "x"),
                          "--dicom-objects", "sc,seg"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and "unknown DICOM object kind seg" in bad.stderr


def test_the_exporter_loads_no_torch():
    code = "import sys, engine.exports.dicom_objects; print(sorted(m for m in sys.modules if m.startswith('torch')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
