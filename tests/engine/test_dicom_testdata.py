"""load_image over every test file pydicom has on disk: each opens or is refused in plain words.

Files pydicom would download from the network are used only if already in its local cache.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from engine.errors import ImageLoadError
from engine.images import SourceImage, load_image

PYDICOM_DATA = Path(pydicom.data.__file__).parent
DOWNLOAD_CACHE = Path.home() / ".pydicom" / "data"  # pydicom's cache; never filled from here
TIME_BUDGET_S = 20.0


def shipped_files() -> list[Path]:
    roots = [PYDICOM_DATA / "test_files", PYDICOM_DATA / "palettes", PYDICOM_DATA / "charset_files"]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    if DOWNLOAD_CACHE.is_dir():
        files += [p for p in DOWNLOAD_CACHE.iterdir() if p.is_file()]
    return sorted(set(files))


FILES = shipped_files()


def file_id(path: Path) -> str:
    for root in (PYDICOM_DATA, DOWNLOAD_CACHE):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


def has_pixel_data(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, defer_size=256)
        return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    except Exception:  # not DICOM at all
        return False


@pytest.fixture(scope="module")
def outcomes() -> dict[Path, tuple[object, float]]:
    """Each file's SourceImage or raised exception, and the seconds it took."""
    results = {}
    for path in FILES:
        started = time.perf_counter()
        try:
            result: object = load_image(path)
        except Exception as exc:  # judged per file below
            result = exc
        results[path] = (result, time.perf_counter() - started)
    return results


def test_the_test_data_is_there():
    assert len(FILES) > 100


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_file_opens_or_is_refused_cleanly(path, outcomes):
    result, seconds = outcomes[path]
    assert seconds < TIME_BUDGET_S
    if isinstance(result, SourceImage):
        meta = result.metadata
        assert result.shape == (meta.rows, meta.columns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on the odd files it tolerates
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert result.shape == (int(header.Rows), int(header.Columns))
        if result.is_color:
            assert result.pixels.dtype == np.uint8 and result.pixels.shape[2] == 3
        else:
            assert result.pixels.dtype == np.float32
            assert np.isfinite(result.pixels).all()
        assert np.isfinite([result.window.center, result.window.width]).all()
        assert result.window.width > 0
    else:
        assert isinstance(result, ImageLoadError), f"raw {type(result).__name__} escaped: {result}"
        assert str(result).startswith(path.name + ": ")
        assert result.__cause__ is None or isinstance(result.__cause__, BaseException)


def test_most_files_with_pixel_data_open(outcomes):
    with_pixels = [p for p in FILES if has_pixel_data(p)]
    opened = [p for p in with_pixels if isinstance(outcomes[p][0], SourceImage)]
    assert len(with_pixels) >= 60
    assert len(opened) >= 0.6 * len(with_pixels), [file_id(p) for p in with_pixels if p not in opened]


EXPECTED_TO_DECODE = {
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline",
    "SC_rgb_jpeg.dcm": "JPEG baseline (written implicit though declared explicit)",
    "JPGExtended.dcm": "JPEG extended 12-bit",
    "JPEG2000.dcm": "JPEG 2000",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "GDCMJ2K_TextGBR.dcm": "JPEG 2000 colour",
    "MR_small_RLE.dcm": "RLE",
    "SC_rgb_rle_16bit.dcm": "RLE 16-bit colour",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS near-lossless",
    "image_dfl.dcm": "deflated",
    "MR_small_bigendian.dcm": "big endian",
    "SC_ybr_full_422_uncompressed.dcm": "YBR_FULL_422",
    "examples_palette.dcm": "PALETTE COLOR",
    "SC_rgb_rle_2frame.dcm": "multi-frame RLE",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TO_DECODE), ids=lambda n: f"{n} ({EXPECTED_TO_DECODE[n]})")
def test_supported_encodings_decode(name, outcomes):
    path = PYDICOM_DATA / "test_files" / name
    if path not in outcomes:
        pytest.skip(f"{name} is download-only and not cached here")
    result, _ = outcomes[path]
    assert isinstance(result, SourceImage), result


LOSSLESS_MR_VARIANTS = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                        "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"]


@pytest.mark.parametrize("name", LOSSLESS_MR_VARIANTS)
def test_lossless_encodings_give_the_same_pixels(name, outcomes):
    reference = outcomes[PYDICOM_DATA / "test_files" / "MR_small.dcm"][0]
    result = outcomes[PYDICOM_DATA / "test_files" / name][0]
    assert isinstance(reference, SourceImage) and isinstance(result, SourceImage)
    np.testing.assert_array_equal(result.pixels, reference.pixels)
    assert result.window == reference.window


def test_non_images_say_what_they_are(outcomes):
    expectations = {"rtplan.dcm": "RT Plan", "test-SR.dcm": "structured report",
                    "waveform_ecg.dcm": "waveform", "rtstruct.dcm": "RT Structure Set",
                    "dicomdirtests/DICOMDIR": "DICOMDIR", "MR_truncated.dcm": "truncated",
                    # pixels, but not pictures to classify
                    "rtdose.dcm": "RT Dose grid", "liver_1frame.dcm": "segmentation (SEG",
                    "reportsi.dcm": "structured report"}
    for name, words in expectations.items():
        result = outcomes[PYDICOM_DATA / "test_files" / name][0]
        assert isinstance(result, ImageLoadError) and words in str(result), (name, result)


def test_second_frame_of_a_compressed_multi_frame_file():
    path = PYDICOM_DATA / "test_files" / "SC_rgb_rle_2frame.dcm"
    first, second = load_image(path, 0), load_image(path, 1)
    assert second.frame == 1 and second.n_frames == 2
    assert not np.array_equal(first.pixels, second.pixels)
    with pytest.raises(ImageLoadError, match="frame 3"):
        load_image(path, 2)
