"""scan_studies on a mixed folder, on a DICOMDIR written here and on pydicom's own DICOMDIR."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import CTImageStorage, RTPlanStorage, generate_uid

from tests.conftest import new_dicom
from engine.studies import ImageRef, ScanResult, Series, Study, scan_studies

PYDICOM_DICOMDIR = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "DICOMDIR"


def make_ct(study_uid: str, series_uid: str, *, series_number: int, instance: int, patient="Doe^Jane",
            description="Chest", frames: int | None = None, sop_class=CTImageStorage) -> Dataset:
    ds = new_dicom(sop_class)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = patient, patient[:3], "20240301", "120000"
    ds.StudyDescription, ds.SeriesDescription = description, f"series {series_number}"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Modality = "1", series_number, instance, "CT"
    if sop_class == CTImageStorage:
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        count = frames or 1
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = np.zeros((count, 4, 4), np.uint16).tobytes()
    return ds


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two studies, three series, written out of order, plus a PNG, a junk file and an RT plan."""
    study_a, study_b = generate_uid(), generate_uid()
    series = [(study_a, generate_uid(), 2), (study_a, generate_uid(), 1), (study_b, generate_uid(), 5)]
    for s_index, (study, uid, number) in enumerate(series):
        folder = tmp_path / "incoming" / f"s{s_index}"
        folder.mkdir(parents=True)
        for instance in (3, 1, 2):
            ds = make_ct(study, uid, series_number=number, instance=instance,
                         patient="Doe^Jane" if study == study_a else "Roe^Rick",
                         description="Chest" if study == study_a else "Head",
                         frames=4 if number == 5 else None)
            ds.save_as(folder / f"img{instance}.dcm", enforce_file_format=True)
    (tmp_path / "incoming" / "notes.txt").write_text("not an image")
    plan = make_ct(study_a, generate_uid(), series_number=9, instance=1, sop_class=RTPlanStorage)
    plan.save_as(tmp_path / "incoming" / "plan.dcm", enforce_file_format=True)
    photos = tmp_path / "incoming" / "photos"
    photos.mkdir()
    ok, png = cv2.imencode(".png", np.zeros((5, 5), np.uint8))
    png.tofile(photos / "skin.png")
    return tmp_path / "incoming"


def test_folder_with_two_studies_a_png_and_junk(mixed_folder):
    result = scan_studies(mixed_folder)
    assert isinstance(result, ScanResult)
    dicom_studies = [s for s in result.studies if not s.study_uid.startswith("folder:")]
    assert len(dicom_studies) == 2
    chest = next(s for s in dicom_studies if s.description == "Chest")
    head = next(s for s in dicom_studies if s.description == "Head")
    assert (chest.patient_name, chest.study_date) == ("Doe^Jane", "20240301")
    assert [s.number for s in chest.series] == [1, 2]  # sorted by Series Number
    assert [len(s.images) for s in chest.series] == [3, 3]
    for series in chest.series + head.series:
        assert [i.instance_number for i in series.images] == [1, 2, 3]
        assert all(isinstance(i, ImageRef) and i.path.is_file() and i.sop_instance_uid for i in series.images)
    assert [i.frames for i in head.series[0].images] == [4, 4, 4]
    assert head.series[0].modality == "CT"

    pseudo = next(s for s in result.studies if s.study_uid.startswith("folder:"))
    assert pseudo.description == "photos"
    assert [i.path.name for i in pseudo.series[0].images] == ["skin.png"]

    skipped = {p.name: reason for p, reason in result.skipped}
    assert set(skipped) == {"notes.txt", "plan.dcm"}
    assert "not a DICOM" in skipped["notes.txt"]
    assert "RT Plan" in skipped["plan.dcm"]
    assert len(result) == 3 and list(result) == list(result.studies)


def test_single_file(mixed_folder):
    file = mixed_folder / "s0" / "img1.dcm"
    result = scan_studies(file)
    assert len(result.studies) == 1
    assert result.studies[0].series[0].images[0].path == file


def test_missing_path_is_reported(tmp_path):
    result = scan_studies(tmp_path / "nowhere")
    assert result.studies == () and result.skipped[0][1] == "does not exist"


def test_dicomdir_written_with_fileset(tmp_path):
    study = generate_uid()
    fileset = FileSet()
    series_uids = (generate_uid(), generate_uid())
    for number, uid in enumerate(series_uids, start=1):
        for instance in (2, 1):
            fileset.add(make_ct(study, uid, series_number=number, instance=instance))
    out = tmp_path / "media"
    fileset.write(out)
    result = scan_studies(out / "DICOMDIR")
    assert result.skipped == ()
    assert len(result.studies) == 1
    (only,) = result.studies
    assert isinstance(only, Study) and only.study_uid == study
    assert [s.series_uid for s in only.series] == list(series_uids)
    assert all(isinstance(s, Series) and [i.instance_number for i in s.images] == [1, 2] for s in only.series)


def test_pydicom_dicomdir():
    result = scan_studies(PYDICOM_DICOMDIR)
    images = [i for study in result.studies for series in study.series for i in series.images]
    assert len(result.studies) == 6  # two patients; the folder names are not study boundaries
    assert len(images) == 31  # every instance the DICOMDIR lists
    assert {s.patient_id for s in result.studies} == {"77654033", "98890234"}
    assert [s.study_date for s in result.studies] == sorted(s.study_date for s in result.studies)
    for study in result.studies:
        numbers = [s.number for s in study.series]
        assert numbers == sorted(numbers)


def test_folder_containing_a_dicomdir_scans_the_files_themselves():
    result = scan_studies(PYDICOM_DICOMDIR.parent)
    reasons = {p.name: r for p, r in result.skipped}
    assert "DICOMDIR index" in reasons["DICOMDIR"]
    images = [i for study in result.studies for series in study.series for i in series.images]
    assert len(images) >= 31
