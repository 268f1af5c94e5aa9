"""Structure of the explain graph as ONNX: its names, and the surgery export and quantization share.

The exported explain graph computes its ``gradients`` output behind an ONNX ``If`` on the bool
input ``with_gradients`` (:func:`split_gradient_branch`), so a plain forward pays nothing for
them. Quantization works on the flat form (:func:`flatten_gradient_branch`), decides which nodes
belong to the gradient part by the same reachability (:func:`upstream_nodes`), restores the
order of nodes it appended (:func:`toposort`) and splits the graph again. Only ``onnx`` is
needed here, never torch.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from engine.errors import ModelBundleError

# The graphs' input and output names: the ONNX engine (engine/backends/onnx_backend.py) feeds and
# reads these, so they are the file format and never change.
INPUT = "input"  # explain graph
WITH_GRADIENTS = "with_gradients"
OUTPUTS = ("logits", "activations", "head_input", "gradients")
HEAD_INPUT = "head_input"  # head graph (its other inputs are mask0, mask1, ...)


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


def split_gradient_branch(proto, n_classes: int, act_shape: tuple[int, ...]):
    """Move every node that only the ``gradients`` output needs into the then-branch of an
    ``If`` on a new bool input ``with_gradients``; the else-branch returns zeros of the same
    shape. Works on fp32 and QDQ-quantized graphs alike."""
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    main_outputs = [o.name for o in graph.output if o.name != "gradients"]
    main = upstream_nodes(graph, main_outputs)
    grad = upstream_nodes(graph, ["gradients"])
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
