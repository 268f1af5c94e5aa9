"""Damaged copies of real image files, made byte by byte from a seed: the same damage every run.

Sources: the demo studies, and test files pydicom ships (never the ones it would download) in
the compressed transfer syntaxes whose decoders are native code: JPEG baseline (libjpeg),
JPEG-LS (CharLS), JPEG 2000 (openjpeg) and RLE (Rust).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTPlanStorage, generate_uid

from engine.resources import DEMO_STUDIES

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"

# name: (file, how many damaged copies)
SOURCES = {
    "demo_normal": (DEMO_STUDIES / "demo_normal.dcm", 40),
    "demo_multiframe": (DEMO_STUDIES / "demo_multiframe.dcm", 8),
    "demo_png": (DEMO_STUDIES / "demo_nodule.png", 20),
    "ct_explicit_le": (PYDICOM_FILES / "CT_small.dcm", 40),
    "jpeg_baseline": (PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm", 40),
    "jpeg_ls": (PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm", 40),
    "jpeg_2000": (PYDICOM_FILES / "MR_small_jp2klossless.dcm", 40),
    "rle": (PYDICOM_FILES / "MR_small_RLE.dcm", 50),
    "rt_plan": (PYDICOM_FILES / "rtplan.dcm", 20),
}

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
SOP_CLASS_UI = b"\x08\x00\x16\x00UI"  # (0008,0016) SOP Class UID, explicit VR little endian


def flip_bytes(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        damaged[rng.randrange(start, len(damaged))] = rng.randrange(256)
    return bytes(damaged)


def flip_pixel_bytes(rng: random.Random, data: bytes) -> bytes:
    """Damage where the decoders read: after the pixel data tag (the second half if there is none)."""
    at = data.rfind(PIXEL_DATA_TAG)
    return flip_bytes(rng, data, at if at > 0 else len(data) // 2)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, len(data))]


def insert_junk(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(0, len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[at:]


def uv_sop_class(data: bytes, length: int = 26) -> bytes:
    """The SOP Class UID re-encoded as VR UV (64-bit integers) with ``length`` bytes, not a
    multiple of 8: pydicom raises BytesLengthException on first reading the value."""
    at = data.find(SOP_CLASS_UI)
    assert at >= 0, "explicit VR little endian files only"
    (old_length,) = struct.unpack("<H", data[at + 6 : at + 8])
    value = (data[at + 8 : at + 8 + old_length] + b"\x00" * length)[:length]
    return data[:at] + b"\x08\x00\x16\x00UV\x00\x00" + struct.pack("<I", length) + value + data[at + 8 + old_length :]


def uv_with_random_length(rng: random.Random, data: bytes) -> bytes:
    if data.find(SOP_CLASS_UI) < 0:  # implicit VR or no SOP Class: another damage
        return flip_bytes(rng, data)
    return uv_sop_class(data, rng.choice([1, 3, 5, 7, 9, 13, 26]))


def header_value(rng: random.Random, data: bytes) -> bytes:
    """Rows, Columns, Bits Allocated or Samples per Pixel set to an odd or absurd value."""
    for tag in rng.sample([b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x00\x01", b"\x28\x00\x02\x00"], 4):
        at = data.find(tag)
        if at >= 0:
            damaged = bytearray(data)
            damaged[at + 8 : at + 10] = struct.pack("<H", rng.choice([0, 1, 3, 7, 17, 255, 4096, 65535]))
            return bytes(damaged)
    return flip_bytes(rng, data)


DAMAGE = {
    "flip": flip_bytes, "flip_pixels": flip_pixel_bytes, "truncate": truncate, "insert": insert_junk,
    "uv": uv_with_random_length, "header": header_value,
}


def j2k_declaring_a_huge_image() -> bytes:
    """A JPEG 2000 file whose codestream (SIZ marker) declares 100000 x 100000 pixels under a
    64 x 64 DICOM header: openjpeg would allocate ~40 GB for it, and the kernel kill the process."""
    data = (PYDICOM_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    siz = data.find(b"\xff\x4f\xff\x51")
    assert siz > 0
    damaged = bytearray(data)
    damaged[siz + 8 : siz + 16] = struct.pack(">II", 100_000, 100_000)  # Xsiz, Ysiz
    return bytes(damaged)


def non_image_with_uv_sop_class(folder: Path) -> Path:
    """An RT Plan (no pixels) whose SOP Class UID is a UV value of 26 bytes: the folder scan
    reaches it describing what the file holds instead of an image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTPlanStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTPlanStorage, ds.file_meta.MediaStorageSOPInstanceUID, "RTPLAN"
    path = folder / "plan_uv.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(uv_sop_class(path.read_bytes()))
    return path


def write_damaged_copies(folder: Path, seed: int = 16) -> list[Path]:
    """Every source once as it is, its seeded damaged copies, and the special cases above."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for name, (source, copies) in SOURCES.items():
        data = source.read_bytes()
        (folder / f"{name}{source.suffix}").write_bytes(data)
        written.append(folder / f"{name}{source.suffix}")
        for n in range(copies):
            kind = rng.choice(sorted(DAMAGE))
            path = folder / f"{name}-{n:03d}-{kind}{source.suffix}"
            path.write_bytes(DAMAGE[kind](rng, data))
            written.append(path)
    specials = {"demo_normal-uv26.dcm": uv_sop_class((DEMO_STUDIES / "demo_normal.dcm").read_bytes()),
                "jpeg_2000-huge-siz.dcm": j2k_declaring_a_huge_image()}
    for name, data in specials.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    written.append(non_image_with_uv_sop_class(folder))
    return written


def scan_and_load_each(folder: str, log: str) -> None:
    """Scan ``folder``, then open every file (every frame of those the scan lists), noting each
    outcome as a JSON line, and each file before it is opened: run in a child process, whose
    death then names the file that killed it."""
    import json
    import warnings

    from engine.errors import ImageLoadError
    from engine.images import load_image
    from engine.studies import scan_studies

    warnings.simplefilter("ignore")  # pydicom's notes on what it tolerates
    with open(log, "a", encoding="utf-8") as out:
        def note(**record) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        note(started="the folder scan")
        try:
            scan = scan_studies(folder)
        except BaseException as exc:  # what the test is looking for: noted, not raised
            note(unhandled=f"scan_studies: {type(exc).__module__}.{type(exc).__name__}: {exc}")
            return
        frames = {str(ref.path): ref.frames for study in scan for series in study.series for ref in series.images}
        note(listed=frames, skipped={str(p): reason for p, reason in scan.skipped},
             failed={str(f.path): f.reason for f in scan.failed})
        for path in sorted(Path(folder).iterdir()):
            for frame in range(frames.get(str(path), 1)):
                note(started=f"{path.name} frame {frame}")
                try:
                    image = load_image(path, frame)
                    note(file=str(path), frame=frame, loaded=list(image.pixels.shape))
                except ImageLoadError as exc:
                    note(file=str(path), frame=frame, refused=exc.reason)
                except BaseException as exc:
                    note(file=str(path), frame=frame, unhandled=f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
