"""The service's JSON: the one result schema, the maps and DICOM objects, and the model.

A result is ``Analysis.to_dict`` (engine.result, ``lantern.result/1``), the record
``lantern-engine explain`` writes as result.json and a batch writes per image, so a client reads
one layout whichever way Lantern ran. Only ``source`` differs: it would name the temporary file,
so it says ``upload`` (the client's file name is never echoed: it may name the patient).
"""

from __future__ import annotations

import base64
import io
import shutil
import uuid
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import ParametricMapStorage, SecondaryCaptureImageStorage

from engine.analysis import Analysis, LoadedModel
from engine.cam import METHOD_NAMES, method_label
from engine.exports.dicom_objects import DICOM_OBJECT_KINDS, export_dicom_objects, model_manufacturer
from engine.exports.overlay import encode_png, render_overlay
from engine.images import SourceImage
from engine.uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD

UPLOAD_SOURCE = "upload"
OUTPUTS = ("png", "array", "dicom")  # what /explain can return per map
_KINDS = {SecondaryCaptureImageStorage: "sc", ParametricMapStorage: "pm"}  # else the structured report
ARRAY_UNITS = "the method's own units (of the class logit): comparable across images and classes of this model"


def upload_record(analysis: Analysis, method: str | None = None) -> dict:
    return {**analysis.to_dict(method), "source": UPLOAD_SOURCE}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def map_entries(image: SourceImage, analysis: Analysis, methods: tuple[str, ...], classes: tuple[int, ...],
                outputs: frozenset[str]) -> list[dict]:
    """Per method and class: the overlay as PNG (what the viewer shows, scaled by the class's
    peak) and/or the map itself as little-endian float32 on the source's rows and columns."""
    entries = []
    for method in methods:
        maps = analysis.maps[method]
        for index in classes:
            entry = {"method": method, "method_label": method_label(method), "class": analysis.classes[index],
                     "class_index": index}
            if "png" in outputs:
                overlay = render_overlay(image, maps.normalized_map(index))
                entry["png_base64"] = _base64(encode_png(overlay))
            if "array" in outputs:
                values = np.ascontiguousarray(maps.source_map(index), dtype="<f4")
                entry["array"] = {"shape": list(values.shape), "dtype": "float32", "byte_order": "little",
                                  "units": ARRAY_UNITS, "data_base64": _base64(values.tobytes())}
            entries.append(entry)
    return entries


def dicom_entries(folder: Path, image: SourceImage, analysis: Analysis, model: LoadedModel,
                  methods: tuple[str, ...], classes: tuple[int, ...], kinds: tuple[str, ...]) -> list[dict]:
    """The DICOM objects ``lantern-engine`` exports (engine.exports.dicom_objects), per method: the
    Secondary Capture of each chosen class, a Parametric Map of every class, and one TID 1500
    structured report (for the first method). They carry the source's patient and study, as any
    derived object must: the client sent them. Written into a fresh folder inside ``folder``
    (the service's private one) under Lantern's own names, read back and removed."""
    out, calls = folder / uuid.uuid4().hex, []
    for n, method in enumerate(methods):
        first = [k for k in kinds if k != "sr" or n == 0]
        calls.append((method, classes[0], first))
        calls += [(method, index, ("sc",)) for index in classes[1:] if "sc" in kinds]
    entries = []
    try:
        for method, index, call_kinds in calls:
            pm_classes = iter(range(len(analysis.classes)))
            for path in export_dicom_objects(out, image, analysis, call_kinds, method, class_index=index,
                                             name="explanation", model_manufacturer=model_manufacturer(model.bundle)):
                data = path.read_bytes()
                header = dcmread(io.BytesIO(data), stop_before_pixels=True)
                kind = _KINDS.get(str(header.SOPClassUID), "sr")
                entry = {"kind": kind, "method": method}
                if kind != "sr":
                    shown = index if kind == "sc" else next(pm_classes)
                    entry.update({"class": analysis.classes[shown], "class_index": shown})
                entries.append({**entry, "sop_class_uid": str(header.SOPClassUID),
                                "sop_instance_uid": str(header.SOPInstanceUID),
                                "series_instance_uid": str(header.SeriesInstanceUID), "data_base64": _base64(data)})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return entries


def model_description(model: LoadedModel) -> dict:
    """What a client needs to know before trusting a result: what the model is, what it was made
    for, how its probabilities are calibrated, and whether its out-of-distribution check is fitted."""
    bundle, ood = model.bundle, model.ood
    return {
        "name": bundle.name,
        "version": bundle.version,
        "architecture": bundle.architecture,
        "engine": model.engine,
        "classes": list(bundle.classes),
        "intended_use": bundle.intended_use,
        "synthetic_demo": bundle.synthetic_demo,
        "model_card": bundle.model_card,
        "calibration": {"temperature": bundle.temperature,
                        "cutoffs": {c: bundle.cutoff(i) for i, c in enumerate(bundle.classes)}},
        "intended_inputs": bundle.intended_inputs.to_dict() if bundle.intended_inputs else None,
        "ood_check": ({"fitted": True, "threshold": ood.threshold, "percentile": ood.percentile,
                       "images": ood.images, "fitted_on": ood.fitted_on} if ood is not None else {"fitted": False}),
        "input": {"channels": bundle.input.channels, "size": list(bundle.input.size)},
        "analysis": {"methods": list(METHOD_NAMES), "mc_samples": DEFAULT_SAMPLES if model.backend.has_dropout else 0,
                     "confidence_threshold": DEFAULT_THRESHOLD, "explain_outputs": list(OUTPUTS),
                     "dicom_kinds": list(DICOM_OBJECT_KINDS)},
        "result_schema": "lantern.result/1",
    }
