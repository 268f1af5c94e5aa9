"""The ONNX engines (``onnx`` fp32, ``onnx-int8``): onnxruntime and numpy only, never torch.

The bundle's explain graph (see ``docs/onnx-engine.md``) returns logits, the explained layer's
activations, the head input and, when asked, every class's gradient of the first image, all
computed inside the graph, so the shared CAM rules need no autograd here. MC dropout runs the
small head graph once over N copies of the cached head input with N dropout masks drawn by a
seeded numpy Generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.bundle import ModelBundle
from engine.errors import EngineUnavailableError, ModelBundleError
from engine.backends.base import ExplainedLayer, ForwardOutputs, thread_count


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # The cores this process may use, or fewer with LANTERN_THREADS (engine.backends.base).
    options.intra_op_num_threads = thread_count()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No busy-waiting between ops: in a desktop app the UI and other programs share the cores, and
    # a spinning pool thread that lost its core stalls every op after it (measured: with one core
    # taken by another process, int8 explain 68-124 ms spinning vs 34-50 ms not).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model: str | Path | bytes) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])


class OnnxSessions:
    """The explain graph and the optional head graph, from files or bytes."""

    def __init__(self, model: str | Path | bytes, head: str | Path | bytes | None):
        self.model = open_session(model)
        names = {i.name for i in self.model.get_inputs()}
        if not {"input", "with_gradients"} <= names:
            raise ModelBundleError("the ONNX model is not a Lantern explain graph (export it with "
                                   "'lantern-engine export')")
        self.head_session = open_session(head) if head is not None else None
        self.dropout: list[float] = []
        self.mask_shapes: list[tuple[int, ...]] = []
        if self.head_session is not None:
            meta = self.head_session.get_modelmeta().custom_metadata_map
            self.dropout = [float(p) for p in json.loads(meta.get("lantern.dropout", "[]"))]
            masks = [i for i in self.head_session.get_inputs() if i.name.startswith("mask")]
            self.mask_shapes = [tuple(int(d) for d in i.shape[1:]) for i in masks]
            if len(self.dropout) != len(self.mask_shapes):
                raise ModelBundleError("the head graph's dropout metadata does not match its masks")

    def forward(self, batch: np.ndarray) -> np.ndarray:
        feed = {"input": np.ascontiguousarray(batch, dtype=np.float32), "with_gradients": np.array(False)}
        return self.model.run(["logits"], feed)[0]

    def forward_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {"input": np.ascontiguousarray(batch, dtype=np.float32), "with_gradients": np.array(False)}
        logits, head_input = self.model.run(["logits", "head_input"], feed)
        return logits, head_input

    def explain(self, tensor: np.ndarray) -> ForwardOutputs:
        feed = {"input": np.ascontiguousarray(tensor[:1], dtype=np.float32), "with_gradients": np.array(True)}
        logits, activations, head_input, gradients = self.model.run(
            ["logits", "activations", "head_input", "gradients"], feed)
        return ForwardOutputs(logits=logits[0], layers=(ExplainedLayer(activations[0], gradients[:, 0]),),
                              head_input=head_input[0])

    def head(self, features: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        feed = {"head_input": np.ascontiguousarray(features, dtype=np.float32)}
        feed.update({f"mask{i}": np.ascontiguousarray(m, dtype=np.float32) for i, m in enumerate(masks)})
        return self.head_session.run(["logits"], feed)[0]

    def dropout_masks(self, samples: int, seed: int) -> list[np.ndarray]:
        """Inverted-dropout masks: keep with probability 1 - p, kept values scaled by 1 / (1 - p)."""
        rng = np.random.default_rng(seed)
        return [((rng.random((samples, *shape)) >= p) * (1.0 / (1.0 - p))).astype(np.float32)
                for p, shape in zip(self.dropout, self.mask_shapes)]


class OnnxBackend:
    def __init__(self, bundle: ModelBundle, quantized: bool = False):
        key = "int8" if quantized else "fp32"
        path = bundle.onnx.get(key)
        if path is None:
            raise EngineUnavailableError(f"this bundle has no {key} ONNX model (run 'lantern-engine "
                                         f"{'quantize' if quantized else 'export'}')", bundle.folder)
        self.bundle = bundle
        self.engine = "onnx-int8" if quantized else "onnx"
        # The int8 model shares the fp32 head: it is a few kB and dominated by one matrix product.
        head = bundle.onnx.get("head")
        try:
            self.sessions = OnnxSessions(path, head)
        except ModelBundleError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for broken files
            raise ModelBundleError(f"onnxruntime could not load {path.name}: {exc}", bundle.folder) from exc
        self.has_dropout = bool(self.sessions.dropout) and any(p > 0 for p in self.sessions.dropout)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.sessions.forward(batch)

    def forward_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.sessions.forward_features(batch)

    def explain(self, tensor: np.ndarray) -> ForwardOutputs:
        return self.sessions.explain(tensor)

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        if not self.has_dropout:
            raise ValueError("this model has no dropout in its head")
        features = np.broadcast_to(head_input, (samples, *head_input.shape))
        return self.sessions.head(features, self.sessions.dropout_masks(samples, seed))
