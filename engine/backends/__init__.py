"""Engines that run a bundle's model: ``torch`` (PyTorch), ``onnx`` (fp32) and ``onnx-int8``.

Each engine turns a model input into the same plain arrays (:class:`ForwardOutputs`), so the
CAM rules, the uncertainty summary and everything after them are shared. torch is imported only
when the torch engine is opened.
"""

from __future__ import annotations

import importlib.util

from engine.backends.base import ENGINES, Backend, ForwardOutputs
from engine.bundle import ModelBundle
from engine.errors import EngineUnavailableError

__all__ = ["ENGINES", "Backend", "ForwardOutputs", "available_engines", "open_backend"]


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
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(bundle)
    from engine.backends.onnx_backend import OnnxBackend

    return OnnxBackend(bundle, quantized=engine == "onnx-int8")
