"""The torch modules that ``torch.onnx.export`` turns into the bundle's two graphs.

*Explain module*: the model (batch-norms folded) returning logits, the explained activation and
the head input for a dynamic batch, plus the all-class gradient of the first image as a traced
fx graph: "the network behind the explained layer, then ``torch.autograd.grad`` of every class
logit", traced by ``make_fx`` into plain aten ops and rewritten into ops ONNX has
(:mod:`engine.making.fx_rewrites`). A multi-input model's takes one batch per input and has one
explained layer per input (shared branches: the same layer, run once per input, each run's
output a leaf of its own), all differentiated in the one traced gradient.

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
from engine.making.token_tails import class_token_tails
from engine.making.fx_rewrites import (
    fold_batch_norms, merge_per_class_convolutions, rewrite_convolution_backward, traceable_attention)

BATCHED_CLASSES = False  # gradient graph: one backward over C copies (True) or vmap over classes


def _fold(model, bundle: ModelBundle):
    """Batch norms folded into their convolutions (fx_rewrites.fold_batch_norms); a multi-input
    model's branch by branch (fx cannot trace its varargs forward as a whole)."""
    if not bundle.multi_input:
        return fold_batch_norms(model)
    for branch in ([model.backbone] if bundle.branches == "shared" else list(model.branches.values())):
        fold_batch_norms(branch)
    return model


def build_modules(bundle: ModelBundle, reference):
    """(explain module, head module, explained activations' shapes on the grid (one per model
    input), head input's shape, head mask shapes, dropout probabilities) in torch, for the model
    of ``reference`` (the PyTorch engine's TorchBackend: its layers, and its rule for laying tokens
    out on a grid). The explain module takes one batch per model input and returns logits, every
    input's activations, the head input, then every input's all-class gradients."""
    import torch
    from torch import nn
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    from engine.backends.torch_backend import all_class_gradients

    model = _fold(copy.deepcopy(reference.model).eval(), bundle)
    for p in model.parameters():
        p.requires_grad_(False)
    # One explained layer per model input, in input order (shared branches: one module run once
    # per input; its k-th call is input k's, as torch_backend.capture_layers has it).
    names = reference.target_names
    targets = list(dict.fromkeys(model.get_submodule(n) for n in names))
    head = model.get_submodule(reference.head_name)
    # The blocks around the explained layers (the whole model for a top-level one): see tail().
    blocks = list(dict.fromkeys(model.get_submodule(n.rpartition(".")[0]) for n in names))
    specs = [i.spec for i in bundle.inputs] if bundle.multi_input else [bundle.input]
    n_inputs = len(specs)

    def on_grid(k, activation, gradients):
        # A transformer's tokens go onto the patch grid inside the graph, by the PyTorch engine's
        # own rule (architectures.to_grid), so the ONNX engine gets (B, K, h, w) as from a CNN.
        return reference.on_grid(activation, gradients, specs[k].size, k)

    def run(xs, replace_targets=None, replace_block_inputs=None):
        """The model on the inputs xs; returns (logits, explained activations, head input, the
        blocks' inputs), one activation and block input per model input. With ``replace_targets``
        the explained layers' outputs are replaced (their inputs become dead code), with
        ``replace_block_inputs`` the first inputs of the blocks around them."""
        store: dict[str, Any] = {"acts": [], "blocks": []}

        def on_block(_m, inputs):
            k = len(store["blocks"])
            store["blocks"].append(inputs[0] if inputs else None)
            if replace_block_inputs is not None and isinstance(store["blocks"][k], torch.Tensor):
                return (replace_block_inputs[k], *inputs[1:])
            return None

        def on_target(_m, _i, output):
            # Record the explained activation and pass a copy on, as the PyTorch engine does
            # (torch_backend.capture_layers): some models continue with an in-place op
            # (densenet's F.relu(features, inplace=True) right after features.norm5). On the
            # recorded tensor itself it would turn the exported ``activations`` into the ReLU's
            # output (every map then differs from PyTorch's), and autograd refuses it on a leaf.
            k = len(store["acts"])
            store["acts"].append(output if replace_targets is None else replace_targets[k])
            return store["acts"][k].clone()

        def on_head(_m, inputs):
            store["head"] = inputs[0]

        handles = [t.register_forward_hook(on_target) for t in targets]
        handles += [b.register_forward_pre_hook(on_block) for b in blocks]
        handles.append(head.register_forward_pre_hook(on_head))
        try:
            logits = model(*xs)
        finally:
            for h in handles:
                h.remove()
        return logits, store["acts"], store["head"], store["blocks"]

    def tail(xs0, bs0, acts):
        # The network after the explained layer may read more than that layer's output: a
        # transformer block adds its own input back after attention on its first norm. So the
        # tail runs on the image (x0) with the enclosing block's input replaced by the one the
        # main forward computed (b0) and the explained layer's output by ``a``: what precedes
        # the block is then dead code and dropped, the block's residual is the image's, and
        # nothing is computed twice. (Should the tail read an earlier value still, it comes from
        # x0: correct, only slower.) A multi-input model does this for every input at once.
        def per_class(t):
            return t.expand(acts[0].shape[0], *t.shape[1:]) if isinstance(t, torch.Tensor) else t

        # A torchvision ViT's last block runs for the class token alone here (token_tails.py).
        with class_token_tails(model, blocks):
            logits, *_ = run([per_class(x) for x in xs0], replace_targets=acts,
                             replace_block_inputs=[per_class(b) for b in bs0])
        return logits

    n_classes = bundle.num_classes

    def gradient_fn(*args):
        # args: each input's first image, each block's input, each explained activation.
        xs0, bs0, acts = args[:n_inputs], args[n_inputs : 2 * n_inputs], args[2 * n_inputs :]
        if not BATCHED_CLASSES:
            leaves = tuple(a.detach().requires_grad_(True) for a in acts)
            with torch.enable_grad():
                logits = tail(xs0, bs0, leaves)
                return all_class_gradients(logits, leaves)
        # One copy of each activation per class, one backward: copy c only reaches logits[c], so
        # d sum_c logits[c, c] / d copies = every class's gradient, and each backward op runs
        # once on a batch of C (instead of C separate batch-1 ops, which is what vmap over the
        # convolution backward traces to).
        copies = tuple(a.detach().expand(n_classes, *a.shape[1:]).clone().requires_grad_(True) for a in acts)
        with torch.enable_grad():
            logits = tail(xs0, bs0, copies)
            picked = (logits * torch.eye(n_classes, dtype=logits.dtype)).sum()
            grads = torch.autograd.grad(picked, copies)
        return tuple(g.unsqueeze(1) for g in grads)

    x0 = [torch.zeros(1, spec.channels, *spec.size) for spec in specs]
    with torch.no_grad():
        _, acts0, head0, blocks0 = run(x0)
        grid_shapes = [on_grid(k, a, a[None])[0].shape for k, a in enumerate(acts0)]
    if len(blocks0) != n_inputs or not all(isinstance(b, torch.Tensor) for b in blocks0):
        if bundle.multi_input:
            raise ModelBundleError(f"the block around the explained layer '{names[0]}' is not called with a "
                                   f"tensor once per input; a multi-input model cannot be exported with it",
                                   bundle.folder)
        # The block is never called (a ModuleList is iterated, not called), or not with a tensor:
        # the tail reads the image's own values from x0, through the whole model.
        blocks = [model]
        blocks0 = x0
    # functionalize: vmap fallbacks write per-class results into a buffer in place; ONNX needs
    # the functional form (scatters instead of copy_).
    example = (*x0, *(b.detach().clone() for b in blocks0), *(a.detach().clone() for a in acts0))
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

        def forward(self, *xs):
            logits, acts, head_input, block_inputs = run(xs)
            grads = self.gradients(*(x[:1] for x in xs), *(b[:1] for b in block_inputs), *(a[:1] for a in acts))
            laid = [on_grid(k, a, g) for k, (a, g) in enumerate(zip(acts, grads))]
            # In the order of onnx_backend.explain_names: logits, activations, head input, gradients.
            return logits, *(a for a, _ in laid), head_input, *(g for _, g in laid)

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
    return Explain().eval(), Head().eval(), grid_shapes, head0.shape, mask_shapes, probabilities

