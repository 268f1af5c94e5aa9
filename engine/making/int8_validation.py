"""Validating an int8 explain graph against its fp32 original (``lantern-engine quantize``).

Both graphs run in onnxruntime on the same held-out phantoms export verification uses (a
multi-input model: the same cases); the int8 model is kept only if top-1 accuracy, every class
map of every CAM method (of every input) and the file size stay within the thresholds below
(:mod:`engine.making.quantization` refuses it otherwise). Kept apart from the quantizer itself,
which is graph surgery; this is measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.bundle import ModelBundle
from engine.making.export_verification import (
    engine_input, heldout_cases, layer_labels, layer_map_correlations, lowest_correlations,
)

MAX_ACCURACY_DROP = 0.01
MIN_MAP_CORRELATION = 0.95
MAX_SIZE_RATIO = 0.30


@dataclass
class Int8Validation:
    images: int
    accuracy_fp32: float
    accuracy_int8: float
    agreement: float  # share of images with the same top-1 class
    min_map_correlation: dict[str, float]
    mean_map_correlation: dict[str, float]
    max_abs_logit_error: float
    size_fp32: int
    size_int8: int
    method: str
    calibration_images: int
    thresholds: dict[str, float]
    problems: list[str] = field(default_factory=list)
    # A multi-input model's lowest correlations per input name (min_map_correlation: over all).
    per_input: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def size_ratio(self) -> float:
        return self.size_int8 / self.size_fp32

    def to_dict(self) -> dict:
        record = {
            "heldout_phantoms": self.images,
            "method": self.method,
            "calibration_phantoms": self.calibration_images,
            "accuracy_fp32": round(self.accuracy_fp32, 4),
            "accuracy_int8": round(self.accuracy_int8, 4),
            "top1_agreement_with_fp32": round(self.agreement, 4),
            "min_map_correlation_with_fp32": {k: round(v, 4) for k, v in self.min_map_correlation.items()},
            "mean_map_correlation_with_fp32": {k: round(v, 4) for k, v in self.mean_map_correlation.items()},
            "max_abs_logit_error": round(self.max_abs_logit_error, 4),
            "size_bytes": {"fp32": self.size_fp32, "int8": self.size_int8},
            "size_ratio": round(self.size_ratio, 4),
            "thresholds": self.thresholds,
        }
        if self.per_input:
            record["min_map_correlation_with_fp32_per_input"] = {
                name: {k: round(v, 4) for k, v in figures.items()} for name, figures in self.per_input.items()}
        return record


def validate_int8(bundle: ModelBundle, fp32: str | Path | bytes, int8: bytes, n: int, seed: int, *,
                  method: str, calibration_images: int, size_fp32: int,
                  max_accuracy_drop: float = MAX_ACCURACY_DROP, min_correlation: float = MIN_MAP_CORRELATION,
                  max_size_ratio: float = MAX_SIZE_RATIO) -> Int8Validation:
    from engine.backends.onnx_backend import OnnxSessions

    ref, got = OnnxSessions(fp32, None), OnnxSessions(int8, None)
    # The explained layers, to name in a refusal (export records them in the graph's metadata).
    meta = ref.model.get_modelmeta().custom_metadata_map
    layers = json.loads(meta["lantern.target_layers"]) if "lantern.target_layers" in meta else \
        [meta.get("lantern.target_layer") or bundle.target_layer]
    labels = layer_labels(bundle, layers)
    inputs, truth = heldout_cases(bundle, n, seed)
    correct_ref = correct_got = same = 0
    corr: dict[tuple[int, str], list[float]] = {}  # (input index, method) -> every class map's r
    max_err = 0.0
    for i in range(n):
        x = engine_input(inputs, i)
        a, b = ref.explain(x), got.explain(x)
        correct_ref += int(np.argmax(a.logits) == truth[i])
        correct_got += int(np.argmax(b.logits) == truth[i])
        same += int(np.argmax(a.logits) == np.argmax(b.logits))
        max_err = max(max_err, float(np.abs(a.logits - b.logits).max()))
        for k, per_method in enumerate(layer_map_correlations(b, a)):
            for name, rs in per_method.items():
                corr.setdefault((k, name), []).extend(rs)
    lowest, per_input = lowest_correlations(bundle, corr)
    everywhere: dict[str, list[float]] = {}
    for (_, name), rs in corr.items():
        everywhere.setdefault(name, []).extend(rs)
    thresholds = {"max_accuracy_drop": max_accuracy_drop, "min_map_correlation": min_correlation,
                  "max_size_ratio": max_size_ratio}
    result = Int8Validation(
        images=n, accuracy_fp32=correct_ref / n, accuracy_int8=correct_got / n, agreement=same / n,
        min_map_correlation=lowest, mean_map_correlation={k: float(np.mean(v)) for k, v in everywhere.items()},
        max_abs_logit_error=max_err, size_fp32=size_fp32, size_int8=len(int8), method=method,
        calibration_images=calibration_images, thresholds=thresholds, per_input=per_input)
    if result.accuracy_fp32 - result.accuracy_int8 > max_accuracy_drop + 1e-9:
        result.problems.append(f"top-1 accuracy drops from {result.accuracy_fp32:.3f} to "
                               f"{result.accuracy_int8:.3f} (allowed: {max_accuracy_drop:.3f})")
    for (k, name), rs in corr.items():
        if not np.min(rs) >= min_correlation:
            result.problems.append(f"{name} maps of {labels[k]} correlate only {np.min(rs):.3f} with fp32 "
                                   f"(limit {min_correlation})")
    if not result.size_ratio <= max_size_ratio:
        result.problems.append(f"the int8 file is {result.size_ratio:.0%} of fp32's size (limit {max_size_ratio:.0%})")
    return result
