"""The torch modules that ``torch.onnx.export`` turns into the bundle's two graphs.

*Explain module*: the model (batch-norms folded) returning logits, the explained activation and
the head input for a dynamic batch, plus the all-class gradient of the first image as a traced
fx graph: "the network behind the explained layer, then ``torch.autograd.grad`` of every class
logit", traced by ``make_fx`` into plain aten ops and rewritten into ops ONNX has
(:mod:`engine.making.fx_rewrites`).

*Head module*: the dropout head with every dropout replaced by a multiplication with a mask the
caller passes in, so Monte-Carlo dropout is one deterministic batched call.

Kept apart from the export command (:mod:`engine.making.onnx_export`) because building these
modules is all torch and tracing; the command only exports, verifies and writes them.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.bundle import ModelBundle
from engine.errors import ModelBundleError
from engine.making.fx_rewrites import (
    fold_batch_norms, merge_per_class_convolutions, rewrite_convolution_backward, traceable_attention)

BATCHED_CLASSES = False  # gradient graph: one backward over C copies (True) or vmap over classes


def build_modules(bundle: ModelBundle, reference):
    """(explain module, head module, explained activation's shape on the grid, head input's shape,
    head mask shapes, dropout probabilities) in torch, for the model of ``reference`` (the
    PyTorch engine's TorchBackend: its layers, and its rule for laying tokens out on a grid)."""
    import torch
    from torch import nn
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    from engine.backends.torch_backend import all_class_gradients

    model = fold_batch_norms(copy.deepcopy(reference.model).eval())
    for p in model.parameters():
        p.requires_grad_(False)
    target = model.get_submodule(reference.target_names[0])
    head = model.get_submodule(reference.head_name)
    # The block around the explained layer (the whole model for a top-level one): see tail().
    block = model.get_submodule(reference.target_names[0].rpartition(".")[0])
    channels, (height, width) = bundle.input.channels, bundle.input.size

    def on_grid(activation, gradients):
        # A transformer's tokens go onto the patch grid inside the graph, by the PyTorch engine's
        # own rule (architectures.to_grid), so the ONNX engine gets (B, K, h, w) as from a CNN.
        return reference.on_grid(activation, gradients, (height, width))

    def run(x, replace_target=None, replace_block_input=None):
        """The model on x; returns (logits, explained activation, head input, the block's input).
        With ``replace_target`` the explained layer's output is replaced (its inputs become dead
        code), with ``replace_block_input`` the first input of the block around it."""
        store: dict[str, Any] = {}

        def on_block(_m, inputs):
            store["block"] = inputs[0] if inputs else None
            if replace_block_input is not None and isinstance(store["block"], torch.Tensor):
                return (replace_block_input, *inputs[1:])
            return None

        def on_target(_m, _i, output):
            # Record the explained activation and pass a copy on, as the PyTorch engine does
            # (torch_backend.capture_layers): some models continue with an in-place op
            # (densenet's F.relu(features, inplace=True) right after features.norm5). On the
            # recorded tensor itself it would turn the exported ``activations`` into the ReLU's
            # output (every map then differs from PyTorch's), and autograd refuses it on a leaf.
            store["act"] = output if replace_target is None else replace_target
            return store["act"].clone()

        def on_head(_m, inputs):
            store["head"] = inputs[0]

        handles = [target.register_forward_hook(on_target), head.register_forward_pre_hook(on_head),
                   block.register_forward_pre_hook(on_block)]
        try:
            logits = model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, store["act"], store["head"], store.get("block")

    def tail(x0, b0, a):
        # The network after the explained layer may read more than that layer's output: a
        # transformer block adds its own input back after attention on its first norm. So the
        # tail runs on the image (x0) with the enclosing block's input replaced by the one the
        # main forward computed (b0) and the explained layer's output by ``a``: what precedes
        # the block is then dead code and dropped, the block's residual is the image's, and
        # nothing is computed twice. (Should the tail read an earlier value still, it comes from
        # x0: correct, only slower.)
        def per_class(t):
            return t.expand(a.shape[0], *t.shape[1:]) if isinstance(t, torch.Tensor) else t

        logits, *_ = run(per_class(x0), replace_target=a, replace_block_input=per_class(b0))
        return logits

    n_classes = bundle.num_classes

    def gradient_fn(x0, b0, a):
        if not BATCHED_CLASSES:
            a = a.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = tail(x0, b0, a)
                return all_class_gradients(logits, a)
        # One copy of the activation per class, one backward: copy c only reaches logits[c], so
        # d sum_c logits[c, c] / d copies = every class's gradient, and each backward op runs
        # once on a batch of C (instead of C separate batch-1 ops, which is what vmap over the
        # convolution backward traces to).
        copies = a.detach().expand(n_classes, *a.shape[1:]).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = tail(x0, b0, copies)
            picked = (logits * torch.eye(n_classes, dtype=logits.dtype)).sum()
            (grads,) = torch.autograd.grad(picked, copies)
        return grads.unsqueeze(1)

    x0 = torch.zeros(1, channels, height, width)
    with torch.no_grad():
        _, act0, head0, block0 = run(x0)
        grid_shape = on_grid(act0, act0[None])[0].shape
    if not isinstance(block0, torch.Tensor):
        # The block is never called with a tensor (a ModuleList is iterated, not called): the
        # tail reads the image's own values from x0, through the whole model.
        block = model
        block0 = x0
    # functionalize: vmap fallbacks write per-class results into a buffer in place; ONNX needs
    # the functional form (scatters instead of copy_).
    example = (x0, block0.detach().clone(), act0.detach().clone())
    with traceable_attention():
        traced = make_fx(gradient_fn, decomposition_table=core_aten_decompositions())(*example)
    if any(n.op == "call_function" and str(n.target).endswith("_.default") and "relu" not in str(n.target)
           for n in traced.graph.nodes):
        traced = make_fx(torch.func.functionalize(traced, remove="mutations"),
                         decomposition_table=core_aten_decompositions())(*example)
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(traced).propagate(*example)
    rewrite_convolution_backward(traced)
    merge_per_class_convolutions(traced)
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
            logits, act, head_input, block_input = run(x)
            grads = self.gradients(x[:1], block_input[:1], act[:1])
            act, grads = on_grid(act, grads)
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
    return Explain().eval(), Head().eval(), grid_shape, head0.shape, mask_shapes, probabilities

