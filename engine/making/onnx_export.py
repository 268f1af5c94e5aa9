"""``lantern-engine export``: the bundle's model as ONNX graphs that explain without autograd.

Two files go into the bundle (design notes in ``docs/onnx-engine.md``):

``model.onnx`` (the *explain graph*)
    inputs  ``input`` (B, C_in, h, w) float32, dynamic batch; ``with_gradients`` bool scalar
    outputs ``logits`` (B, C), ``activations`` (B, K, h', w') of the explained layer (a
            transformer's tokens laid out on the patch grid, by the PyTorch engine's own rule),
            ``head_input`` (B, F...) the features entering the dropout head, and
            ``gradients`` (C, 1, K, h', w'): d logit_c / d activations of the batch's FIRST
            image for every class c, computed inside the graph.
    The gradient part is an ONNX ``If`` on ``with_gradients``: a plain forward (``False``) runs
    none of it and returns zeros, so one file (one copy of the weights) serves both plain
    batched inference and explanation.

    A multi-input model's graph has one input ``input_<NAME>`` per model input (one batch axis
    for all) and, per input, ``activations_<NAME>`` and ``gradients_<NAME>`` of that input's
    explained layer; ``logits`` and ``head_input`` (the fused features) as above. (Names:
    ``engine.backends.onnx_backend.explain_names``.)

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

Export verifies the written bytes with onnxruntime on held-out phantoms (a multi-input model:
cases of one phantom per input) against the PyTorch engine and refuses (nothing written,
manifest unchanged) when they disagree.

Where the parts live, all in ``engine/making/``: :mod:`~engine.making.export_modules` builds the
torch modules to export, :mod:`~engine.making.fx_rewrites` rewrites the traced gradient into ops
ONNX has, :mod:`~engine.making.onnx_graph` puts the gradients behind the ``If`` (and holds the
graph surgery quantization shares), :mod:`~engine.making.export_verification` compares the result
with PyTorch. This module exports, verifies and writes.
"""

from __future__ import annotations

import io
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.checkpoints import is_checkpoint_folder
from engine.errors import LanternError, ModelBundleError
from engine.files import write_bytes_atomic
from engine.making.export_modules import build_modules
from engine.making.export_verification import LOGIT_TOLERANCE, MAP_CORRELATION, VERIFY_SEED, verify_export
from engine.making.onnx_graph import HEAD_INPUT, LOGITS, explain_names, set_metadata, split_gradient_branch

MODEL_FILE = "model.onnx"
HEAD_FILE = "head.onnx"
OPSET = 18


class ExportRefused(LanternError):
    """The exported graph does not reproduce the PyTorch engine; nothing was written."""


def _export_bytes(module, args, input_names, output_names, dynamic_shapes) -> bytes:
    """torch.onnx.export (dynamo) to one self-contained ONNX file in memory. (Looked up in this
    module on every call: the export tests replace it to reuse already exported graphs.)"""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        quiet = io.StringIO()
        saved = sys.stdout
        sys.stdout = quiet  # the dynamo exporter prints progress lines
        # Its graph passes log a warning for every constant output (a constant gradient: the
        # explained layer feeds a linear head), which is expected here, not a problem to report.
        passes = logging.getLogger("onnx_ir")
        level = passes.level
        passes.setLevel(logging.ERROR)
        try:
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=dynamic_shapes, external_data=False)
        finally:
            sys.stdout = saved
            passes.setLevel(level)
        proto = onnx.load(str(path))
    return proto


def export_bundle(folder: str | Path, *, verify_images: int = 8, seed: int = VERIFY_SEED,
                  logit_tolerance: float = LOGIT_TOLERANCE, map_threshold: float = MAP_CORRELATION,
                  log: Callable[[str], None] = lambda _m: None,
                  _tamper: Callable[[bytes], bytes] | None = None) -> ModelBundle:
    """Export, verify, then write ``model.onnx`` (+ ``head.onnx``) and record them in the manifest.

    ``_tamper`` (tests only) alters the model bytes before verification, to prove that a wrong
    graph is refused."""
    import torch

    from engine.backends.torch_backend import TorchBackend

    if is_checkpoint_folder(folder):
        # The graphs are recorded in a manifest, which a checkpoint folder does not have.
        raise ModelBundleError("ONNX export takes a model bundle, not a Hugging Face or timm checkpoint folder; "
                               "make one first with 'lantern-engine bundle --from FOLDER --out BUNDLE'", Path(folder))
    bundle = load_bundle(folder)
    if bundle.weights is None:
        raise ModelBundleError("export needs the bundle's safetensors weights", bundle.folder)
    reference = TorchBackend(bundle)  # the model exactly as the PyTorch engine runs it
    log("tracing the model and its all-class gradient ...")
    explain, head, grid_shapes, head_shape, mask_shapes, probabilities = build_modules(bundle, reference)
    # A multi-input model's graph has an input and an explained layer per model input, named after
    # it (onnx_backend.explain_names); an ordinary model's keeps the plain names.
    inputs = bundle.input_names if bundle.multi_input else ()
    feeds, _, gradients, outputs = explain_names(inputs)
    specs = [i.spec for i in bundle.inputs] if bundle.multi_input else [bundle.input]
    examples = tuple(torch.zeros(2, spec.channels, *spec.size) for spec in specs)
    batch = torch.export.Dim("batch", min=1, max=4096)  # one batch axis, shared by every input
    log("exporting the explain graph ...")
    try:
        # The explain module's forward takes ``*xs``: the dynamic shapes are keyed by that name.
        proto = _export_bytes(explain, examples, feeds, outputs, {"xs": tuple({0: batch} for _ in examples)})
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; its message names the op
        gist = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:600]
        raise ExportRefused(f"torch.onnx.export could not write the explain graph (an operator without an ONNX "
                            f"form?), nothing was written: {type(exc).__name__}: {gist}", bundle.folder) from exc
    shapes = {name: [bundle.num_classes, 1, *shape[1:]] for name, shape in zip(gradients, grid_shapes)}
    proto = split_gradient_branch(proto, shapes)
    described = "d logits[c] / d activations of image 0, shape (C, 1, K, h, w)"
    multi = {"inputs": list(inputs), "target_layers": list(reference.target_names),
             "branches": bundle.branches} if inputs else {}
    set_metadata(proto, graph="explain", architecture=bundle.architecture, classes=list(bundle.classes),
                 target_layer=reference.target_names[0], outputs=list(outputs),
                 gradients=described + (" for each input's explained layer" if inputs else ""), **multi)
    model_bytes = proto.SerializeToString()
    head_bytes = None
    if mask_shapes:
        log("exporting the MC-dropout head ...")
        n = torch.export.Dim("samples", min=2, max=65536)
        # One image's features (batch 1) against S masks each: the head's layers in front of its
        # first dropout run once and the first mask broadcasts them to S samples (mobilenet_v3's
        # 960 -> 1280 layer ran 20 times over identical rows before).
        feats = torch.zeros(1, *head_shape[1:])
        masks = tuple(torch.ones(2, *s) for s in mask_shapes)
        names = [HEAD_INPUT] + [f"mask{i}" for i in range(len(masks))]
        dyn = {"features": None, "masks": tuple({0: n} for _ in masks)}
        head_proto = _export_bytes(head, (feats, *masks), names, [LOGITS], dyn)
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
