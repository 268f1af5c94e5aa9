"""``lantern-engine quantize``: a static INT8 version of the exported explain graph.

The fp32 explain graph (``model.onnx``, see ``onnx_export``) is flattened (its gradient branch
always computed), calibrated with onnxruntime on phantoms from the training distribution (a
multi-input model: cases of one phantom per input, ``export_verification.heldout_cases``), and
quantized in QDQ format with per-channel int8 weights. Activations are quantized in the forward
part of the network (everything that produces logits, activations and head input); the gradient
part (the gradient convolutions and ReLU masks behind the explained layer) computes in fp32 from
the same int8 weights: each weight is stored once, as int8 (see :mod:`engine.making.int8_weights`).

The result is validated against the fp32 graph on held-out phantoms and refused (nothing
written, manifest unchanged) unless top-1 accuracy stays within 1 point, every class map
correlates >= 0.95 with fp32's and the file is at most 30% of fp32's size. The figures go into
the manifest's ``model_card["int8_validation"]``. ``dynamic=True`` gives onnxruntime's dynamic
quantization instead (weights int8, activations quantized per call; no calibration).

A graph with attention (ViT, DeiT, Swin) gets a narrower recipe, :func:`attention_recipe`: only
layers with weights are quantized. Validation itself is :mod:`engine.making.int8_validation`.

Needs the ``onnx`` package (the ``torch`` extra), never torch itself.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import LanternError, ModelBundleError
from engine.files import write_bytes_atomic
from engine.making.export_verification import VERIFY_SEED, heldout_cases
from engine.making.int8_validation import (  # noqa: F401 - the thresholds are this command's defaults
    MAX_ACCURACY_DROP, MAX_SIZE_RATIO, MIN_MAP_CORRELATION, Int8Validation, validate_int8,
)
from engine.making.int8_weights import reuse_int8_weights_in_gradient, unshare_weight_dequantizers
from engine.making.onnx_export import HEAD_FILE
from engine.making.onnx_graph import (
    WITH_GRADIENTS, flatten_gradient_branch, fold_weight_transposes, gradient_outputs, gradient_shapes, set_metadata,
    split_gradient_branch, upstream_nodes,
)

INT8_FILE = "model.int8.onnx"
CALIBRATION_SEED = 1000  # the training stream's first epoch (training.train_demo)
CALIBRATION_IMAGES = 100
VALIDATION_IMAGES = 60
# The gradient part's re-run of the layers after the explained one is forward computation: int8
# like the main forward (True) or fp32 like the backward (False).
QUANTIZE_RECOMPUTED_FORWARD = True


class QuantizationRefused(LanternError):
    """The int8 model misses a validation threshold; nothing was written."""


class _Reader:
    """onnxruntime CalibrationDataReader over prepared inputs, one image (a multi-input model: one
    case, an image per input) per call."""

    def __init__(self, names: list[str], inputs: tuple[np.ndarray, ...]):
        self.names, self.inputs = names, inputs
        self.index = 0

    def get_next(self):
        if self.index >= len(self.inputs[0]):
            return None
        i = self.index
        self.index += 1
        return {name: x[i : i + 1] for name, x in zip(self.names, self.inputs)}

    def rewind(self):
        self.index = 0


_COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")


def gradient_node_names(flat, backward_only: bool = False) -> list[str]:
    """Names of the nodes only the gradient outputs need (naming unnamed nodes on the way);
    with ``backward_only``, without the gradient part's re-run of the forward layers."""
    graph = flat.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"node_{i}_{node.op_type}"
    gradients = gradient_outputs(graph)
    main = upstream_nodes(graph, [o.name for o in graph.output if o.name not in gradients])
    gradient = upstream_nodes(graph, gradients) - main
    if backward_only:
        # The gradient part first re-runs the layers after the explained one for its image
        # (forward values: what the ReLU masks compare), then runs the backward. The forward
        # values are the ancestors of those comparisons; they may be quantized like the main forward.
        compares = [graph.node[i] for i in gradient if graph.node[i].op_type in _COMPARISONS]
        gradient -= upstream_nodes(graph, [name for n in compares for name in n.input if name])
    return sorted({graph.node[i].name for i in gradient})


WEIGHT_OPS = ["Conv", "MatMul", "Gemm"]


def attention_recipe(graph) -> tuple[list[str], list[str]]:
    """(op types to quantize, nodes to leave in fp32) for a graph with attention (a ViT or Swin).

    Only the layers with weights are quantized, and of those not the products of two activations
    (attention's queries x keys and weights x values). Quantizing the rest as well (residual
    adds, LayerNorm inputs, softmax outputs, attention scores) moved a random ViT-B/16's logits
    by up to 0.27 and its Grad-CAM++ / Layer-CAM maps to negative correlations with fp32's;
    weights only: logits within 0.05, map means >= 0.995. CNNs keep the full recipe (their
    quantized adds and pools are what makes int8 fast)."""
    weights = {i.name for i in graph.initializer}
    products = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    return list(WEIGHT_OPS), products


def quantize_bytes(fp32_path: Path, calibration: tuple[np.ndarray, ...] | None, *, dynamic: bool = False) -> bytes:
    """The int8 explain graph as bytes (with its gradient branch split off again). ``calibration``:
    one array of prepared inputs per graph input, in the graph's order."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
    )

    proto = onnx.load(str(fp32_path))
    flat = flatten_gradient_branch(proto)
    fold_weight_transposes(flat.graph)
    del flat.graph.value_info[:]  # stale after the graph surgery; shape inference redoes them
    exclude = gradient_node_names(flat, backward_only=QUANTIZE_RECOMPUTED_FORWARD)
    op_types = None  # every op the quantizer knows
    if any(node.op_type == "Softmax" for node in flat.graph.node):
        op_types, products = attention_recipe(flat.graph)
        exclude += products
    shapes = gradient_shapes(flat.graph)
    initializers = {i.name for i in flat.graph.initializer}
    feeds = [i.name for i in flat.graph.input if i.name != WITH_GRADIENTS and i.name not in initializers]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "flat.onnx", Path(tmp) / "int8.onnx"
        onnx.save(flat, str(src))
        if dynamic:
            quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        else:
            # Excluded (gradient) nodes still read their weights through the DequantizeLinear of
            # the shared int8 initializer, so no weight is stored twice.
            quantize_static(
                src, dst, _Reader(feeds, calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude, op_types_to_quantize=op_types,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        quantized = onnx.load(str(dst))
    if not dynamic:
        reuse_int8_weights_in_gradient(quantized, set(exclude))
        unshare_weight_dequantizers(quantized, set(gradient_node_names(quantized)))
    quantized = split_gradient_branch(quantized, shapes)
    del quantized.metadata_props[:]
    for entry in proto.metadata_props:
        quantized.metadata_props.add().CopyFrom(entry)
    set_metadata(quantized, quantization=("dynamic int8" if dynamic else "static int8 QDQ, per-channel weights, "
                                          "activations quantized in the forward part, gradient part fp32"))
    return quantized.SerializeToString()


def quantize_bundle(folder: str | Path, *, calibration_images: int = CALIBRATION_IMAGES,
                    validation_images: int = VALIDATION_IMAGES, dynamic: bool = False,
                    seed: int = VERIFY_SEED, max_accuracy_drop: float = MAX_ACCURACY_DROP,
                    min_correlation: float = MIN_MAP_CORRELATION, max_size_ratio: float = MAX_SIZE_RATIO,
                    drop_fp32: bool = False, log: Callable[[str], None] = lambda _m: None) -> ModelBundle:
    """Quantize, validate, write ``model.int8.onnx`` and record it. ``drop_fp32`` then removes the
    fp32 model from the bundle and its manifest (for shipping within a size budget)."""
    bundle = load_bundle(folder)
    fp32 = bundle.onnx.get("fp32")
    if fp32 is None:
        raise ModelBundleError("the bundle has no fp32 ONNX model yet; run 'lantern-engine export' first",
                               bundle.folder)
    from engine.backends.onnx_backend import OnnxSessions, check_graph_inputs

    # Calibration and validation feed the manifest's inputs in its order.
    check_graph_inputs(OnnxSessions(fp32, None).inputs, bundle, fp32.name)
    started = time.perf_counter()
    calibration = None
    if not dynamic:
        log(f"preparing {calibration_images} calibration phantoms ...")
        # A multi-input model calibrates on cases: one phantom per input, each prepared for its input.
        calibration, _ = heldout_cases(bundle, calibration_images, CALIBRATION_SEED)
    log("quantizing ...")
    int8 = quantize_bytes(fp32, calibration, dynamic=dynamic)
    method = "dynamic" if dynamic else "static QDQ, per-channel int8 weights, fp32 backward"
    log(f"validating against fp32 on {validation_images} held-out phantoms ...")
    check = validate_int8(bundle, fp32, int8, validation_images, seed, method=method,
                          calibration_images=0 if dynamic else calibration_images,
                          size_fp32=fp32.stat().st_size, max_accuracy_drop=max_accuracy_drop,
                          min_correlation=min_correlation, max_size_ratio=max_size_ratio)
    log(f"validation: {check.to_dict()}")
    if not check.passed:
        raise QuantizationRefused("the int8 model was refused, nothing was written: " + "; ".join(check.problems),
                                  bundle.folder)
    target = bundle.folder / INT8_FILE
    existed = target.exists()
    write_bytes_atomic(target, int8)
    try:
        onnx_entry = dict(bundle.manifest.get("onnx") or {})
        onnx_entry["int8"] = INT8_FILE
        if drop_fp32:
            del onnx_entry["fp32"]
        card = dict(bundle.model_card)
        card["int8_validation"] = check.to_dict() | {"seconds": round(time.perf_counter() - started, 1)}
        updated = update_manifest(bundle, onnx=onnx_entry, model_card=card)
    except BaseException:
        if not existed:
            target.unlink(missing_ok=True)
        raise
    log(f"wrote {INT8_FILE} ({len(int8) / 1e6:.1f} MB, {check.size_ratio:.0%} of fp32)")
    if drop_fp32:
        # The manifest no longer names it; a bundle shipped without its fp32 model still loads.
        fp32.unlink(missing_ok=True)
        log(f"removed {fp32.name} (the int8 model and {HEAD_FILE} are the bundle's ONNX files)")
    return updated
