"""``lantern-engine quantize``: a static INT8 version of the exported explain graph.

The fp32 explain graph (``model.onnx``, see ``onnx_export``) is flattened (its gradient branch
always computed), calibrated with onnxruntime on phantoms from the training distribution, and
quantized in QDQ format with per-channel int8 weights. Activations are quantized in the forward
part of the network (everything that produces logits, activations and head input); the gradient
part (the gradient convolutions and ReLU masks behind the explained layer) computes in fp32 from
the same int8 weights: each weight is stored once, as int8 (see
:func:`reuse_int8_weights_in_gradient`).

The result is validated against the fp32 graph on held-out phantoms and refused (nothing
written, manifest unchanged) unless top-1 accuracy stays within 1 point, every class map
correlates >= 0.95 with fp32's and the file is at most 30% of fp32's size. The figures go into
the manifest's ``model_card["int8_validation"]``. ``dynamic=True`` gives onnxruntime's dynamic
quantization instead (weights int8, activations quantized per call; no calibration).

Needs the ``onnx`` package (the ``torch`` extra), never torch itself.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import LanternError, ModelBundleError
from engine.files import write_bytes_atomic
from engine.making.export_verification import VERIFY_SEED, class_map_correlations, class_maps, heldout_inputs
from engine.making.onnx_export import HEAD_FILE
from engine.making.onnx_graph import (
    INPUT, flatten_gradient_branch, set_metadata, split_gradient_branch, toposort, upstream_nodes,
    value_consumers,
)

INT8_FILE = "model.int8.onnx"
CALIBRATION_SEED = 1000  # the training stream's first epoch (training.train_demo)
CALIBRATION_IMAGES = 100
VALIDATION_IMAGES = 60
MAX_ACCURACY_DROP = 0.01
MIN_MAP_CORRELATION = 0.95
MAX_SIZE_RATIO = 0.30
# The gradient part's re-run of the layers after the explained one is forward computation: int8
# like the main forward (True) or fp32 like the backward (False).
QUANTIZE_RECOMPUTED_FORWARD = True


class QuantizationRefused(LanternError):
    """The int8 model misses a validation threshold; nothing was written."""


class _Reader:
    """onnxruntime CalibrationDataReader over prepared inputs, one image per call."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs
        self.index = 0

    def get_next(self):
        if self.index >= len(self.inputs):
            return None
        x = self.inputs[self.index : self.index + 1]
        self.index += 1
        return {INPUT: x}

    def rewind(self):
        self.index = 0


_COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")


def gradient_node_names(flat, backward_only: bool = False) -> list[str]:
    """Names of the nodes only the ``gradients`` output needs (naming unnamed nodes on the way);
    with ``backward_only``, without the gradient part's re-run of the forward layers."""
    graph = flat.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"node_{i}_{node.op_type}"
    main = upstream_nodes(graph, [o.name for o in graph.output if o.name != "gradients"])
    gradient = upstream_nodes(graph, ["gradients"]) - main
    if backward_only:
        # The gradient part first re-runs the layers after the explained one for its image
        # (forward values: what the ReLU masks compare), then runs the backward. The forward
        # values are the ancestors of those comparisons; they may be quantized like the main forward.
        compares = [graph.node[i] for i in gradient if graph.node[i].op_type in _COMPARISONS]
        gradient -= upstream_nodes(graph, [name for n in compares for name in n.input if name])
    return sorted({graph.node[i].name for i in gradient})


def quantize_bytes(fp32_path: Path, calibration: np.ndarray | None, *, dynamic: bool = False) -> bytes:
    """The int8 explain graph as bytes (with its gradient branch split off again)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
    )

    proto = onnx.load(str(fp32_path))
    flat = flatten_gradient_branch(proto)
    del flat.graph.value_info[:]  # stale after the graph surgery; shape inference redoes them
    exclude = gradient_node_names(flat, backward_only=QUANTIZE_RECOMPUTED_FORWARD)
    n_classes = next(o for o in flat.graph.output if o.name == "logits").type.tensor_type.shape.dim[1].dim_value
    act_dims = next(o for o in flat.graph.output if o.name == "activations").type.tensor_type.shape.dim
    act_shape = tuple(d.dim_value for d in act_dims)
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
                src, dst, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        quantized = onnx.load(str(dst))
    if not dynamic:
        reuse_int8_weights_in_gradient(quantized, set(exclude))
        unshare_weight_dequantizers(quantized, set(gradient_node_names(quantized)))
    quantized = split_gradient_branch(quantized, n_classes, act_shape)
    del quantized.metadata_props[:]
    for entry in proto.metadata_props:
        quantized.metadata_props.add().CopyFrom(entry)
    set_metadata(quantized, quantization=("dynamic int8" if dynamic else "static int8 QDQ, per-channel weights, "
                                          "activations quantized in the forward part, gradient part fp32"))
    return quantized.SerializeToString()


_LAYOUT_OPS = ("Reshape", "Transpose", "Slice")


def reuse_int8_weights_in_gradient(proto, gradient_nodes: set[str]) -> int:
    """Let the fp32 gradient part read the int8 weights without dequantizing them on every call.

    After QDQ quantization a gradient convolution gets its weight as DequantizeLinear(W_q, s)
    (per output channel of the forward convolution, zero point 0), possibly through the
    reshape/transpose/flip that turns a forward kernel into its gradient kernel. That runs on
    every call. Since the scale s is per *input* channel of the gradient convolution,
    conv(x, s * W_q) == conv(s * x, W_q): the weight path becomes Cast(W_q) (constant, folded once
    when the session opens; the file still stores each weight once, as int8) and s multiplies the
    incoming gradient instead. Exact up to float rounding. Returns how many convolutions changed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers = value_consumers(graph)
    changed = 0
    new_nodes = []
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        w_name, s_name = dq.input[0], dq.input[1]
        z_name = dq.input[2] if len(dq.input) > 2 else ""
        if w_name not in inits or s_name not in inits or inits[w_name].data_type != TensorProto.INT8:
            continue
        if len(inits[w_name].dims) < 3:
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale = numpy_helper.to_array(inits[s_name]).astype(np.float32)
        if z_name and np.any(numpy_helper.to_array(inits[z_name]) != 0):
            continue
        if scale.ndim == 1 and scale.size > 1 and axis != 0:
            continue
        cast_out = None
        for start in list(consumers.get(dq.output[0], [])):
            if start.name not in gradient_nodes:
                continue
            # Follow the kernel's layout changes (single consumers) to the convolutions using it.
            chain, value = [], dq.output[0]
            users = [start]
            while len(users) == 1 and users[0].op_type in _LAYOUT_OPS and users[0].name in gradient_nodes \
                    and users[0].input[0] == value:
                chain.append(users[0])
                value = users[0].output[0]
                users = consumers.get(value, [])
            if chain and start is not chain[0]:
                continue
            if not users or not all(
                    u.op_type in ("Conv", "ConvTranspose") and u.name in gradient_nodes and u.input[1] == value
                    and u.input[0] != value for u in users):
                continue
            # A forward convolution (the gradient part's recomputed tail) reads W as it is: its
            # scale is per output channel. A gradient convolution (ConvTranspose, or a Conv with
            # a flipped kernel) has it per input channel.
            scale_output = not chain and users[0].op_type == "Conv"
            if not scale_output and any(len(u.input) > 2 and u.input[2] for u in users):
                continue
            if cast_out is None:
                cast_out = f"{w_name}_as_float"
                new_nodes.append(helper.make_node("Cast", [w_name], [cast_out], to=TensorProto.FLOAT,
                                                  name=f"{w_name}_cast"))
                factor = f"{s_name}_per_channel"
                shape = [1, scale.size] + [1] * (len(inits[w_name].dims) - 2) if scale.size > 1 else []
                graph.initializer.append(numpy_helper.from_array(scale.reshape(shape), factor))
            if chain:
                chain[0].input[0] = cast_out
            for node in users:
                if not chain:
                    node.input[1] = cast_out
                bias = node.input[2] if len(node.input) > 2 else ""
                if scale_output:
                    result = node.output[0]
                    node.output[0] = f"{node.name}_unscaled"
                    scaled = f"{node.name}_scaled" if bias else result
                    new_nodes.append(helper.make_node("Mul", [node.output[0], factor], [scaled],
                                                      name=f"{node.name}_scale"))
                    if bias:
                        shape_name = f"{node.name}_bias_shape"
                        bias_shape = np.array([1, -1] + [1] * (len(inits[w_name].dims) - 2), np.int64)
                        graph.initializer.append(numpy_helper.from_array(bias_shape, shape_name))
                        new_nodes.append(helper.make_node("Reshape", [bias, shape_name], [f"{node.name}_bias4d"],
                                                          name=f"{node.name}_bias_reshape"))
                        new_nodes.append(helper.make_node("Add", [scaled, f"{node.name}_bias4d"], [result],
                                                          name=f"{node.name}_bias"))
                        del node.input[2:]
                else:
                    scaled = f"{node.name}_scaled_input"
                    new_nodes.append(helper.make_node("Mul", [node.input[0], factor], [scaled],
                                                      name=f"{node.name}_scale"))
                    node.input[0] = scaled
                changed += 1
    graph.node.extend(new_nodes)
    # Restore a topological order (the new nodes were appended at the end).
    toposort(graph)
    return changed


def unshare_weight_dequantizers(proto, gradient_nodes: set[str]) -> int:
    """A weight's DequantizeLinear used by the main graph and by the gradient part gets a twin
    (same int8 initializer, nothing stored twice) for the gradient part: after the split, the
    consumers live in different graphs (the If branch), and onnxruntime only fuses a
    DequantizeLinear into QLinearConv when it sits in the same graph as its convolution."""
    from onnx import helper

    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    consumers = value_consumers(graph)
    twins = []
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]:
        users = consumers.get(dq.output[0], [])
        inside = [u for u in users if u.name in gradient_nodes]
        if not inside or len(inside) == len(users):
            continue
        twin_out = f"{dq.output[0]}_for_gradient"
        twin = helper.make_node("DequantizeLinear", list(dq.input), [twin_out], name=f"{dq.name}_for_gradient")
        twin.attribute.extend(dq.attribute)
        twins.append(twin)
        for user in inside:
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = twin_out
    graph.node.extend(twins)
    toposort(graph)
    return len(twins)


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

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def size_ratio(self) -> float:
        return self.size_int8 / self.size_fp32

    def to_dict(self) -> dict:
        return {
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


def validate_int8(bundle: ModelBundle, fp32: str | Path | bytes, int8: bytes, n: int, seed: int, *,
                  method: str, calibration_images: int, size_fp32: int,
                  max_accuracy_drop: float = MAX_ACCURACY_DROP, min_correlation: float = MIN_MAP_CORRELATION,
                  max_size_ratio: float = MAX_SIZE_RATIO) -> Int8Validation:
    from engine.backends.onnx_backend import OnnxSessions

    ref, got = OnnxSessions(fp32, None), OnnxSessions(int8, None)
    inputs, labels = heldout_inputs(bundle, n, seed)
    correct_ref = correct_got = same = 0
    corr: dict[str, list[float]] = {}
    max_err = 0.0
    for i in range(n):
        a, b = ref.explain(inputs[i : i + 1]), got.explain(inputs[i : i + 1])
        correct_ref += int(np.argmax(a.logits) == labels[i])
        correct_got += int(np.argmax(b.logits) == labels[i])
        same += int(np.argmax(a.logits) == np.argmax(b.logits))
        max_err = max(max_err, float(np.abs(a.logits - b.logits).max()))
        maps_a, maps_b = class_maps(a.activations, a.gradients), class_maps(b.activations, b.gradients)
        for name in maps_a:
            corr.setdefault(name, []).extend(class_map_correlations(maps_b[name], maps_a[name]))
    thresholds = {"max_accuracy_drop": max_accuracy_drop, "min_map_correlation": min_correlation,
                  "max_size_ratio": max_size_ratio}
    result = Int8Validation(
        images=n, accuracy_fp32=correct_ref / n, accuracy_int8=correct_got / n, agreement=same / n,
        min_map_correlation={k: float(np.min(v)) for k, v in corr.items()},
        mean_map_correlation={k: float(np.mean(v)) for k, v in corr.items()},
        max_abs_logit_error=max_err, size_fp32=size_fp32, size_int8=len(int8), method=method,
        calibration_images=calibration_images, thresholds=thresholds)
    if result.accuracy_fp32 - result.accuracy_int8 > max_accuracy_drop + 1e-9:
        result.problems.append(f"top-1 accuracy drops from {result.accuracy_fp32:.3f} to "
                               f"{result.accuracy_int8:.3f} (allowed: {max_accuracy_drop:.3f})")
    for name, r in result.min_map_correlation.items():
        if not r >= min_correlation:
            result.problems.append(f"{name} maps correlate only {r:.3f} with fp32 (limit {min_correlation})")
    if not result.size_ratio <= max_size_ratio:
        result.problems.append(f"the int8 file is {result.size_ratio:.0%} of fp32's size (limit {max_size_ratio:.0%})")
    return result


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
    started = time.perf_counter()
    calibration = None
    if not dynamic:
        log(f"preparing {calibration_images} calibration phantoms ...")
        calibration, _ = heldout_inputs(bundle, calibration_images, CALIBRATION_SEED)
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
