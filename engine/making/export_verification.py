"""Checking an exported graph against a reference engine on held-out phantoms.

Export (:mod:`engine.making.onnx_export`) runs the written bytes in onnxruntime and compares
logits, every CAM method's class maps and the MC-dropout head with the PyTorch engine
(:func:`verify_export`); quantization (:mod:`engine.making.quantization`) compares the int8
graph with the fp32 one using the same held-out inputs and map comparison. A multi-input model
is checked on held-out cases (:func:`heldout_cases`: one phantom per input), every input's maps
on their own. Only numpy here; torch and onnxruntime are imported when verifying.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.bundle import ModelBundle

# Held-out phantoms for verification: seeds no training or calibration stream uses
# (training uses 1000 * epoch, validation 50_000, the model card 90_000).
VERIFY_SEED = 70_000
LOGIT_TOLERANCE = 1e-4
MAP_CORRELATION = 0.999


# A class map is *empty* when it shows no location: all zero after the method's ReLU (no positive
# evidence anywhere, common for a trained model's unlikely classes) or constant. Float rounding
# leaves specks where the pre-ReLU map is ~0, so "zero" means at most EMPTY_PEAK in the map's
# absolute units (the viewer draws a map whose peak is below cam's 1e-7 as blank) or at most
# EMPTY_RELATIVE of the strongest map of the same image and method (fp32 rounding is ~1e-7 of
# the terms summed); "constant" means its range is at most EMPTY_RELATIVE of its peak.
EMPTY_PEAK = 1e-7
EMPTY_RELATIVE = 1e-5


def map_is_empty(m: np.ndarray, floor: float = EMPTY_PEAK) -> bool:
    """True when the map shows no location: peak at most ``floor``, or (near-)constant."""
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return True
    peak, low = float(m.max()), float(m.min())
    return peak <= floor or peak - low <= EMPTY_RELATIVE * abs(peak)


def map_correlation(a: np.ndarray, b: np.ndarray, floor: float = EMPTY_PEAK) -> float:
    """How well two engines' maps of one class agree: Pearson correlation when both show a
    location; 1.0 when both are empty (see :func:`map_is_empty`: both say "no evidence here",
    and correlation is undefined for them); 0.0 when only one is empty (one engine shows a
    location the other does not)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    empty_a, empty_b = map_is_empty(a, floor), map_is_empty(b, floor)
    if empty_a or empty_b:
        return 1.0 if empty_a and empty_b else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def class_map_correlations(got: np.ndarray, want: np.ndarray) -> list[float]:
    """:func:`map_correlation` for every class of two (C, h, w) stacks of one method's maps of one
    image, with the emptiness floor scaled to that image's strongest map on either engine."""
    peak = max(float(np.max(got, initial=0.0)), float(np.max(want, initial=0.0)))
    floor = max(EMPTY_PEAK, EMPTY_RELATIVE * peak)
    return [map_correlation(got[c], want[c], floor) for c in range(want.shape[0])]


def heldout_cases(bundle: ModelBundle, n: int, seed: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``n`` model inputs made from phantoms exactly as at run time, and their labels: one array
    (n, C_in, h, w) per model input, in the manifest's order (one for an ordinary model).

    A multi-input model's case is one phantom per input, each prepared with its own input's spec:
    the first input's are those an ordinary model gets for ``seed``; each further input gets
    other phantoms of the same class (drawn from a stream of its own), as a lateral view shows
    the same finding as the frontal one, elsewhere."""
    from engine.synthetic.phantoms import make_dataset, make_phantom
    from engine.preprocess import prepare_input
    from engine.making.training import phantom_image

    images, _, labels = make_dataset(n, seed=seed)
    size = images.shape[-1]
    specs = [i.spec for i in bundle.inputs] if bundle.multi_input else [bundle.input]
    arrays = []
    for k, spec in enumerate(specs):
        if k:
            rng = np.random.default_rng([seed, k])
            images = [make_phantom(rng, int(label), size).image for label in labels]
        arrays.append(np.concatenate([prepare_input(phantom_image(img), spec).tensor for img in images]))
    return tuple(arrays), labels


def heldout_inputs(bundle: ModelBundle, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C_in, h, w) model inputs of a one-image model (see :func:`heldout_cases`), and their labels."""
    arrays, labels = heldout_cases(bundle, n, seed)
    return arrays[0], labels


def engine_input(arrays: tuple[np.ndarray, ...], i: int | None = None):
    """:func:`heldout_cases`'s arrays (``i``: only case i) as an engine takes them: the array of a
    one-image model, a tuple of arrays (one per input) for a multi-input model."""
    if i is not None:
        arrays = tuple(a[i : i + 1] for a in arrays)
    return arrays if len(arrays) > 1 else arrays[0]


def class_maps(activations: np.ndarray, gradients: np.ndarray) -> dict[str, np.ndarray]:
    """Every CAM method's raw per-class maps (what two engines must agree on)."""
    from engine.cam import METHODS

    return {name: m.raw_maps(activations, gradients) for name, m in METHODS.items()}


@dataclass
class Verification:
    """What export measured; ``to_dict`` is recorded as ``model_card["onnx_validation"]``."""

    images: int
    max_logit_error: float
    min_map_correlation: dict[str, float]
    head_max_error: float
    logit_tolerance: float
    map_threshold: float
    problems: list[str] = field(default_factory=list)
    # A multi-input model's lowest correlations per input name (min_map_correlation: over all).
    per_input: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        record = {
            "heldout_phantoms": self.images,
            "max_abs_logit_error": float(f"{self.max_logit_error:.3g}"),
            "min_map_correlation": {k: round(v, 6) for k, v in self.min_map_correlation.items()},
            "head_max_abs_error": float(f"{self.head_max_error:.3g}"),
            "thresholds": {"logit_abs_error": self.logit_tolerance, "map_correlation": self.map_threshold},
        }
        if self.per_input:
            record["min_map_correlation_per_input"] = {
                name: {k: round(v, 6) for k, v in figures.items()} for name, figures in self.per_input.items()}
        return record


def layer_map_correlations(got, want) -> list[dict[str, list[float]]]:
    """For each explained layer (one per model input) of two engines' ``ForwardOutputs`` of one
    image or case: every method's class-map correlations (:func:`class_map_correlations`)."""
    result = []
    for a, b in zip(want.layers, got.layers):
        maps_a, maps_b = class_maps(a.activations, a.gradients), class_maps(b.activations, b.gradients)
        result.append({m: class_map_correlations(maps_b[m], maps_a[m]) for m in maps_a})
    return result


def lowest_correlations(bundle: ModelBundle, corr: dict[tuple[int, str], list[float]]
                        ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From every class map's correlation by (input index, method): the lowest per method over
    all inputs (what the model card has always recorded) and, for a multi-input model, the
    lowest per input name and method (empty for one image)."""
    # np.min, not min: a NaN correlation must come out as NaN (and fail), never hide behind 1.0.
    every: dict[str, list[float]] = {}
    for (_, method), rs in corr.items():
        every.setdefault(method, []).extend(rs)
    overall = {method: float(np.min(rs)) for method, rs in every.items()}
    if not bundle.multi_input:
        return overall, {}
    return overall, {name: {m: float(np.min(rs)) for (k, m), rs in corr.items() if k == index}
                     for index, name in enumerate(bundle.input_names)}


def layer_labels(bundle: ModelBundle, layers: list[str]) -> list[str]:
    """How a refusal names each explained layer: '<layer>', or '<layer>' of input <NAME>."""
    if not bundle.multi_input:
        return [f"the explained layer '{layers[0]}'" if layers and layers[0] else "the explained layer"]
    return [f"the explained layer '{layer}' of input {name}" for name, layer in zip(bundle.input_names, layers)]


def verify_export(bundle: ModelBundle, reference, model_bytes: bytes, head_bytes: bytes | None,
                  head_module, mask_shapes, n: int, seed: int,
                  logit_tolerance: float, map_threshold: float) -> Verification:
    """The exported bytes in onnxruntime against ``reference`` (the PyTorch engine) on ``n``
    held-out phantoms (a multi-input model: cases, see :func:`heldout_cases`): logits, every
    method's class maps of every input, the head, and batched logits."""
    import torch

    from engine.backends.onnx_backend import OnnxSessions

    sessions = OnnxSessions(model_bytes, head_bytes)
    inputs, _ = heldout_cases(bundle, n, seed)
    labels = layer_labels(bundle, reference.target_names)
    max_err, head_err = 0.0, 0.0
    corr: dict[tuple[int, str], list[float]] = {}  # (input index, method) -> every class map's r
    for i in range(n):
        x = engine_input(inputs, i)
        ref = reference.explain(x)
        got = sessions.explain(x)
        max_err = max(max_err, float(np.abs(got.logits - ref.logits).max()))
        for k, per_method in enumerate(layer_map_correlations(got, ref)):
            for method, rs in per_method.items():
                corr.setdefault((k, method), []).extend(rs)
        if head_bytes is not None:
            rng = np.random.default_rng(seed + i)
            masks = [(rng.random((4, *s)) >= 0.5).astype(np.float32) * 2.0 for s in mask_shapes]
            rows = 1 if sessions.head_takes_one_row else 4
            feats = np.broadcast_to(got.head_input, (rows, *got.head_input.shape)).copy()
            with torch.no_grad():
                want = head_module(torch.from_numpy(feats), *map(torch.from_numpy, masks)).numpy()
            head_err = max(head_err, float(np.abs(sessions.head(feats, masks) - want).max()))
            ones = [np.ones((1, *s), np.float32) for s in mask_shapes]
            head_err = max(head_err, float(np.abs(sessions.head(got.head_input[None], ones)[0] - ref.logits).max()))
    # Batched plain forward must give the same logits as single images.
    if n >= 2:
        batched = sessions.forward(engine_input(inputs))
        with torch.no_grad():
            want = reference.forward(engine_input(inputs))
        max_err = max(max_err, float(np.abs(batched - want).max()))
    problems: list[str] = []
    if not max_err <= logit_tolerance:
        problems.append(f"logits differ from PyTorch by up to {max_err:.3g} (limit {logit_tolerance:g})")
    for (k, method), rs in corr.items():
        if not np.min(rs) >= map_threshold:
            problems.append(f"{method} maps of {labels[k]} correlate only {np.min(rs):.5f} with PyTorch's "
                            f"(limit {map_threshold})")
    if head_bytes is not None and not head_err <= logit_tolerance:
        problems.append(f"the MC-dropout head differs from PyTorch by up to {head_err:.3g}")
    lowest, per_input = lowest_correlations(bundle, corr)
    return Verification(n, max_err, lowest, head_err, logit_tolerance, map_threshold, problems, per_input)
