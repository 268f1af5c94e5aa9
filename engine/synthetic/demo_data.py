"""The demo studies shipped in ``resources/studies``: synthetic phantoms written as DICOM and PNG.

Regenerate them with::

    python -m engine.synthetic.demo_data resources/studies

Everything is made by :mod:`engine.synthetic.phantoms` from a fixed seed; there is no patient data. The
output is byte-for-byte reproducible for a seed (with the same numpy / OpenCV / pydicom
versions): the DICOM UIDs come from ``generate_uid(entropy_srcs=...)`` seeded by the demo's
name and the seed, and the dates are made up.

Files written (see :data:`DEMO_FILES`):

* ``demo_nodule.dcm``, ``demo_effusion.dcm``, ``demo_normal.dcm``: one study each, one Digital
  X-Ray (DX, "for presentation") image of 512 x 512, MONOCHROME2, 16-bit unsigned with 12 bits
  stored, rescale slope 1 / intercept 0, a window, pixel spacing 0.7 mm.
* ``demo_nodule.png`` (8-bit, the DICOM window applied) and ``demo_nodule_16bit.png`` (16-bit
  grey, the same 12-bit values as the DICOM pixels, not rescaled).
* ``demo_multiframe.dcm``: the three phantoms as three frames (Multi-frame Grayscale Word
  Secondary Capture) in a study of its own; Frame Label Vector names each frame.
* ``README.txt``: what these files are, with the SHA-256 of each file written.

Overwriting rules, kept simple: files are written atomically (a temporary file in the same
folder, then ``os.replace``). A target that already holds identical bytes is left untouched. A
target with different bytes is replaced only if it is one this function wrote before, i.e. its
SHA-256 is listed in the ``README.txt`` manifest already in ``out_dir`` (or it is that README,
recognised by its first line). Anything else (a file someone edited or put there) makes
:func:`write_demo_studies` raise :class:`FileExistsError` before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from engine.files import write_bytes_atomic
from engine.synthetic.phantoms import CLASSES, Phantom, make_phantom

__all__ = ["DEMO_FILES", "write_demo_studies", "main"]

DEMO_SIZE = 512  # pixels of the written images (phantoms are made at 256 and upscaled)
PHANTOM_SIZE = 256
PIXEL_SPACING_MM = 0.7
BITS_STORED = 12
README_NAME = "README.txt"
README_FIRST_LINE = "Lantern demo studies: SYNTHETIC images, no patient data."

DEMO_FILES = (
    "demo_nodule.dcm",
    "demo_effusion.dcm",
    "demo_normal.dcm",
    "demo_nodule.png",
    "demo_nodule_16bit.png",
    "demo_multiframe.dcm",
    README_NAME,
)

_CANDIDATES = 4
_STUDY_DATE = "20240315"  # made up
_STUDY_TIME = "101500"
# Fixed so the bytes do not depend on the installed pydicom version.
_IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1")
_IMPLEMENTATION_VERSION = "LANTERN_DEMO_1"


@dataclass(frozen=True)
class _Case:
    key: str  # "nodule", "effusion", "normal"
    patient_name: str
    patient_id: str
    image: np.ndarray  # uint16 (512, 512), 12-bit values
    phantom: Phantom


def _uid(seed: int, *parts: str) -> UID:
    return generate_uid(entropy_srcs=["lantern-demo", str(seed), *parts])


def _to_demo_pixels(image: np.ndarray) -> np.ndarray:
    big = cv2.resize(image, (DEMO_SIZE, DEMO_SIZE), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(big), 0, 2**BITS_STORED - 1).astype(np.uint16)


def _window(pixels: np.ndarray) -> tuple[int, int]:
    """(center, width) spanning the 1st..99.5th percentile: air dark, bone bright."""
    lo, hi = np.percentile(pixels, [1.0, 99.5])
    return int(round((lo + hi) / 2)), max(int(round(hi - lo)), 1)


def _make_cases(seed: int) -> list[_Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for n, key in enumerate(("nodule", "effusion", "normal"), start=1):
        # A few candidates, keeping the one with the largest lesion: a clear teaching case.
        candidates = [make_phantom(rng, CLASSES.index(key), PHANTOM_SIZE) for _ in range(_CANDIDATES)]
        phantom = max(candidates, key=lambda p: int(p.mask.sum()))
        cases.append(
            _Case(
                key=key,
                patient_name=f"DEMO^{key.upper()}",
                patient_id=f"LANTERN-DEMO-{n}",
                image=_to_demo_pixels(phantom.image),
                phantom=phantom,
            )
        )
    return cases


def _dataset(
    seed: int,
    key: str,
    patient_name: str,
    patient_id: str,
    frames: np.ndarray,  # uint16 (F, H, W)
    sop_class: UID,
    study_number: int,
    frame_labels: list[str] | None = None,
) -> Dataset:
    study_uid = _uid(seed, key, "study")
    series_uid = _uid(seed, key, "series")
    sop_uid = _uid(seed, key, "instance")
    n_frames, rows, cols = frames.shape

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(seed, key, "frame-of-reference")

    # patient / study / series (all made up)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _STUDY_TIME
    ds.AccessionNumber = f"DEMO{study_number:04d}"
    ds.StudyID = str(study_number)
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest phantom"
    ds.SeriesDescription = f"Synthetic PA chest phantom ({key})"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Lantern (synthetic phantom)"
    ds.ManufacturerModelName = "engine.synthetic.phantoms"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "SYNTHETIC PHANTOM - NOT A PATIENT IMAGE"

    if sop_class == DigitalXRayImageStorageForPresentation:
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleType = "US"
        ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.DetectorType = "SCINTILLATOR"
    else:  # multi-frame secondary capture
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "SYN"
        ds.NumberOfFrames = n_frames
        ds.FrameIncrementPointer = 0x00182002  # Frame Label Vector
        ds.FrameLabelVector = frame_labels or [str(i + 1) for i in range(n_frames)]
        ds.NominalScannedPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]

    center, width = _window(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = str(center)
    ds.WindowWidth = str(width)
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(frames, dtype="<u2").tobytes()
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def radiograph_dicom_bytes(pixels: np.ndarray, key: str = "bench", seed: int = 0) -> bytes:
    """An uncompressed single-frame DX file of ``pixels`` (values scaled into the 12 stored
    bits), for benchmarks that must open a radiograph as a reader's files arrive."""
    scaled = np.clip(pixels.astype(np.float64) * (4095.0 / max(float(pixels.max()), 1.0)), 0, 4095)
    ds = _dataset(seed, key, "BENCH^RADIOGRAPH", "LANTERN-BENCH", scaled.astype(np.uint16)[None],
                  DigitalXRayImageStorageForPresentation, 99)
    return _dicom_bytes(ds)


def _png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - cv2 always encodes uint8/uint16 greyscale
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _readme(seed: int, cases: list[_Case], contents: dict[str, bytes]) -> bytes:
    scale = DEMO_SIZE / PHANTOM_SIZE
    lines = [
        README_FIRST_LINE,
        "",
        "Every image here was drawn by code (engine/synthetic/phantoms.py): a cartoon of a frontal chest",
        "radiograph with, in some images, a synthetic 'nodule' (a round bright blob) or 'effusion'",
        "(an opacity at the base of one lung). They are not anatomy-accurate, not real pathology,",
        "and must never be used to judge a model meant for real patients.",
        "",
        f"Regenerate with: python -m engine.synthetic.demo_data resources/studies   (seed {seed})",
        "",
        "Files:",
        "  demo_nodule.dcm        DX, 512x512, 12-bit, PatientName DEMO^NODULE, ID LANTERN-DEMO-1",
        "  demo_effusion.dcm      DX, 512x512, 12-bit, PatientName DEMO^EFFUSION, ID LANTERN-DEMO-2",
        "  demo_normal.dcm        DX, 512x512, 12-bit, PatientName DEMO^NORMAL, ID LANTERN-DEMO-3",
        "  demo_nodule.png        the nodule case, 8-bit, DICOM window applied",
        "  demo_nodule_16bit.png  the nodule case, 16-bit grey holding the 12-bit DICOM values",
        "  demo_multiframe.dcm    the three cases as 3 frames (nodule, effusion, normal),",
        "                         ID LANTERN-DEMO-4, a study of its own",
        "",
        "Where the lesions are (row, column in the 512x512 images):",
    ]
    for case in cases:
        c = case.phantom.lesion_center
        where = "none" if c is None else f"({c[0] * scale:.0f}, {c[1] * scale:.0f})"
        area = int(case.phantom.mask.sum() * scale * scale)
        lines.append(f"  {case.key:<9} {where}" + (f", about {area} px" if c else ""))
    lines += ["", "SHA-256 of the files written (used to recognise them when regenerating):"]
    lines += [f"  {_sha256(data)}  {name}" for name, data in contents.items()]
    return ("\n".join(lines) + "\n").encode("ascii")


def _known_hashes(out_dir: Path) -> set[str]:
    """SHA-256 values listed in an existing README manifest written by this module."""
    readme = out_dir / README_NAME
    try:
        text = readme.read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    if not text.startswith(README_FIRST_LINE):
        return set()
    return set(re.findall(r"^\s+([0-9a-f]{64})\s+\S", text, flags=re.MULTILINE))


def write_demo_studies(out_dir: Path, seed: int = 7) -> list[Path]:
    """Write the demo studies into ``out_dir`` (created if needed); return the paths, in
    :data:`DEMO_FILES` order. Files already identical are left alone (see the module docstring
    for when a different existing file is replaced and when this raises FileExistsError)."""
    out_dir = Path(out_dir)
    cases = _make_cases(seed)
    by_key = {c.key: c for c in cases}

    contents: dict[str, bytes] = {}
    for number, case in enumerate(cases, start=1):
        ds = _dataset(
            seed,
            case.key,
            case.patient_name,
            case.patient_id,
            case.image[None],
            DigitalXRayImageStorageForPresentation,
            number,
        )
        contents[f"demo_{case.key}.dcm"] = _dicom_bytes(ds)

    nodule = by_key["nodule"].image
    center, width = _window(nodule)
    low = center - width / 2
    eight = np.clip((nodule.astype(np.float32) - low) * (255.0 / width), 0, 255)
    contents["demo_nodule.png"] = _png_bytes(np.rint(eight).astype(np.uint8))
    contents["demo_nodule_16bit.png"] = _png_bytes(nodule)

    stack = np.stack([c.image for c in cases])
    ds = _dataset(
        seed,
        "multiframe",
        "DEMO^SERIES",
        "LANTERN-DEMO-4",
        stack,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        4,
        frame_labels=[c.key.upper() for c in cases],
    )
    contents["demo_multiframe.dcm"] = _dicom_bytes(ds)
    contents[README_NAME] = _readme(seed, cases, contents)
    assert tuple(contents) == DEMO_FILES

    # Decide everything before writing anything.
    out_dir.mkdir(parents=True, exist_ok=True)
    known = _known_hashes(out_dir)
    to_write = []
    for name, data in contents.items():
        path = out_dir / name
        if path.exists():
            old = path.read_bytes()
            if old == data:
                continue
            ours = _sha256(old) in known or (
                name == README_NAME and old.startswith(README_FIRST_LINE.encode("ascii"))
            )
            if not ours:
                raise FileExistsError(
                    f"{path} exists and was not written by write_demo_studies; "
                    "move it away to regenerate the demo studies"
                )
        to_write.append((path, data))
    # The README (manifest) goes last so that an interrupted run can be re-run.
    for path, data in to_write:
        write_bytes_atomic(path, data)
    return [out_dir / name for name in DEMO_FILES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.synthetic.demo_data",
        description="Write Lantern's synthetic demo studies (DICOM and PNG).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write to, e.g. resources/studies")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        paths = write_demo_studies(args.out_dir, args.seed)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in paths:
        print(f"{p}  {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
