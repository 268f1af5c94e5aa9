"""Engines that run a bundle's model: ``torch`` (PyTorch), ``onnx`` (fp32) and ``onnx-int8``.

Each engine turns a model input into the same plain arrays (:class:`ForwardOutputs`), so the
CAM rules, the uncertainty summary and everything after them are shared. torch is imported only
when the torch engine is opened.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..bundle import ModelBundle
from ..errors import EngineUnavailableError

ENGINES = ("torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class ForwardOutputs:
    """One image's forward pass, with what every CAM rule and MC dropout needs."""

    logits: np.ndarray  # (C,)
    activations: np.ndarray  # (K, h, w): the explained layer
    gradients: np.ndarray  # (C, K, h, w): d logit_c / d activations
    head_input: np.ndarray  # features entering the dropout head (computed once, reused by MC)


class Backend(Protocol):
    engine: str
    has_dropout: bool

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Plain logits (B, C) for a batch (B, C_in, h, w): no maps, no sampling."""

    def forward_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, C) and head inputs (B, F...) for a batch: what a triage needs (the
        prediction and MC dropout), without maps."""

    def explain(self, tensor: np.ndarray) -> ForwardOutputs:
        """Logits, activations and all-class gradients for one input (1, C_in, h, w)."""

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        """(samples, C) logits of the head with dropout active, over cached features."""


def available_engines(bundle: ModelBundle) -> list[str]:
    found = []
    if bundle.onnx.get("int8") and importlib.util.find_spec("onnxruntime"):
        found.append("onnx-int8")
    if bundle.onnx.get("fp32") and importlib.util.find_spec("onnxruntime"):
        found.append("onnx")
    if bundle.weights and importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        found.append("torch")
    return found


def open_backend(bundle: ModelBundle, engine: str = "auto") -> Backend:
    """Open the requested engine, or with ``auto`` the fastest one available."""
    found = available_engines(bundle)
    if engine == "auto":
        if not found:
            raise EngineUnavailableError(
                "no engine can run this bundle here (it needs PyTorch for its safetensors "
                "weights, or an exported ONNX model)", bundle.folder)
        engine = found[0]
    if engine not in ENGINES:
        raise EngineUnavailableError(f"unknown engine '{engine}' (known: {', '.join(ENGINES)})")
    if engine not in found:
        raise EngineUnavailableError(
            f"the {engine} engine is not available for this bundle "
            f"(available: {', '.join(found) or 'none'})", bundle.folder)
    if engine == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(bundle)
    from .onnx_backend import OnnxBackend

    return OnnxBackend(bundle, quantized=engine == "onnx-int8")
