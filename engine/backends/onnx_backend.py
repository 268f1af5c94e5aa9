"""The ONNX engines (``onnx`` fp32, ``onnx-int8``): onnxruntime and numpy only, never torch.

The bundle's explain graph (see ``docs/onnx-engine.md``) returns logits, the explained layer's
activations, the head input and, when asked, every class's gradient of the first image, all
computed inside the graph, so the shared CAM rules need no autograd here. A multi-input model's
graph has one input and one explained layer per model input, named after it (see
:func:`explain_names`). MC dropout runs the small head graph once over N copies of the cached
head input with N dropout masks drawn by a seeded numpy Generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.bundle import ModelBundle
from engine.errors import EngineUnavailableError, ModelBundleError
from engine.backends.base import ExplainedLayer, ForwardOutputs, thread_count

# The graphs' input and output names are the file format: export (engine/making) writes them and
# this engine reads them, so they are defined here, once, and never change. A one-image model's
# explain graph uses the plain names; a multi-input model's gets one input and one
# activations/gradients pair per model input, suffixed with its name (plain identifiers,
# engine.bundle.INPUT_NAME).
INPUT = "input"
WITH_GRADIENTS = "with_gradients"
LOGITS, ACTIVATIONS, HEAD_INPUT, GRADIENTS = "logits", "activations", "head_input", "gradients"


def explain_names(inputs: tuple[str, ...] = ()) -> tuple[list[str], list[str], list[str], list[str]]:
    """(graph inputs, activations outputs, gradients outputs, all outputs in graph order) of the
    explain graph of a model with these named inputs (none: a one-image model)."""
    if not inputs:
        return [INPUT], [ACTIVATIONS], [GRADIENTS], [LOGITS, ACTIVATIONS, HEAD_INPUT, GRADIENTS]
    activations = [f"{ACTIVATIONS}_{n}" for n in inputs]
    gradients = [f"{GRADIENTS}_{n}" for n in inputs]
    return [f"{INPUT}_{n}" for n in inputs], activations, gradients, [LOGITS, *activations, HEAD_INPUT, *gradients]


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


def _graph_inputs(session: ort.InferenceSession) -> tuple[str, ...]:
    """The model input names an explain graph takes: () for a one-image graph; refused in plain
    words when the graph is not a Lantern explain graph at all."""
    names = [i.name for i in session.get_inputs()]
    images = [n for n in names if n != WITH_GRADIENTS]
    prefix = f"{INPUT}_"
    if WITH_GRADIENTS in names and images == [INPUT]:
        inputs: tuple[str, ...] = ()
    elif WITH_GRADIENTS in names and len(images) >= 2 and all(n.startswith(prefix) for n in images):
        inputs = tuple(n[len(prefix):] for n in images)
    else:
        raise ModelBundleError("the ONNX model is not a Lantern explain graph (export it with "
                               "'lantern-engine export')")
    outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in explain_names(inputs)[3] if n not in outputs]
    if missing:
        raise ModelBundleError(f"the ONNX model is not a Lantern explain graph: it has no output "
                               f"{', '.join(missing)} (export it again with 'lantern-engine export')")
    return inputs


def check_graph_inputs(inputs: tuple[str, ...], bundle: ModelBundle, file: str) -> None:
    """Refuse a graph whose model inputs (``OnnxSessions.inputs``) are not the manifest's, in its
    order: the graph feeds its inputs by name and the analysis passes them in the manifest's order,
    so a graph exported before the manifest's inputs changed would get the wrong images."""
    wanted = bundle.input_names if bundle.multi_input else ()
    if inputs != wanted:
        def described(names):
            return f"the inputs {', '.join(names)}" if names else "one image"

        raise ModelBundleError(f"{file} takes {described(inputs)} but the manifest names {described(wanted)}; "
                               f"export the model again ('lantern-engine export')", bundle.folder)


class OnnxSessions:
    """The explain graph and the optional head graph, from files or bytes. A multi-input graph
    takes a tuple of arrays, one per model input in the graph's order (``self.inputs``), wherever
    a one-image graph takes one array."""

    def __init__(self, model: str | Path | bytes, head: str | Path | bytes | None):
        self.model = open_session(model)
        self.inputs = _graph_inputs(self.model)  # model input names; () for a one-image graph
        self.feeds, self.activations, self.gradients, _ = explain_names(self.inputs)
        self.head_session = open_session(head) if head is not None else None
        self.dropout: list[float] = []
        self.mask_shapes: list[tuple[int, ...]] = []
        self._masks: dict[tuple[int, int], list[np.ndarray]] = {}
        self.head_takes_one_row = False
        if self.head_session is not None:
            meta = self.head_session.get_modelmeta().custom_metadata_map
            self.dropout = [float(p) for p in json.loads(meta.get("lantern.dropout", "[]"))]
            masks = [i for i in self.head_session.get_inputs() if i.name.startswith("mask")]
            self.mask_shapes = [tuple(int(d) for d in i.shape[1:]) for i in masks]
            if len(self.dropout) != len(self.mask_shapes):
                raise ModelBundleError("the head graph's dropout metadata does not match its masks")
            # Heads exported since Lantern 0.1 take one image's features (batch 1) and broadcast
            # them over the masks; older ones one row per sample.
            features = next(i for i in self.head_session.get_inputs() if i.name == HEAD_INPUT)
            self.head_takes_one_row = features.shape[0] == 1

    def _feed(self, batch, gradients: bool, first_only: bool = False) -> dict[str, np.ndarray]:
        arrays = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        if len(arrays) != len(self.feeds):
            raise ValueError(f"the explain graph takes {len(self.feeds)} input(s), not {len(arrays)}")
        feed = {name: np.ascontiguousarray(a[:1] if first_only else a, dtype=np.float32)
                for name, a in zip(self.feeds, arrays)}
        feed[WITH_GRADIENTS] = np.array(gradients)
        return feed

    def forward(self, batch) -> np.ndarray:
        return self.model.run([LOGITS], self._feed(batch, False))[0]

    def forward_features(self, batch) -> tuple[np.ndarray, np.ndarray]:
        logits, head_input = self.model.run([LOGITS, HEAD_INPUT], self._feed(batch, False))
        return logits, head_input

    def explain(self, tensor) -> ForwardOutputs:
        n = len(self.feeds)
        logits, head_input, *maps = self.model.run([LOGITS, HEAD_INPUT, *self.activations, *self.gradients],
                                                   self._feed(tensor, True, first_only=True))
        layers = tuple(ExplainedLayer(a[0], g[:, 0]) for a, g in zip(maps[:n], maps[n:]))
        return ForwardOutputs(logits=logits[0], layers=layers, head_input=head_input[0])

    def head(self, features: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        feed = {HEAD_INPUT: np.ascontiguousarray(features, dtype=np.float32)}
        feed.update({f"mask{i}": np.ascontiguousarray(m, dtype=np.float32) for i, m in enumerate(masks)})
        return self.head_session.run([LOGITS], feed)[0]

    def dropout_masks(self, samples: int, seed: int) -> list[np.ndarray]:
        """Inverted-dropout masks: keep with probability 1 - p, kept values scaled by 1 / (1 - p).

        A pure function of (samples, seed), and every analysis asks for the same pair: drawn once
        and kept (read-only), which saves ~0.35 ms per image for a wide head."""
        found = self._masks.get((samples, seed))
        if found is None:
            rng = np.random.default_rng(seed)
            found = [((rng.random((samples, *shape)) >= p) * (1.0 / (1.0 - p))).astype(np.float32)
                     for p, shape in zip(self.dropout, self.mask_shapes)]
            for mask in found:
                mask.setflags(write=False)
            if len(self._masks) > 8:  # callers varying the seed per image must not grow it forever
                self._masks.clear()
            self._masks[(samples, seed)] = found
        return found


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
        except ModelBundleError as exc:
            raise ModelBundleError(f"{path.name}: {exc.reason}", bundle.folder) from exc
        except Exception as exc:  # onnxruntime raises its own exception types for broken files
            raise ModelBundleError(f"onnxruntime could not load {path.name}: {exc}", bundle.folder) from exc
        check_graph_inputs(self.sessions.inputs, bundle, path.name)
        self.has_dropout = bool(self.sessions.dropout) and any(p > 0 for p in self.sessions.dropout)

    def forward(self, batch) -> np.ndarray:
        return self.sessions.forward(batch)

    def forward_features(self, batch) -> tuple[np.ndarray, np.ndarray]:
        return self.sessions.forward_features(batch)

    def explain(self, tensor) -> ForwardOutputs:
        return self.sessions.explain(tensor)

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        if not self.has_dropout:
            raise ValueError("this model has no dropout in its head")
        rows = 1 if self.sessions.head_takes_one_row else samples
        features = np.broadcast_to(head_input, (rows, *head_input.shape))
        return self.sessions.head(features, self.sessions.dropout_masks(samples, seed))
