"""Synthetic phantoms (engine.synthetic.phantoms) and the demo studies made from them (engine.synthetic.demo_data)."""

from __future__ import annotations

import shutil
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from engine.synthetic.demo_data import DEMO_FILES, write_demo_studies
from engine.synthetic.phantoms import CLASSES, Phantom, make_dataset, make_phantom
from engine.resources import DEMO_STUDIES

NORMAL, NODULE, EFFUSION = (CLASSES.index(c) for c in ("normal", "nodule", "effusion"))


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(300, seed=11)


def test_classes():
    assert CLASSES == ("normal", "nodule", "effusion")


def test_deterministic_for_a_seed():
    a = make_dataset(6, seed=3)
    b = make_dataset(6, seed=3)
    c = make_dataset(6, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    p = make_phantom(np.random.default_rng(5), NODULE)
    q = make_phantom(np.random.default_rng(5), NODULE)
    np.testing.assert_array_equal(p.image, q.image)
    np.testing.assert_array_equal(p.mask, q.mask)
    assert p.lesion_center == q.lesion_center


def test_shapes_and_dtypes(dataset):
    images, masks, labels = dataset
    assert images.shape == (300, 256, 256) and images.dtype == np.float32
    assert masks.shape == (300, 256, 256) and masks.dtype == np.bool_
    assert labels.shape == (300,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=3).tolist() == [100, 100, 100]
    assert images.min() >= 0 and images.max() <= 4095
    assert np.isfinite(images).all()
    p = make_phantom(np.random.default_rng(0), EFFUSION, size=128)
    assert isinstance(p, Phantom)
    assert p.image.shape == p.mask.shape == (128, 128)
    assert p.image.dtype == np.float32 and p.mask.dtype == np.bool_ and p.label == EFFUSION


def test_unbalanced_labels_cover_all_classes():
    _, _, labels = make_dataset(60, seed=1, size=64, balanced=False)
    assert set(labels.tolist()) == {0, 1, 2}


def test_masks_empty_for_normal(dataset):
    _, masks, labels = dataset
    assert not masks[labels == NORMAL].any()
    p = make_phantom(np.random.default_rng(1), NORMAL)
    assert p.lesion_center is None and not p.mask.any()


def test_nodule_mask_is_a_disk_inside_a_lung(dataset):
    images, masks, labels = dataset
    for image, mask in zip(images[labels == NODULE], masks[labels == NODULE]):
        area = int(mask.sum())
        assert np.pi * 5**2 < area < np.pi * 19**2
        # inside a lung: the ring just outside the nodule is dark lung, darker than the body
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        body = image[image > np.percentile(image, 25)]
        assert np.median(image[ring]) < np.median(body)
        # and the nodule is brighter than its surroundings
        assert image[mask].mean() > image[ring].mean()
    # the generator's own check: the centre lies where the mask is
    rng = np.random.default_rng(2)
    for _ in range(10):
        p = make_phantom(rng, NODULE)
        r, c = p.lesion_center
        assert p.mask[int(r), int(c)]


def test_nodule_inside_lung_field_mask_geometry():
    # the mask never touches the image border or the body outline
    rng = np.random.default_rng(8)
    for _ in range(30):
        p = make_phantom(rng, NODULE)
        rows, cols = np.nonzero(p.mask)
        assert rows.min() > 10 and cols.min() > 10
        assert rows.max() < 245 and cols.max() < 245


def test_effusion_mask_at_the_base_of_one_lung(dataset):
    images, masks, labels = dataset
    h, w = masks.shape[1:]
    for image, mask in zip(images[labels == EFFUSION], masks[labels == EFFUSION]):
        rows, cols = np.nonzero(mask)
        assert rows.size > 100
        assert rows.mean() > h / 2  # lower half
        assert (rows >= h * 0.4).mean() > 0.95
        # one side only
        left, right = (cols < w / 2).mean(), (cols >= w / 2).mean()
        assert max(left, right) > 0.95
        # the fluid is bright compared with the aerated lung just above it
        top = rows.min()
        above = np.zeros_like(mask)
        above[max(top - 25, 0) : top - 5, cols.min() : cols.max() + 1] = True
        above &= image < np.percentile(image[mask], 50)
        if above.sum() > 20:
            assert image[mask].mean() > image[above].mean()


def test_mean_intensity_does_not_separate_the_classes(dataset):
    images, _, labels = dataset
    means = images.mean(axis=(1, 2))
    for lesion in (NODULE, EFFUSION):
        sel = (labels == NORMAL) | (labels == lesion)
        m, y = means[sel], labels[sel] == lesion
        best = max(
            max(((m > t) == y).mean(), ((m <= t) == y).mean()) for t in np.unique(m)
        )
        assert best < 0.7, (CLASSES[lesion], best)


def test_speed():
    import time

    make_phantom(np.random.default_rng(0), NODULE)  # warm the caches
    t = time.process_time()
    make_dataset(60, seed=0)
    rate = 60 / max(time.process_time() - t, 1e-6)
    assert rate > 100, f"{rate:.0f} phantoms/s"  # ~300+/s on one idle core; loose for CI


def test_phantoms_module_needs_no_torch_or_qt():
    import subprocess

    code = (
        "import sys, engine.synthetic.phantoms, engine.synthetic.demo_data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'PyQt5')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- demo studies ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    paths = write_demo_studies(out)
    assert [p.name for p in paths] == list(DEMO_FILES)
    return out


@pytest.mark.parametrize(
    "name,patient,pid,frames",
    [
        ("demo_nodule.dcm", "DEMO^NODULE", "LANTERN-DEMO-1", 1),
        ("demo_effusion.dcm", "DEMO^EFFUSION", "LANTERN-DEMO-2", 1),
        ("demo_normal.dcm", "DEMO^NORMAL", "LANTERN-DEMO-3", 1),
        ("demo_multiframe.dcm", "DEMO^SERIES", "LANTERN-DEMO-4", 3),
    ],
)
def test_demo_dicom_reads_back(demo_dir, name, patient, pid, frames):
    raw = (demo_dir / name).read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(demo_dir / name)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert str(ds.PatientName) == patient and ds.PatientID == pid
    assert ds.Modality == "DX" and ds.BodyPartExamined == "CHEST"
    assert ds.StudyDescription == "Synthetic chest phantom"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0
    assert [float(x) for x in ds.PixelSpacing] == [0.7, 0.7]
    assert float(ds.WindowWidth) > 0
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID):
        assert UID(uid).is_valid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    arr = ds.pixel_array
    expected = (512, 512) if frames == 1 else (frames, 512, 512)
    assert arr.shape == expected and arr.dtype == np.uint16
    assert arr.max() <= 4095 and arr.std() > 100
    if frames > 1:
        assert int(ds.NumberOfFrames) == frames


def test_demo_studies_are_distinct(demo_dir):
    studies = {pydicom.dcmread(p).StudyInstanceUID for p in demo_dir.glob("*.dcm")}
    assert len(studies) == 4


def test_demo_pngs(demo_dir):
    eight = cv2.imread(str(demo_dir / "demo_nodule.png"), cv2.IMREAD_UNCHANGED)
    sixteen = cv2.imread(str(demo_dir / "demo_nodule_16bit.png"), cv2.IMREAD_UNCHANGED)
    assert eight.shape == (512, 512) and eight.dtype == np.uint8
    assert sixteen.shape == (512, 512) and sixteen.dtype == np.uint16
    ds = pydicom.dcmread(demo_dir / "demo_nodule.dcm")
    np.testing.assert_array_equal(sixteen, ds.pixel_array)
    assert "SYNTHETIC" in (demo_dir / "README.txt").read_text()


def test_demo_studies_are_reproducible(tmp_path, demo_dir):
    write_demo_studies(tmp_path / "a")  # demo_dir is the first run
    for name in DEMO_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_shipped_demo_studies_are_up_to_date(demo_dir):
    """resources/studies holds exactly what `python -m engine.synthetic.demo_data` writes today."""
    shipped = DEMO_STUDIES
    if not (shipped / "README.txt").exists():
        pytest.skip("no shipped demo studies in this checkout")
    stale = "is stale: run `python -m engine.synthetic.demo_data resources/studies`"
    for name in DEMO_FILES:
        assert (shipped / name).exists(), name
        if not name.endswith(".dcm"):
            continue
        # Same UIDs and tags; pixels equal up to float rounding on another CPU / library build.
        old, new = pydicom.dcmread(shipped / name), pydicom.dcmread(demo_dir / name)
        assert old.SOPInstanceUID == new.SOPInstanceUID, f"{name} {stale}"
        diff = np.abs(old.pixel_array.astype(np.int32) - new.pixel_array.astype(np.int32))
        assert diff.mean() < 1.0, f"{name} {stale}"


def test_demo_studies_rewrite_only_their_own_files(tmp_path, demo_dir):
    out = tmp_path / "s"
    shutil.copytree(demo_dir, out)
    before = {n: (out / n).stat().st_mtime_ns for n in DEMO_FILES}
    write_demo_studies(out, seed=7)  # identical: nothing touched
    assert {n: (out / n).stat().st_mtime_ns for n in DEMO_FILES} == before
    write_demo_studies(out, seed=8)  # different, but ours: replaced
    assert (out / "README.txt").read_text().count("seed 8") == 1
    (out / "demo_normal.dcm").write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        write_demo_studies(out, seed=7)
    assert (out / "demo_normal.dcm").read_bytes() == b"someone else's file"
    assert not list(out.glob("*.tmp"))
