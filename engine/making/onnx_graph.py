"""Structure of the explain graph as ONNX: its names, and the surgery export and quantization share.

The exported explain graph computes its ``gradients`` output (a multi-input model's
``gradients_<NAME>`` outputs, :func:`gradient_outputs`) behind one ONNX ``If`` on the bool input
``with_gradients`` (:func:`split_gradient_branch`), so a plain forward pays nothing for them.
Quantization works on the flat form (:func:`flatten_gradient_branch`), decides which nodes belong
to the gradient part by the same reachability (:func:`upstream_nodes`), restores the order of
nodes it appended (:func:`toposort`) and splits the graph again. Only ``onnx`` is needed here
(and the engine's names), never torch.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

# The graphs' input and output names are the file format; the ONNX engine that reads them defines
# them (a multi-input model's too: ``explain_names``), and export and quantization take them from here.
from engine.backends.onnx_backend import (  # noqa: F401 - HEAD_INPUT, explain_names: for export
    ACTIVATIONS, GRADIENTS, HEAD_INPUT, LOGITS, WITH_GRADIENTS, explain_names,
)
from engine.errors import ModelBundleError


def gradient_outputs(graph) -> list[str]:
    """The explain graph's gradient outputs: ``gradients``, or a multi-input model's
    ``gradients_<NAME>`` (one per input)."""
    return [o.name for o in graph.output if o.name == GRADIENTS or o.name.startswith(f"{GRADIENTS}_")]


def gradient_shapes(graph) -> dict[str, list[int]]:
    """Each gradient output's shape (C, 1, K, h, w), from the graph's ``logits`` (B, C) and the
    matching activations output (B, K, h, w): what the ``If`` branches declare."""
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    n_classes = dims[LOGITS][1]
    return {name: [n_classes, 1, *dims[ACTIVATIONS + name[len(GRADIENTS):]][1:]] for name in gradient_outputs(graph)}


def upstream_nodes(graph, values: Iterable[str]) -> set[int]:
    """Indices in ``graph.node`` of the nodes that compute ``values`` and of every node they need
    in turn (inputs and initializers end the walk). Indices, not the nodes: protobuf messages are
    not hashable; the indices hold until nodes are added, removed or reordered."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    seen: set[int] = set()
    stack = list(values)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(name for name in graph.node[i].input if name)
    return seen


def value_consumers(graph) -> dict[str, list]:
    """Each value's name -> the nodes that read it, in graph order."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def toposort(graph) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (ONNX
    requires it; rewrites append their new nodes at the end)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelBundleError("the quantized graph has a cycle or a missing input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _unused_name(graph, wanted: str) -> str:
    """``wanted``, or ``wanted_1``, ``wanted_2``... if the graph already has a value of that name
    (a model input may be called ``X_value`` next to ``X``)."""
    taken = ({o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
             | {i.name for i in graph.input} | {o.name for o in graph.output})
    name, n = wanted, 0
    while name in taken:
        n += 1
        name = f"{wanted}_{n}"
    return name


def split_gradient_branch(proto, shapes: dict[str, list[int]]):
    """Move every node that only the gradient outputs need (``gradients``, or a multi-input
    model's ``gradients_<NAME>``; ``shapes``: each one's (C, 1, K, h, w)) into the then-branch of
    one ``If`` on a new bool input ``with_gradients``; the else-branch returns zeros of the same
    shapes. Works on fp32 and QDQ-quantized graphs alike."""
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    names = list(shapes)
    main_outputs = [o.name for o in graph.output if o.name not in shapes]
    main = upstream_nodes(graph, main_outputs)
    grad = upstream_nodes(graph, names)
    if any(attr.type == onnx.AttributeProto.GRAPH for i in main | grad for attr in graph.node[i].attribute):
        raise ModelBundleError("the graph already has subgraphs; cannot split it")
    grad -= main
    # Nodes of the gradient part that depend on constants only (the flipped and transposed kernels
    # of the gradient convolutions, the cast of int8 weights) stay in the main graph: onnxruntime
    # folds them once when the session opens, which it does not do inside an If branch.
    constant = {i.name for i in graph.initializer}
    for index, node in enumerate(graph.node):
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear") and all(
                not i or i in constant for i in node.input):
            constant.update(node.output)
            if index in grad:
                main.add(index)
    grad -= main
    grad_nodes = [n for index, n in enumerate(graph.node) if index in grad]
    main_nodes = [n for index, n in enumerate(graph.node) if index in main]

    # Each branch result gets its own name so the If node's outputs can keep the public ones
    # (flatten_gradient_branch finds them again through the branch's final Identity nodes). When a
    # gradient does not depend on the input (explaining the last layer before a linear head) the
    # exporter made it a constant: the branch then just passes that initializer on.
    then_nodes, then_outputs, else_nodes, else_outputs = list(grad_nodes), [], [], []
    for name in names:
        source = _unused_name(graph, f"{name}_value")
        for node in graph.node:
            for i, out in enumerate(node.output):
                if out == name:
                    node.output[i] = source
        for init in graph.initializer:
            if init.name == name:
                init.name = source
        shape = list(shapes[name])
        then_out, else_out, shape_name = (_unused_name(graph, f"{name}_{role}") for role in ("then", "else", "shape"))
        then_nodes.append(helper.make_node("Identity", [source], [then_out]))
        then_outputs.append(helper.make_tensor_value_info(then_out, TensorProto.FLOAT, shape))
        else_nodes.append(helper.make_node("Constant", [], [shape_name], value=helper.make_tensor(
            "shape", TensorProto.INT64, [len(shape)], shape)))
        else_nodes.append(helper.make_node("ConstantOfShape", [shape_name], [else_out],
                                           value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])))
        else_outputs.append(helper.make_tensor_value_info(else_out, TensorProto.FLOAT, shape))
        out = next(o for o in graph.output if o.name == name)
        out.type.tensor_type.ClearField("shape")
        for dim in shape:
            out.type.tensor_type.shape.dim.add().dim_value = dim
    then_branch = helper.make_graph(then_nodes, "explain_gradients", [], then_outputs)
    else_branch = helper.make_graph(else_nodes, "no_gradients", [], else_outputs)
    if_node = helper.make_node("If", [WITH_GRADIENTS], names, then_branch=then_branch,
                               else_branch=else_branch, name="explain_if_with_gradients")
    del graph.node[:]
    graph.node.extend(main_nodes + [if_node])
    graph.input.append(helper.make_tensor_value_info(WITH_GRADIENTS, TensorProto.BOOL, []))
    # Value infos of values that moved into the branch would be wrong at the outer scope.
    moved = {o for n in grad_nodes for o in n.output}
    keep = [v for v in graph.value_info if v.name not in moved]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def flatten_gradient_branch(proto):
    """The inverse of :func:`split_gradient_branch`: one flat graph whose gradient outputs are
    always computed (what calibration and quantization work on)."""
    import onnx
    from onnx import helper

    proto = copy.deepcopy(proto)
    graph = proto.graph
    if_node = next((n for n in graph.node if n.op_type == "If" and n.input[0] == WITH_GRADIENTS), None)
    if if_node is None:
        return proto
    then_branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    # The branch's i-th result is an Identity of the value that is the If's i-th output: give that
    # value its public name again. A constant gradient (the explained layer feeds a linear head)
    # was made in the main graph, so look there too.
    finals = {o.name for o in then_branch.output}
    renamed = {}
    extra = []
    for public, result in zip(if_node.output, [o.name for o in then_branch.output]):
        identity = next(n for n in then_branch.node if result in n.output)
        source = identity.input[0]
        if source in renamed:  # two outputs of one value: the second is an Identity of the first
            extra.append(helper.make_node("Identity", [renamed[source]], [public]))
        else:
            renamed[source] = public
    nodes = [n for n in graph.node if n is not if_node]
    branch_nodes = [n for n in then_branch.node if not set(n.output) & finals]
    for node in nodes + branch_nodes:
        for i, out in enumerate(node.output):
            if out in renamed:
                node.output[i] = renamed[out]
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for init in graph.initializer:
        if init.name in renamed:
            init.name = renamed[init.name]
    del graph.node[:]
    graph.node.extend(nodes + branch_nodes + extra)
    keep = [i for i in graph.input if i.name != WITH_GRADIENTS]
    del graph.input[:]
    graph.input.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def fold_weight_transposes(graph) -> int:
    """Replace each Transpose of an initializer (the exporter leaves those of large weights: a
    transformer's linear layers read W as Transpose(W)) by the transposed initializer, so the
    quantizer sees a weight (per-channel int8) where it would otherwise see an activation
    (per-tensor, calibrated) and keep W in fp32 besides. onnxruntime folds these when a session
    opens anyway; the file does not grow (W goes when nothing else reads it). Returns how many."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    folded = [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    for node in folded:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(
            weight.transpose(perm) if perm else weight.T, node.output[0]))
        graph.node.remove(node)
    still_read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for name in {node.input[0] for node in folded} - still_read:
        graph.initializer.remove(inits[name])
    return len(folded)


def set_metadata(proto, **values: Any) -> None:
    """Record ``values`` in the file's metadata as ``lantern.<key>`` (non-strings as JSON)."""
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key = f"lantern.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
