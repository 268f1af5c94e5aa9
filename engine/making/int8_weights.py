"""How the int8 explain graph stores each weight once, as int8, and still lets its fp32 gradient
part (the backward behind the explained layer) read it, and read it fast.

After QDQ quantization (:mod:`engine.making.quantization`) the main graph reads each weight as
DequantizeLinear(W_q); the gradient part, which stays fp32, reads the same. Two rewrites of the
quantized graph, before it is split into its If again: :func:`reuse_int8_weights_in_gradient`
(a constant Cast instead of a per-call DequantizeLinear for gradient convolutions) and
:func:`unshare_weight_dequantizers` (a DequantizeLinear of its own inside the branch, so
onnxruntime still fuses it into QLinearConv). Only ``onnx`` and numpy.
"""

from __future__ import annotations

import numpy as np

from engine.making.onnx_graph import toposort, value_consumers

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
    DequantizeLinear into QLinearConv when it sits in the same graph as its convolution. Only
    convolutions get one: a twin feeding a MatMul inside the branch makes onnxruntime (1.2x)
    refuse the session (its DQ -> MatMulNBits rewrite looks for the weight in the branch), so a
    transformer's gradient part reads the main graph's dequantized weight instead."""
    from onnx import helper

    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    consumers = value_consumers(graph)
    twins = []
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]:
        users = consumers.get(dq.output[0], [])
        inside = [u for u in users if u.name in gradient_nodes and u.op_type in ("Conv", "ConvTranspose")]
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
