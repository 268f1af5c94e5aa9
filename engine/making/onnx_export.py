"""``lantern-engine export``: the bundle's model as ONNX graphs that explain without autograd.

Two files go into the bundle (design notes in ``docs/onnx-engine.md``):

``model.onnx`` (the *explain graph*)
    inputs  ``input`` (B, C_in, h, w) float32, dynamic batch; ``with_gradients`` bool scalar
    outputs ``logits`` (B, C), ``activations`` (B, K, h', w') of the explained layer,
            ``head_input`` (B, F...) the features entering the dropout head, and
            ``gradients`` (C, 1, K, h', w'): d logit_c / d activations of the batch's FIRST
            image for every class c, computed inside the graph.
    The gradient part is an ONNX ``If`` on ``with_gradients``: a plain forward (``False``) runs
    none of it and returns zeros, so one file (one copy of the weights) serves both plain
    batched inference and explanation.

``head.onnx`` (the *head graph*)
    inputs ``head_input`` (N, F...) and one ``mask<i>`` (N, F_i) per dropout layer of the head;
    output ``logits`` (N, C). Dropout becomes a multiplication by a mask the caller draws
    (Bernoulli keep with probability 1 - p, scaled by 1 / (1 - p)), so N Monte-Carlo samples
    are one deterministic batched call and seeding lives in numpy.

How the gradients get into a graph: the function "tail of the network from the explained
activation, then ``torch.autograd.grad`` of every class logit" is traced with ``make_fx`` into
plain aten ops (backward included), each ``convolution_backward`` is rewritten as the transposed
convolution it computes, and the result is exported by ``torch.onnx.export(dynamo=True)``. That
traced part has a fixed batch of one; the rest of the model is exported normally with a dynamic
batch axis.

Export verifies the written bytes with onnxruntime on held-out phantoms against the PyTorch
engine and refuses (nothing written, manifest unchanged) when they disagree.
"""

from __future__ import annotations

import copy
import io
import json
import operator
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import LanternError, ModelBundleError
from engine.files import write_bytes_atomic

MODEL_FILE = "model.onnx"
HEAD_FILE = "head.onnx"
INPUT = "input"
WITH_GRADIENTS = "with_gradients"
OUTPUTS = ("logits", "activations", "head_input", "gradients")
HEAD_INPUT = "head_input"
OPSET = 18
# Held-out phantoms for verification: seeds no training or calibration stream uses
# (training uses 1000 * epoch, validation 50_000, the model card 90_000).
VERIFY_SEED = 70_000
LOGIT_TOLERANCE = 1e-4
MAP_CORRELATION = 0.999
BATCHED_CLASSES = False  # gradient graph: one backward over C copies (True) or vmap over classes


class ExportRefused(LanternError):
    """The exported graph does not reproduce the PyTorch engine; nothing was written."""


# ----------------------------------------------------------------------------------------------
# Comparison helpers (numpy only; shared with quantization)


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
    from engine.cam import METHODS

    return {name: m.raw_maps(activations, gradients) for name, m in METHODS.items()}


# ----------------------------------------------------------------------------------------------
# Tracing (torch)


def _shape(gm, node) -> tuple[int, ...]:
    """A traced value's shape (make_fx records it in meta['val'], ShapeProp in meta['tensor_meta'])."""
    if "val" in node.meta:
        return tuple(int(d) for d in node.meta["val"].shape)
    if "tensor_meta" in node.meta:
        return tuple(int(d) for d in node.meta["tensor_meta"].shape)
    if node.op == "get_attr":
        return tuple(getattr(gm, node.target).shape)
    raise ModelBundleError(f"no shape recorded for {node.format_node()}")


def _rewrite_convolution_backward(gm) -> None:
    """convolution_backward(grad_out, ...)[0] is the transposed convolution of grad_out with the
    same weight; ONNX has ConvTranspose but no convolution_backward."""
    import torch

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.convolution_backward.default:
            continue
        grad_out, inp, weight, _bias, stride, padding, dilation, transposed, _opad, groups, mask = node.args
        if transposed or mask[1] or mask[2]:
            raise ModelBundleError(f"cannot export the gradient of {node.format_node()}")
        in_shape = _shape(gm, inp)
        out_shape = _shape(gm, grad_out)
        kernel = _shape(gm, weight)[2:]
        dims = len(kernel)
        output_padding = [
            int(in_shape[2 + i]) - ((int(out_shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
                                    + dilation[i] * (kernel[i] - 1) + 1)
            for i in range(dims)
        ]
        with gm.graph.inserting_before(node):
            if all(s == 1 for s in stride) and all(p >= 0 for p in output_padding) and not any(output_padding) \
                    and all(d * (k - 1) - p >= 0 for d, k, p in zip(dilation, kernel, padding)):
                # Stride 1: the transposed convolution is an ordinary convolution with the kernel
                # flipped and its in/out channels swapped (per group). The weight transform works
                # on a constant, so onnxruntime folds it when the session opens, and the fast
                # convolution kernels (and QLinearConv after quantization) apply.
                w_shape = _shape(gm, weight)
                out_ch, in_per_group = int(w_shape[0]), int(w_shape[1])
                per_group = out_ch // groups
                w = gm.graph.call_function(torch.ops.aten.reshape.default,
                                           (weight, [groups, per_group, in_per_group, *map(int, kernel)]))
                w = gm.graph.call_function(torch.ops.aten.transpose.int, (w, 1, 2))
                w = gm.graph.call_function(torch.ops.aten.reshape.default,
                                           (w, [groups * in_per_group, per_group, *map(int, kernel)]))
                w = gm.graph.call_function(torch.ops.aten.flip.default, (w, list(range(2, 2 + dims))))
                new = gm.graph.call_function(
                    torch.ops.aten.convolution.default,
                    (grad_out, w, None, [1] * dims, [d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding)],
                     dilation, False, [0] * dims, groups))
            else:
                new = gm.graph.call_function(
                    torch.ops.aten.convolution.default,
                    (grad_out, weight, None, stride, padding, dilation, True, output_padding, groups))
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise ModelBundleError(f"unexpected use of convolution_backward: {user.format_node()}")
            if user.args[1] == 0:
                user.replace_all_uses_with(new)
            elif user.users:
                raise ModelBundleError("the exported gradient needs weight gradients; not supported")
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    _rewrite_whole_scatters(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def _rewrite_whole_scatters(gm) -> None:
    """as_strided_scatter that overwrites its whole (contiguous) base is just its source reshaped;
    backward of views traces to it (convnext's head) and it has no ONNX form."""
    import torch

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.as_strided_scatter.default:
            continue
        base, src, size, stride = node.args[:4]
        offset = node.args[4] if len(node.args) > 4 else node.kwargs.get("storage_offset", 0)
        shape = [int(d) for d in _shape(gm, base)]
        contiguous = [int(torch.Size(shape[i + 1:]).numel()) for i in range(len(shape))]
        if list(map(int, size)) != shape or list(map(int, stride)) != contiguous or offset not in (0, None):
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(torch.ops.aten.reshape.default, (src, shape))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def _merge_per_class_convolutions(gm) -> int:
    """vmap over the backward traces a convolution's gradient as one batch-1 convolution per class
    (select class i, convolve, concatenate). Put them back together: one convolution over all C
    classes, which runs much faster than C small ones."""
    import torch

    aten = torch.ops.aten
    merged = 0
    for cat in list(gm.graph.nodes):
        if cat.op != "call_function" or cat.target != aten.cat.default:
            continue
        parts = cat.args[0]
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        if dim != 0 or len(parts) < 2:
            continue
        convs = [p for p in parts if p.op == "call_function" and p.target == aten.convolution.default
                 and len(p.users) == 1]
        if len(convs) != len(parts):
            continue
        selects = [c.args[0] for c in convs]
        if not all(s.op == "call_function" and s.target == aten.select.int and s.args[1] == 0 for s in selects):
            continue
        source = selects[0].args[0]
        if any(s.args[0] is not source for s in selects) or [s.args[2] for s in selects] != list(range(len(parts))):
            continue
        if any(c.args[2:] != convs[0].args[2:] for c in convs):
            continue
        shape = list(_shape(gm, source))
        if shape[0] != len(parts) or shape[1] != 1:
            continue
        with gm.graph.inserting_before(cat):
            batch = gm.graph.call_function(aten.reshape.default, (source, [shape[0], *map(int, shape[2:])]))
            conv = gm.graph.call_function(aten.convolution.default, (batch, *convs[0].args[1:]))
        cat.replace_all_uses_with(conv)
        gm.graph.erase_node(cat)
        merged += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return merged


def fold_batch_norms(model):
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution
    (the BatchNorm becomes Identity), keeping module names so hooks still find their layers. The
    graph gets simpler, its backward too, and quantization sees one weight per convolution."""
    import torch
    import torch.fx
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from engine.backends.architectures import _set_submodule

    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - models fx cannot trace are exported unfolded
        return model
    modules = dict(model.named_modules())
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d) and len(source.users) == 1):
            continue
        conv, bn = modules[source.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        _set_submodule(model, source.target, fuse_conv_bn_eval(conv, bn))
        _set_submodule(model, node.target, nn.Identity())
    return model


def _build_modules(bundle: ModelBundle, model):
    """(explain module, head module, head mask shapes, dropout probabilities) in torch."""
    import torch
    from torch import nn
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    from engine.backends.architectures import head_module_name, target_layer_name
    from engine.backends.torch_backend import all_class_gradients

    model = fold_batch_norms(copy.deepcopy(model).eval())
    for p in model.parameters():
        p.requires_grad_(False)
    target = model.get_submodule(target_layer_name(bundle))
    head = model.get_submodule(head_module_name(bundle))
    channels, (height, width) = bundle.input.channels, bundle.input.size

    def run(x, replace_target=None):
        """The model on x; returns (logits, explained activation, head input). With
        ``replace_target`` the explained layer's output is replaced (its inputs become dead code)."""
        store: dict[str, Any] = {}

        def on_target(_m, _i, output):
            if replace_target is not None:
                # A copy, not the leaf itself: some models continue with an in-place op
                # (densenet's relu(inplace=True)), which autograd refuses on a leaf.
                output = replace_target.clone()
            store["act"] = output
            return output

        def on_head(_m, inputs):
            store["head"] = inputs[0]

        handles = [target.register_forward_hook(on_target), head.register_forward_pre_hook(on_head)]
        try:
            logits = model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, store["act"], store["head"]

    def tail(a):
        dummy = torch.zeros(a.shape[0], channels, height, width, dtype=a.dtype)
        logits, _, _ = run(dummy, replace_target=a)
        return logits

    n_classes = bundle.num_classes

    def gradient_fn(a):
        if not BATCHED_CLASSES:
            a = a.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = tail(a)
                return all_class_gradients(logits, a)
        # One copy of the activation per class, one backward: copy c only reaches logits[c], so
        # d sum_c logits[c, c] / d copies = every class's gradient, and each backward op runs
        # once on a batch of C (instead of C separate batch-1 ops, which is what vmap over the
        # convolution backward traces to).
        copies = a.detach().expand(n_classes, *a.shape[1:]).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = tail(copies)
            picked = (logits * torch.eye(n_classes, dtype=logits.dtype)).sum()
            (grads,) = torch.autograd.grad(picked, copies)
        return grads.unsqueeze(1)

    with torch.no_grad():
        _, act0, head0 = run(torch.zeros(1, channels, height, width))
    # functionalize: vmap fallbacks write per-class results into a buffer in place; ONNX needs
    # the functional form (scatters instead of copy_).
    example = act0.detach().clone()
    traced = make_fx(gradient_fn, decomposition_table=core_aten_decompositions())(example)
    if any(n.op == "call_function" and str(n.target).endswith("_.default") and "relu" not in str(n.target)
           for n in traced.graph.nodes):
        traced = make_fx(torch.func.functionalize(traced, remove="mutations"),
                         decomposition_table=core_aten_decompositions())(example)
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(traced).propagate(example)
    _rewrite_convolution_backward(traced)
    _merge_per_class_convolutions(traced)
    leftovers = sorted({str(n.target) for n in traced.graph.nodes
                        if n.op == "call_function" and "backward" in str(n.target)})
    if leftovers:
        raise ModelBundleError(f"the gradient graph still needs {', '.join(leftovers)}; no ONNX rewrite "
                               f"exists for it yet", bundle.folder)

    class Explain(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.gradients = traced

        def forward(self, x):
            logits, act, head_input = run(x)
            grads = self.gradients(act[:1])
            return logits, act, head_input, grads

    # The head with each dropout (p > 0) replaced by a multiplication with a given mask.
    dropouts = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(_m, inputs):
            shapes[name] = tuple(inputs[0].shape[1:])
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in dropouts]
    try:
        with torch.no_grad():
            head(head0)
    finally:
        for h in handles:
            h.remove()

    class Mask(nn.Module):
        def __init__(self, owner, index):
            super().__init__()
            self.index = index
            self.owner = [owner]  # a list: not registered as a submodule (no cycle)

        def forward(self, x):
            return x * self.owner[0].masks[self.index]

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = copy.deepcopy(head)
            self.masks = ()
            for i, (name, _m) in enumerate(dropouts):
                parent_name, _, child = name.rpartition(".")
                parent = self.head.get_submodule(parent_name) if parent_name else self.head
                setattr(parent, child, Mask(self, i))

        def forward(self, features, *masks):
            self.masks = masks
            return self.head(features)

    mask_shapes = [shapes[n] for n, _ in dropouts]
    probabilities = [float(m.p) for _, m in dropouts]
    return Explain().eval(), Head().eval(), act0.shape, head0.shape, mask_shapes, probabilities


def _export_bytes(module, args, input_names, output_names, dynamic_shapes) -> bytes:
    """torch.onnx.export (dynamo) to one self-contained ONNX file in memory."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        quiet = io.StringIO()
        saved = sys.stdout
        sys.stdout = quiet  # the dynamo exporter prints progress lines
        try:
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=dynamic_shapes, external_data=False)
        finally:
            sys.stdout = saved
        proto = onnx.load(str(path))
    return proto


# ----------------------------------------------------------------------------------------------
# Graph surgery (onnx): gradients behind an If


def split_gradient_branch(proto, n_classes: int, act_shape: tuple[int, ...]):
    """Move every node that only the ``gradients`` output needs into the then-branch of an
    ``If`` on a new bool input ``with_gradients``; the else-branch returns zeros of the same
    shape. Works on fp32 and QDQ-quantized graphs alike."""
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}

    def needed(names):
        seen, stack, result = set(), list(names), set()
        while stack:
            name = stack.pop()
            node = producers.get(name)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            result.add(id(node))
            stack.extend(i for i in node.input if i)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    raise ModelBundleError("the graph already has subgraphs; cannot split it")
        return result

    main_outputs = [o.name for o in graph.output if o.name != "gradients"]
    main = needed(main_outputs)
    grad = needed(["gradients"]) - main
    # Nodes of the gradient part that depend on constants only (the flipped and transposed kernels
    # of the gradient convolutions, the cast of int8 weights) stay in the main graph: onnxruntime
    # folds them once when the session opens, which it does not do inside an If branch.
    constant = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear") and all(
                not i or i in constant for i in node.input):
            constant.update(node.output)
            if id(node) in grad:
                main.add(id(node))
    grad -= main
    grad_nodes = [n for n in graph.node if id(n) in grad]
    main_nodes = [n for n in graph.node if id(n) in main]
    grad_out = next(o for o in graph.output if o.name == "gradients")
    shape = [n_classes, 1, *act_shape[1:]]

    # The branch's result gets its own name so the If node's output can keep the public one. When
    # the gradient does not depend on the input (explaining the last layer before a linear head)
    # the exporter made it a constant: the branch then just passes that initializer on.
    source = "gradients_value"
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == "gradients":
                node.output[i] = source
    for init in graph.initializer:
        if init.name == "gradients":
            init.name = source
    then_branch = helper.make_graph(
        grad_nodes + [helper.make_node("Identity", [source], ["gradients_then"])], "explain_gradients", [],
        [helper.make_tensor_value_info("gradients_then", TensorProto.FLOAT, shape)])
    zeros = helper.make_node("ConstantOfShape", ["gradients_shape"], ["gradients_else"],
                             value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    shape_const = helper.make_node("Constant", [], ["gradients_shape"],
                                   value=helper.make_tensor("shape", TensorProto.INT64, [len(shape)], shape))
    else_branch = helper.make_graph(
        [shape_const, zeros], "no_gradients", [],
        [helper.make_tensor_value_info("gradients_else", TensorProto.FLOAT, shape)])
    if_node = helper.make_node("If", [WITH_GRADIENTS], ["gradients"], then_branch=then_branch,
                               else_branch=else_branch, name="explain_if_with_gradients")
    del graph.node[:]
    graph.node.extend(main_nodes + [if_node])
    graph.input.append(helper.make_tensor_value_info(WITH_GRADIENTS, TensorProto.BOOL, []))
    grad_out.type.tensor_type.ClearField("shape")
    for dim in shape:
        grad_out.type.tensor_type.shape.dim.add().dim_value = dim
    # Value infos of values that moved into the branch would be wrong at the outer scope.
    moved = {o for n in grad_nodes for o in n.output}
    keep = [v for v in graph.value_info if v.name not in moved]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def flatten_gradient_branch(proto):
    """The inverse of :func:`split_gradient_branch`: one flat graph whose ``gradients`` are always
    computed (what calibration and quantization work on)."""
    import onnx

    proto = copy.deepcopy(proto)
    graph = proto.graph
    if_node = next((n for n in graph.node if n.op_type == "If" and n.input[0] == WITH_GRADIENTS), None)
    if if_node is None:
        return proto
    then_branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    nodes = [n for n in graph.node if n is not if_node]
    # Undo the renaming: the value behind the branch's final Identity is "gradients" again. When
    # the gradient is a constant (the explained layer feeds a linear head), the node making it
    # was kept in the main graph, so look there too.
    branch_nodes = [n for n in then_branch.node if "gradients_then" not in n.output]
    for node in nodes + branch_nodes:
        for i, out in enumerate(node.output):
            if out == "gradients_value":
                node.output[i] = "gradients"
    for init in graph.initializer:
        if init.name == "gradients_value":
            init.name = "gradients"
    del graph.node[:]
    graph.node.extend(nodes + branch_nodes)
    keep = [i for i in graph.input if i.name != WITH_GRADIENTS]
    del graph.input[:]
    graph.input.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def set_metadata(proto, **values: Any) -> None:
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key = f"lantern.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------------------------
# Verification (onnxruntime against torch)


@dataclass
class Verification:
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


# ----------------------------------------------------------------------------------------------
# The command


def export_bundle(folder: str | Path, *, verify_images: int = 8, seed: int = VERIFY_SEED,
                  logit_tolerance: float = LOGIT_TOLERANCE, map_threshold: float = MAP_CORRELATION,
                  log: Callable[[str], None] = lambda _m: None,
                  _tamper: Callable[[bytes], bytes] | None = None) -> ModelBundle:
    """Export, verify, then write ``model.onnx`` (+ ``head.onnx``) and record them in the manifest.

    ``_tamper`` (tests only) alters the model bytes before verification, to prove that a wrong
    graph is refused."""
    import torch

    from engine.backends.architectures import build_model, load_weights
    from engine.backends.torch_backend import TorchBackend

    bundle = load_bundle(folder)
    if bundle.weights is None:
        raise ModelBundleError("export needs the bundle's safetensors weights", bundle.folder)
    model = build_model(bundle)
    load_weights(model, bundle)
    reference = TorchBackend(bundle, model)
    log("tracing the model and its all-class gradient ...")
    explain, head, act_shape, head_shape, mask_shapes, probabilities = _build_modules(bundle, model)
    channels, (height, width) = bundle.input.channels, bundle.input.size
    example = torch.zeros(2, channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    log("exporting the explain graph ...")
    proto = _export_bytes(explain, (example,), [INPUT], OUTPUTS, {"x": {0: batch}})
    proto = split_gradient_branch(proto, bundle.num_classes, tuple(act_shape))
    set_metadata(proto, graph="explain", architecture=bundle.architecture, classes=list(bundle.classes),
                 target_layer=bundle.target_layer or "", outputs=list(OUTPUTS),
                 gradients="d logits[c] / d activations of image 0, shape (C, 1, K, h, w)")
    model_bytes = proto.SerializeToString()
    head_bytes = None
    if mask_shapes:
        log("exporting the MC-dropout head ...")
        n = torch.export.Dim("samples", min=1, max=65536)
        feats = torch.zeros(2, *head_shape[1:])
        masks = tuple(torch.ones(2, *s) for s in mask_shapes)
        names = [HEAD_INPUT] + [f"mask{i}" for i in range(len(masks))]
        dyn = {"features": {0: n}, "masks": tuple({0: n} for _ in masks)}
        head_proto = _export_bytes(head, (feats, *masks), names, ["logits"], dyn)
        set_metadata(head_proto, graph="head", dropout=probabilities,
                     masks="keep with probability 1-p, scaled by 1/(1-p)")
        head_bytes = head_proto.SerializeToString()
    if _tamper is not None:
        model_bytes = _tamper(model_bytes)
    log(f"verifying on {verify_images} held-out phantoms ...")
    try:
        check = verify_export(bundle, reference, model_bytes, head_bytes, head, mask_shapes, verify_images,
                              seed, logit_tolerance, map_threshold)
    except LanternError:
        raise
    except Exception as exc:  # torch or onnxruntime failing on the model: nothing can be verified
        raise ExportRefused(f"the export could not be verified, nothing was written: {exc}", bundle.folder) from exc
    if not check.passed:
        raise ExportRefused("the ONNX export does not reproduce the PyTorch engine, nothing was written: "
                            + "; ".join(check.problems), bundle.folder)
    written = []
    try:
        if head_bytes is not None:
            written.append(write_bytes_atomic(bundle.folder / HEAD_FILE, head_bytes))
        written.append(write_bytes_atomic(bundle.folder / MODEL_FILE, model_bytes))
        onnx_entry = {k: v for k, v in (bundle.manifest.get("onnx") or {}).items() if k not in ("fp32", "head")}
        onnx_entry["fp32"] = MODEL_FILE
        if head_bytes is not None:
            onnx_entry["head"] = HEAD_FILE
        card = dict(bundle.model_card)
        card["onnx_validation"] = check.to_dict()
        updated = update_manifest(bundle, onnx=onnx_entry, model_card=card)
    except BaseException:
        # Files the old manifest already named stay (they were replaced atomically); new ones go.
        old = set((bundle.manifest.get("onnx") or {}).values())
        for path in written:
            if path.name not in old:
                path.unlink(missing_ok=True)
        raise
    log(f"wrote {MODEL_FILE} ({len(model_bytes) / 1e6:.1f} MB)"
        + (f" and {HEAD_FILE} ({len(head_bytes) / 1e3:.0f} kB)" if head_bytes else ""))
    return updated
