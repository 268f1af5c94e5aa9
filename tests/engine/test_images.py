"""load_image on small DICOM and raster files written here, one property per test."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.conftest import new_dicom
from engine.errors import ImageLoadError, ImageTooLargeError, NotAnImageError
from engine.images import SourceImage, Window, load_image


def base_dataset(sop_class=SecondaryCaptureImageStorage) -> Dataset:
    ds = new_dicom(sop_class)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P-001"
    ds.Modality = "OT"
    return ds


def write_image(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", *,
                frames: int | None = None, bits_stored: int | None = None, **attrs) -> Path:
    """A native DICOM image; ``pixels`` is (frames,) H, W (, 3) and sets the pixel module."""
    ds = base_dataset(attrs.pop("sop_class", SecondaryCaptureImageStorage))
    color = pixels.ndim == (4 if frames else 3)
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames:
        ds.NumberOfFrames = frames
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(dtype=np.uint16, shape=(32, 48), start=0, step=1) -> np.ndarray:
    return (start + step * np.arange(shape[0] * shape[1])).reshape(shape).astype(dtype)


def test_monochrome1_is_inverted_with_its_window(tmp_path):
    raw = gradient(np.uint16, step=2)  # 0..3070, 12 bits stored
    path = write_image(tmp_path / "m1.dcm", raw, "MONOCHROME1", bits_stored=12,
                       WindowCenter=1000, WindowWidth=500)
    image = load_image(path)
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, 4095 - raw.astype(np.float32))
    assert image.pixels[0, 0] > image.pixels[-1, -1]  # stored 0 is white in MONOCHROME1
    assert image.window == Window(4095 - 1000, 500)
    # Shown to the reader in the header's own terms: L 1000, as the file says.
    assert image.header_window(image.window.center, image.window.width) == (1000, 500)


def test_rescale_slope_intercept_gives_modality_values_and_keeps_window(tmp_path):
    raw = gradient(np.int16, start=-100, step=3)
    path = write_image(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=[40, 400], WindowWidth=[400, 2000], sop_class=CTImageStorage)
    image = load_image(path)
    np.testing.assert_allclose(image.pixels, raw.astype(np.float64) * 2 - 1024)
    assert image.window == Window(40, 400)  # the first of several windows
    assert image.padding_mask is None


def test_window_from_percentiles_when_file_has_none(tmp_path):
    raw = gradient(np.uint16, shape=(100, 100))  # 0..9999
    image = load_image(write_image(tmp_path / "nowin.dcm", raw))
    assert image.window.low == pytest.approx(np.percentile(raw, 0.5), rel=1e-3)
    assert image.window.high == pytest.approx(np.percentile(raw, 99.5), rel=1e-3)


def test_voi_lut_sequence_becomes_a_window(tmp_path):
    raw = gradient(np.uint16, shape=(16, 16))
    item = Dataset()
    item.LUTDescriptor = [256, 100, 8]
    lut = [0] * 50 + [int(v) for v in np.linspace(0, 255, 100)] + [255] * 106
    item.add_new("LUTData", "US", lut)
    path = write_image(tmp_path / "voilut.dcm", raw, VOILUTSequence=Sequence([item]))
    window = load_image(path).window
    assert 145 <= window.low <= 151 and 246 <= window.high <= 251


def test_multi_frame_decodes_the_requested_frame_only(tmp_path):
    frames = np.stack([np.full((8, 10), 10 * i, np.uint16) for i in range(3)])
    path = write_image(tmp_path / "multi.dcm", frames, frames=3)
    image = load_image(path, frame=2)
    assert image.frame == 2 and image.n_frames == 3 and image.shape == (8, 10)
    assert np.all(image.pixels == 20)
    with pytest.raises(ImageLoadError, match=r"multi\.dcm: frame 4 .* 3 frames"):
        load_image(path, frame=3)
    with pytest.raises(ImageLoadError):
        load_image(path, frame=-1)


def test_rgb_stays_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = load_image(write_image(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert image.is_color and image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb)


def test_ybr_full_becomes_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = (200, 30, 30)
    rgb[4:] = (20, 60, 220)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    image = load_image(write_image(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.abs(image.pixels.astype(int) - rgb).max() <= 2


def test_16_bit_rgb_is_scaled_to_8_bit(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0] = 65535
    rgb[..., 1] = 32768
    image = load_image(write_image(tmp_path / "rgb16.dcm", rgb, "RGB"))
    assert image.pixels.dtype == np.uint8
    assert tuple(image.pixels[0, 0]) == (255, 128, 0)


def test_palette_color_is_looked_up(tmp_path):
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ramp = np.arange(256)
    path = write_image(
        tmp_path / "palette.dcm", indices, "PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=(ramp * 257).astype("<u2").tobytes(),
        GreenPaletteColorLookupTableData=np.zeros(256, "<u2").tobytes(),
        BluePaletteColorLookupTableData=((255 - ramp) * 257).astype("<u2").tobytes(),
    )
    image = load_image(path)
    assert image.is_color and image.pixels.dtype == np.uint8
    assert tuple(image.pixels[1, 2]) == (10, 0, 245)


def test_pixel_padding_is_masked_and_left_out_of_the_window(tmp_path):
    raw = gradient(np.int16, shape=(20, 20), start=0, step=1)  # 0..399
    raw[:, :10] = -2000
    path = write_image(tmp_path / "pad.dcm", raw, PixelPaddingValue=-2000, sop_class=CTImageStorage)
    image = load_image(path)
    assert image.padding_mask is not None
    np.testing.assert_array_equal(image.padding_mask, raw == -2000)
    assert image.window.low > 0  # -2000 would drag the low end far down


def test_pixel_padding_range_limit(tmp_path):
    raw = gradient(np.uint16, shape=(10, 10))  # 0..99
    path = write_image(tmp_path / "padrange.dcm", raw, PixelPaddingValue=0, PixelPaddingRangeLimit=9)
    mask = load_image(path).padding_mask
    np.testing.assert_array_equal(mask, raw <= 9)


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = write_image(tmp_path / "cut.dcm", gradient(np.uint16, shape=(64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[:-500])
    with pytest.raises(ImageLoadError, match=r"^cut\.dcm: .*truncated"):
        load_image(path)


def test_header_declaring_more_pixels_than_the_file_holds(tmp_path):
    path = tmp_path / "short.dcm"
    write_image(path, gradient(np.uint16, shape=(4, 4)))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 512  # pixel data still 32 bytes
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match=r"^short\.dcm: .*holds only 32 bytes"):
        load_image(path)


def test_huge_header_is_refused_fast_without_allocating(tmp_path):
    path = tmp_path / "huge.dcm"
    write_image(path, gradient(np.uint16, shape=(4, 4)))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match=r"^huge\.dcm: "):
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2
    assert peak < 50 * 2**20


def test_file_without_preamble_or_file_meta_opens(tmp_path):
    ds = base_dataset()
    del ds.file_meta
    raw = gradient(np.uint16, shape=(6, 7))
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 6, 7, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = raw.tobytes()
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"  # no preamble, no DICM, no group 2
    image = load_image(path)
    np.testing.assert_array_equal(image.pixels, raw)
    assert image.metadata.patient_name == "Doe^Jane"


def test_metadata_and_tag_rows(tmp_path):
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = generate_uid()
    path = write_image(
        tmp_path / "meta.dcm", gradient(np.uint16, shape=(6, 5), step=100), sop_class=CTImageStorage,
        Modality="CT", BodyPartExamined="CHEST", PixelSpacing=[0.5, 0.7], InstanceNumber=7,
        StudyDate="20240102", SeriesDescription="Axial", ReferencedImageSequence=Sequence([ref]),
    )
    image = load_image(path)
    meta = image.metadata
    assert (meta.modality, meta.body_part, meta.pixel_spacing) == ("CT", "CHEST", (0.5, 0.7))
    assert (meta.rows, meta.columns, meta.frames, meta.instance_number) == (6, 5, 1, 7)
    assert meta.patient_name == "Doe^Jane" and meta.photometric == "MONOCHROME2"
    by_keyword = {t.keyword: t for t in image.tags}
    assert by_keyword["PatientID"].value == "P-001" and by_keyword["PatientID"].tag == "(0010,0020)"
    assert by_keyword["TransferSyntaxUID"].tag == "(0002,0010)"
    nested = by_keyword["ReferencedSOPInstanceUID"]
    assert nested.tag.startswith("> ") and nested.value == str(ref.ReferencedSOPInstanceUID)
    pixel_row = by_keyword["PixelData"]
    assert pixel_row.value.startswith("<pixel data: 60 bytes")
    assert all(len(t.value) <= 120 for t in image.tags)


def test_imager_pixel_spacing_is_used_when_pixel_spacing_is_absent(tmp_path):
    path = write_image(tmp_path / "cr.dcm", gradient(np.uint16, shape=(4, 4)), ImagerPixelSpacing=[0.1, 0.2])
    assert load_image(path).metadata.pixel_spacing == (0.1, 0.2)


def test_dicom_without_pixels_says_what_it_is(tmp_path):
    ds = base_dataset(BasicTextSRStorage)
    ds.Modality = "SR"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NotAnImageError, match=r"^report\.dcm: .*structured report"):
        load_image(path)


def write_raster(path: Path, pixels: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(path.suffix, pixels)
    assert ok
    encoded.tofile(path)
    return path


def test_png_8_bit_gray(tmp_path):
    gray = (gradient(np.int64, shape=(10, 20)) % 256).astype(np.uint8)
    image = load_image(write_raster(tmp_path / "röntgen.png", gray.astype(np.uint8)))
    assert image.pixels.dtype == np.float32 and image.shape == (10, 20)
    np.testing.assert_array_equal(image.pixels, gray)
    assert image.window == Window(127.5, 255)
    assert image.metadata.photometric == "MONOCHROME2" and image.metadata.rows == 10


def test_png_16_bit_gray_gets_a_percentile_window(tmp_path):
    gray = gradient(np.uint16, shape=(100, 100), step=5)
    image = load_image(write_raster(tmp_path / "g16.png", gray))
    np.testing.assert_array_equal(image.pixels, gray)
    assert image.window.high == pytest.approx(np.percentile(gray, 99.5), rel=1e-3)


def test_png_colour_with_alpha_becomes_rgb(tmp_path):
    bgra = np.zeros((6, 6, 4), np.uint8)
    bgra[...] = (10, 20, 30, 128)  # OpenCV order: blue, green, red, alpha
    image = load_image(write_raster(tmp_path / "c.png", bgra))
    assert image.pixels.shape == (6, 6, 3) and image.pixels.dtype == np.uint8
    assert tuple(image.pixels[0, 0]) == (30, 20, 10)
    assert image.metadata.photometric == "RGB"


def test_png_16_bit_colour_is_scaled(tmp_path):
    bgr = np.zeros((4, 4, 3), np.uint16)
    bgr[..., 2] = 65535
    image = load_image(write_raster(tmp_path / "c16.png", bgr))
    assert image.pixels.dtype == np.uint8 and tuple(image.pixels[0, 0]) == (255, 0, 0)


def test_jpeg_and_tiff_open(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    for name in ("a.jpg", "b.tif"):
        image = load_image(write_raster(tmp_path / name, gray))
        assert image.shape == (16, 32)
        assert np.abs(image.pixels - gray).max() < 8


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Patient looked fine.\n" * 20)
    with pytest.raises(ImageLoadError, match=r"^notes\.txt: not an image file"):
        load_image(path)


def test_damaged_png_is_refused(tmp_path):
    path = write_raster(tmp_path / "bad.png", np.zeros((50, 50), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ImageLoadError, match=r"^bad\.png: "):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match=r"^gone\.dcm: .*does not exist"):
        load_image(tmp_path / "gone.dcm")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_image(tmp_path / "locked.dcm", gradient(np.uint16, shape=(4, 4)))
    real_open = open

    def guarded_open(file, *args, **kwargs):  # chmod 0 does not stop root, so deny here
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    with pytest.raises(ImageLoadError, match=r"^locked\.dcm: permission denied"):
        load_image(path)


def test_source_file_is_left_untouched(tmp_path):
    path = write_image(tmp_path / "keep.dcm", gradient(np.uint16, shape=(16, 16)), "MONOCHROME1")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    image = load_image(path)
    assert isinstance(image, SourceImage)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_deflated_file_opens_and_huge_deflated_header_is_refused(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    raw = gradient(np.uint16, shape=(8, 8))
    path = write_image(tmp_path / "dfl.dcm", raw)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    np.testing.assert_array_equal(load_image(path).pixels, raw)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match=r"^dfl\.dcm: "):
        load_image(path)


def test_huge_header_blob_is_summarised_not_read(tmp_path):
    path = write_image(tmp_path / "blob.dcm", gradient(np.uint16, shape=(4, 4)))
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "Vendor")  # private creator
    ds.add_new(0x00091011, "OB", bytes(20 << 20))
    ds.save_as(path)
    image = load_image(path)
    blob = next(t for t in image.tags if t.tag == "(0009,1011)")
    assert blob.value == f"<{20 << 20} bytes, not read>" and blob.keyword == ""


def test_tag_rows_can_be_left_out_without_changing_the_image(demo_studies):
    path = demo_studies / "demo_nodule.dcm"
    full, lean = load_image(path), load_image(path, with_tags=False)
    assert len(full.tags) > 20 and lean.tags == ()
    np.testing.assert_array_equal(full.pixels, lean.pixels)
    assert full.metadata == lean.metadata and full.window == lean.window
