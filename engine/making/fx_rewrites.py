"""Rewrites of traced torch.fx graphs so that the exporter can turn them into ONNX.

The all-class gradient is traced with ``make_fx`` into plain aten ops, backward included
(:mod:`engine.making.export_modules`). A few of those ops have no ONNX form
(``convolution_backward``, a whole-buffer ``as_strided_scatter``) or trace into many small ops
where one would do (vmap's per-class convolutions): the functions here replace them, in place, by
equivalent ops ONNX has. :func:`fold_batch_norms` simplifies the model itself before tracing.
Design notes: ``docs/onnx-engine.md``.
"""

from __future__ import annotations

import operator
from contextlib import contextmanager

from engine.errors import ModelBundleError


def _shape(gm, node) -> tuple[int, ...]:
    """A traced value's shape (make_fx records it in meta['val'], ShapeProp in meta['tensor_meta'])."""
    if "val" in node.meta:
        return tuple(int(d) for d in node.meta["val"].shape)
    if "tensor_meta" in node.meta:
        return tuple(int(d) for d in node.meta["tensor_meta"].shape)
    if node.op == "get_attr":
        return tuple(getattr(gm, node.target).shape)
    raise ModelBundleError(f"no shape recorded for {node.format_node()}")


def rewrite_convolution_backward(gm) -> None:
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


def merge_per_class_convolutions(gm) -> int:
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


@contextmanager
def traceable_attention():
    """Trace scaled-dot-product attention as its plain math (matmul, softmax, matmul).

    On the CPU, ``F.scaled_dot_product_attention`` dispatches to a fused flash-attention kernel
    whose backward (``_scaled_dot_product_flash_attention_for_cpu_backward``) has no ONNX form
    and no decomposition. Its math version is built from ops whose backward does (bmm, softmax's
    backward, which the core-aten decompositions turn into mul/sum/sub). Same result up to
    float rounding, which export verification measures."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


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
