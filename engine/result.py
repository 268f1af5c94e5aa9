"""The one result schema: what Lantern says about one image, as plain JSON-ready data.

``result.json`` of ``lantern-engine explain``, every record of a batch (full analysis or plain
triage), the viewer's JSON export and the reports read this one layout. A triage computes no
maps, so its ``methods``, ``map_peaks`` and ``map_maxima`` are empty; the keys are the same. A
multi-input case (several images through one model) is one record: ``inputs`` lists each input's
name, source, frame and map summary (it is empty for an ordinary model, whose one image the
top-level ``source`` names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from engine.cam import ClassMaps
from engine.intended_inputs import InputCheck
from engine.uncertainty import UncertaintySummary

SCHEMA = "lantern.result/1"


def _rounded(value) -> float:
    return round(float(value), 6)


def _map_summary(maps: Mapping[str, ClassMaps], classes: tuple[str, ...]) -> dict:
    return {
        "map_peaks": {m: {c: list(cm.peak(i)) for i, c in enumerate(classes)} for m, cm in maps.items()},
        "map_maxima": {m: {c: _rounded(cm.grid[i].max()) for i, c in enumerate(classes)} for m, cm in maps.items()},
    }


def result_record(*, source: str | Path, frame: int, model_name: str, model_version: str, engine: str,
                  classes: tuple[str, ...], logits: np.ndarray, probabilities: np.ndarray,
                  uncertainty: UncertaintySummary | None, uncertainty_note: str,
                  maps: Mapping[str, ClassMaps] | None = None, timings: Mapping[str, float] | None = None,
                  method: str | None = None, inputs: list[tuple[str, Path, int, Mapping[str, ClassMaps]]] | None = None,
                  input_check: InputCheck | None = None) -> dict:
    """One image's (or multi-input case's) result. ``probabilities`` are already calibrated
    (softmax(logits / T)); ``method`` is the method whose map was written or shown, if any;
    ``inputs``: (name, source, frame, maps) of every model input, when there are several. The
    top-level ``source``, ``frame`` and map keys are then the first input's."""
    maps = maps or {}
    return {
        "schema": SCHEMA,
        "source": str(source),
        "frame": int(frame),
        "model": {"name": model_name, "version": model_version},
        "engine": engine,
        "classes": list(classes),
        "logits": [_rounded(v) for v in logits],
        "probabilities": {c: _rounded(p) for c, p in zip(classes, probabilities)},
        "predicted_class": classes[int(np.argmax(probabilities))],
        "methods": list(maps),
        "method": method,
        **_map_summary(maps, classes),
        "inputs": [{"name": name, "source": str(path), "frame": int(index), **_map_summary(view_maps, classes)}
                   for name, path, index, view_maps in inputs or ()] if inputs and len(inputs) > 1 else [],
        "uncertainty": uncertainty.to_dict() if uncertainty else None,
        "uncertainty_note": uncertainty_note,
        # Inside what the model was made for? (its tags and the out-of-distribution score)
        "input_check": (input_check or InputCheck()).to_dict(),
        "timings_ms": {k: round(v * 1000, 3) for k, v in (timings or {}).items()},
    }
