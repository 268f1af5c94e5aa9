"""Checking an exported graph against a reference engine on held-out phantoms.

Export (:mod:`engine.making.onnx_export`) runs the written bytes in onnxruntime and compares
logits, every CAM method's class maps and the MC-dropout head with the PyTorch engine
(:func:`verify_export`); quantization (:mod:`engine.making.quantization`) compares the int8
graph with the fp32 one using the same held-out inputs and map comparison. Only numpy here;
torch and onnxruntime are imported when verifying.
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


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps. Two (near-)constant maps count as equal (1.0) when they
    are close, since correlation is undefined for them; one constant and one not counts 0."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-30)
    sa, sb = a.std(), b.std()
    if sa <= 1e-9 * scale or sb <= 1e-9 * scale:
        return 1.0 if np.abs(a - b).max(initial=0.0) <= 1e-6 * scale + 1e-12 else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def heldout_inputs(bundle: ModelBundle, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C_in, h, w) model inputs made from phantoms exactly as at run time, and their labels."""
    from engine.synthetic.phantoms import make_dataset
    from engine.preprocess import prepare_input
    from engine.making.training import phantom_image

    images, _, labels = make_dataset(n, seed=seed)
    batch = [prepare_input(phantom_image(img), bundle.input).tensor for img in images]
    return np.concatenate(batch), labels


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

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "heldout_phantoms": self.images,
            "max_abs_logit_error": float(f"{self.max_logit_error:.3g}"),
            "min_map_correlation": {k: round(v, 6) for k, v in self.min_map_correlation.items()},
            "head_max_abs_error": float(f"{self.head_max_error:.3g}"),
            "thresholds": {"logit_abs_error": self.logit_tolerance, "map_correlation": self.map_threshold},
        }


def verify_export(bundle: ModelBundle, reference, model_bytes: bytes, head_bytes: bytes | None,
                  head_module, mask_shapes, n: int, seed: int,
                  logit_tolerance: float, map_threshold: float) -> Verification:
    """The exported bytes in onnxruntime against ``reference`` (the PyTorch engine) on ``n``
    held-out phantoms: logits, every method's class maps, the head, and batched logits."""
    import torch

    from engine.backends.onnx_backend import OnnxSessions

    sessions = OnnxSessions(model_bytes, head_bytes)
    inputs, _ = heldout_inputs(bundle, n, seed)
    max_err, head_err = 0.0, 0.0
    corr: dict[str, float] = {}
    problems: list[str] = []
    for i in range(n):
        x = inputs[i : i + 1]
        ref = reference.explain(x)
        got = sessions.explain(x)
        max_err = max(max_err, float(np.abs(got.logits - ref.logits).max()))
        ref_maps, got_maps = class_maps(ref.activations, ref.gradients), class_maps(got.activations, got.gradients)
        for method in ref_maps:
            for c in range(ref_maps[method].shape[0]):
                r = map_correlation(got_maps[method][c], ref_maps[method][c])
                corr[method] = min(corr.get(method, 1.0), r)
        if head_bytes is not None:
            rng = np.random.default_rng(seed + i)
            masks = [(rng.random((4, *s)) >= 0.5).astype(np.float32) * 2.0 for s in mask_shapes]
            feats = np.broadcast_to(got.head_input, (4, *got.head_input.shape)).copy()
            with torch.no_grad():
                want = head_module(torch.from_numpy(feats), *map(torch.from_numpy, masks)).numpy()
            head_err = max(head_err, float(np.abs(sessions.head(feats, masks) - want).max()))
            ones = [np.ones((1, *s), np.float32) for s in mask_shapes]
            head_err = max(head_err, float(np.abs(sessions.head(got.head_input[None], ones)[0] - ref.logits).max()))
    # Batched plain forward must give the same logits as single images.
    if n >= 2:
        batched = sessions.forward(inputs)
        with torch.no_grad():
            want = reference.forward(inputs)
        max_err = max(max_err, float(np.abs(batched - want).max()))
    if not max_err <= logit_tolerance:
        problems.append(f"logits differ from PyTorch by up to {max_err:.3g} (limit {logit_tolerance:g})")
    for method, r in corr.items():
        if not r >= map_threshold:
            problems.append(f"{method} maps correlate only {r:.5f} with PyTorch's (limit {map_threshold})")
    if head_bytes is not None and not head_err <= logit_tolerance:
        problems.append(f"the MC-dropout head differs from PyTorch by up to {head_err:.3g}")
    return Verification(n, max_err, corr, head_err, logit_tolerance, map_threshold, problems)

