"""What a model was made for, and whether an image is that: compared from its DICOM tags.

A bundle may declare its intended inputs in ``manifest.json`` (``intended_inputs``: modalities,
body parts, view positions, photometric interpretations, a minimum size, whether non-DICOM
images are acceptable). An image that does not match is not refused: it is analysed and every
result says, in plain words, what does not match ("this model was made for chest radiographs
(DX, CR); this image is a CT slice"), so the reader never takes a map of the wrong kind of image
for an explanation. Tags that are absent say nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelBundleError
from engine.source_image import SourceImage

# How a reader names an image of each modality (DICOM (0008,0060) defined terms).
IMAGE_KINDS = {
    "CT": "a CT slice", "MR": "an MR slice", "US": "an ultrasound image", "NM": "a nuclear medicine image",
    "PT": "a PET image", "MG": "a mammogram", "XA": "an angiography frame", "RF": "a fluoroscopy frame",
    "DX": "a digital radiograph (DX)", "CR": "a computed radiograph (CR)", "IO": "an intra-oral radiograph",
    "PX": "a panoramic dental radiograph", "OT": "an image of modality OT (other)", "SC": "a secondary capture",
    "XC": "a photograph", "OP": "an ophthalmic photograph", "OPT": "an OCT image", "ES": "an endoscopy image",
    "SM": "a slide microscopy image", "RTIMAGE": "a radiotherapy portal image", "BMD": "a bone densitometry image",
}


@dataclass(frozen=True)
class IntendedInputs:
    """The images a model was made for; empty tuples accept anything."""

    description: str = ""  # "chest radiographs": how the model's world is named to a reader
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    view_positions: tuple[str, ...] = ()
    photometric: tuple[str, ...] = ()
    min_size: tuple[int, int] = (0, 0)  # rows, columns in pixels
    non_dicom: bool = True  # PNG/JPEG/TIFF without tags: acceptable?

    def model_words(self) -> str:
        what = self.description or "images"
        return f"{what} ({', '.join(self.modalities)})" if self.modalities else what

    def mismatches(self, image: SourceImage) -> tuple[str, ...]:
        """Plain words for every way ``image`` is not what the model was made for."""
        meta, made_for = image.metadata, f"this model was made for {self.model_words()}"
        if not meta.is_dicom:
            if not self.non_dicom:
                return (f"{made_for} as DICOM files; this image is a {image.path.suffix.lstrip('.').upper() or 'raster'} "
                        "file without DICOM tags, so what it shows cannot be checked",)
            reasons = []
        else:
            reasons = []
            modality = meta.modality.strip().upper()
            if self.modalities and modality and modality not in self.modalities:
                reasons.append(f"{made_for}; this image is {IMAGE_KINDS.get(modality, f'of modality {modality}')}")
            body = meta.body_part.strip().upper()
            if self.body_parts and body and body not in self.body_parts:
                reasons.append(f"{made_for} of the {', '.join(b.lower() for b in self.body_parts)}; this image's "
                               f"Body Part Examined is {body}")
            view = meta.view_position.strip().upper()
            if self.view_positions and view and view not in self.view_positions:
                reasons.append(f"{made_for} in the {', '.join(self.view_positions)} view; this image's View "
                               f"Position is {view}")
        photometric = meta.photometric.strip().upper()
        if self.photometric and photometric and photometric not in self.photometric:
            reasons.append(f"{made_for} in {' or '.join(self.photometric)}; this image is {photometric}")
        rows, columns = self.min_size
        if (rows and meta.rows and meta.rows < rows) or (columns and meta.columns and meta.columns < columns):
            reasons.append(f"{made_for} of at least {rows} x {columns} pixels; this image has "
                           f"{meta.rows} x {meta.columns}")
        return tuple(reasons)

    def to_dict(self) -> dict:
        return {"description": self.description, "modalities": list(self.modalities),
                "body_parts": list(self.body_parts), "view_positions": list(self.view_positions),
                "photometric": list(self.photometric), "min_size": list(self.min_size), "non_dicom": self.non_dicom}


def _terms(raw: dict, key: str, folder: Path) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not (isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)):
        raise ModelBundleError(f"manifest.json: 'intended_inputs.{key}' must list DICOM values such as "
                               f"{'DX, CR' if key == 'modalities' else 'CHEST' if key == 'body_parts' else 'PA, AP'}",
                               folder)
    return tuple(v.strip().upper() for v in value)


def parse_intended_inputs(raw: Any, folder: Path) -> IntendedInputs | None:
    """The manifest's ``intended_inputs``, checked; None when the bundle declares none."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelBundleError("manifest.json: 'intended_inputs' should be an object", folder)
    unknown = sorted(set(raw) - {"description", "modalities", "body_parts", "view_positions", "photometric",
                                 "min_size", "non_dicom"})
    if unknown:
        raise ModelBundleError(f"manifest.json: 'intended_inputs' has unknown keys {', '.join(unknown)}", folder)
    size = raw.get("min_size", [0, 0])
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and 0 <= s <= 65535 for s in size)):
        raise ModelBundleError("manifest.json: 'intended_inputs.min_size' must be [rows, columns]", folder)
    non_dicom = raw.get("non_dicom", True)
    if not isinstance(non_dicom, bool):
        raise ModelBundleError("manifest.json: 'intended_inputs.non_dicom' must be true or false", folder)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ModelBundleError("manifest.json: 'intended_inputs.description' must be text", folder)
    return IntendedInputs(description.strip(), _terms(raw, "modalities", folder), _terms(raw, "body_parts", folder),
                          _terms(raw, "view_positions", folder), _terms(raw, "photometric", folder),
                          (size[0], size[1]), non_dicom)


NO_OOD_CHECK = "no out-of-distribution check for this model (no statistics fitted: lantern-engine evaluate --fit-ood)"


@dataclass(frozen=True)
class InputCheck:
    """Is this image (or case) inside what the model was made for? From its tags and from the
    out-of-distribution score of its features."""

    tag_reasons: tuple[str, ...] = ()
    score: float | None = None  # None: the bundle has no statistics, or a triage skipped it
    threshold: float | None = None
    percentile: float | None = None

    @property
    def score_outside(self) -> bool:
        return self.score is not None and self.threshold is not None and self.score > self.threshold

    @property
    def outside(self) -> bool:
        return bool(self.tag_reasons) or self.score_outside

    @property
    def reasons(self) -> tuple[str, ...]:
        found = list(self.tag_reasons)
        if self.score_outside:
            found.append(f"its features lie far from the images the model was fitted on (score {self.score:.1f} "
                         f"above {self.threshold:.1f}, which only {100 - (self.percentile or 0):.0f}% of those "
                         f"images exceed)")
        return tuple(found)

    @property
    def note(self) -> str:
        return NO_OOD_CHECK if self.score is None else ""

    def to_dict(self) -> dict:
        return {"outside_intended_use": self.outside, "reasons": list(self.reasons),
                "ood_score": None if self.score is None else round(self.score, 4),
                "ood_threshold": None if self.threshold is None else round(self.threshold, 4),
                "ood_percentile": self.percentile, "note": self.note}


def check_inputs(intended: IntendedInputs | None, images, ood, features) -> InputCheck:
    """The check of one image or a case (``images``: its SourceImages) with the model's
    intended inputs and out-of-distribution statistics (either may be None)."""
    reasons: list[str] = []
    if intended is not None:
        for image in images:
            for reason in intended.mismatches(image):
                named = f"{image.path.name}: {reason}" if len(images) > 1 else reason
                if named not in reasons:
                    reasons.append(named)
    if ood is None:
        return InputCheck(tuple(reasons))
    return InputCheck(tuple(reasons), ood.score(features), ood.threshold, ood.percentile)
