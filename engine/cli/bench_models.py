"""The models ``lantern-engine bench`` measures besides a given bundle: a torchvision architecture
with random weights made into a bundle the way a user makes one (``--arch``), and the plain ORT
INT8 classifier every INT8 engine is compared with.

In a temporary folder (never in the checkout): random (seeded) weights saved as a torchvision
state dict, ``lantern-engine bundle`` (224 x 224, 3 channels, 3 classes, head dropout 0.2), then
``engine.making.onnx_export.export_bundle`` and ``engine.making.quantization.quantize_bundle``.

The INT8 model is validated as always, but with the refusal thresholds opened (random weights
give near-flat maps whose correlation says little about quantization); the validation figures
are reported, with what the default thresholds would have refused. A refused export or
quantization is reported with its reason and the other engines go on.

Also here: the *plain ORT INT8 classifier* the INT8 engine is compared with: the same network
and weights exported by ``torch.onnx.export`` as a plain classifier (input -> logits, nothing
else) and quantized with the static quantization settings Lantern's ``quantize`` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from engine.errors import LanternError

ARCH_SIZE, ARCH_CLASSES, ARCH_CHANNELS, ARCH_DROPOUT = 224, ("class0", "class1", "class2"), 3, 0.2
# One member of every family (the documented set, ``--arch families``).
FAMILIES = ("resnet18", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny",
            "mobilenet_v3_large", "regnet_y_400mf", "vit_b_16", "swin_t")
# Phantom counts for export verification, calibration and INT8 validation: they decide the INT8
# scales and how strongly the result is checked, not the graphs or their speed; kept small so
# that a bench of a large network stays minutes, not tens of minutes.
VERIFY_IMAGES, CALIBRATION_IMAGES, VALIDATION_IMAGES = 4, 32, 8
PLAIN_KIND = ("plain ORT INT8 classifier: the same network and weights exported by torch.onnx.export "
              "as input -> logits only, static QDQ INT8 with Lantern's quantize settings and "
              "calibration phantoms, run with Lantern's session options")


@contextlib.contextmanager
def _quiet():
    """Exporters and onnxruntime's quantizer print progress and advice; the bench prints figures."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def make_arch_bundle(arch: str, folder: Path, seed: int = 0) -> Path:
    """A bundle of ``arch`` with random weights, through ``lantern-engine bundle``."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from engine.cli.commands import bundle_command

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(ARCH_CLASSES))
    weights = folder / f"{arch}-random.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = folder / arch
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        # The command's own function (not its parser, whose module imports this one's caller).
        code = bundle_command(argparse.Namespace(
            arch=arch, weights=weights, classes=",".join(ARCH_CLASSES), out=out, name=f"bench-{arch}",
            version="0.0.0", channels=ARCH_CHANNELS, size=[ARCH_SIZE], resize="letterbox",
            intensity="percentile", normalization=None, dropout=ARCH_DROPOUT, target_layer=None,
            intended_use="Benchmark only (random weights)."))
    if code != 0:
        raise LanternError((said.getvalue().strip().splitlines() or ["lantern-engine bundle failed"])[-1])
    return out


def export_and_quantize(folder: Path) -> tuple[dict, dict]:
    """``export_bundle`` then ``quantize_bundle`` on a bench bundle: (export, quantize) status,
    each ``{"seconds": ...}`` or ``{"refused": reason}``."""
    from engine.making.onnx_export import export_bundle
    from engine.making.quantization import MAX_ACCURACY_DROP, MAX_SIZE_RATIO, MIN_MAP_CORRELATION, quantize_bundle

    start = time.perf_counter()
    try:
        with _quiet():
            export_bundle(folder, verify_images=VERIFY_IMAGES)
    except Exception as exc:  # a refusal (LanternError), or the exporter failing on the model
        return {"refused": failure_reason(exc)}, {"refused": "no fp32 ONNX model to quantize (export refused)"}
    exported = {"seconds": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    try:
        with _quiet():
            bundle = quantize_bundle(folder, calibration_images=CALIBRATION_IMAGES, validation_images=VALIDATION_IMAGES,
                                     max_accuracy_drop=1.0, min_correlation=-1.0, max_size_ratio=1.0)
    except Exception as exc:  # a refusal (LanternError), or the quantizer failing on the graph
        return exported, {"refused": failure_reason(exc)}
    card = bundle.model_card.get("int8_validation", {})
    problems = []
    drop = card.get("accuracy_fp32", 0.0) - card.get("accuracy_int8", 0.0)
    if drop > MAX_ACCURACY_DROP + 1e-9:
        problems.append(f"top-1 accuracy drop {drop:.3f} > {MAX_ACCURACY_DROP}")
    for method, r in card.get("min_map_correlation_with_fp32", {}).items():
        if not r >= MIN_MAP_CORRELATION:
            problems.append(f"{method} map correlation {r:.3f} < {MIN_MAP_CORRELATION}")
    if card.get("size_ratio", 0.0) > MAX_SIZE_RATIO:
        problems.append(f"size {card['size_ratio']:.0%} of fp32 > {MAX_SIZE_RATIO:.0%}")
    validation = {"heldout_phantoms": VALIDATION_IMAGES, "top1_agreement_with_fp32": None,
                  "min_map_correlation_with_fp32": {}, "size_ratio": None}
    validation.update({k: card[k] for k in validation if k in card})
    quantized = {"seconds": round(time.perf_counter() - start, 1), "validation": validation,
                 "default_thresholds_would_refuse": problems}
    return exported, quantized


def plain_int8_classifier(bundle_folder: Path, out: Path) -> Path:
    """The bundle's network as a plain INT8 classifier (input -> logits) at ``out``: what a user
    who only wants a prediction would run. Static QDQ with exactly the settings of
    ``engine.making.quantization.quantize_bytes`` (per-channel symmetric int8 weights, asymmetric
    uint8 activations, MinMax calibration on the same calibration phantoms, the same recipe for
    attention: :func:`_lantern_recipe`); no gradient part, so nothing else is excluded."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from engine.backends.architectures import build_model, load_weights
    from engine.bundle import load_bundle
    from engine.making.export_verification import heldout_inputs
    from engine.making.onnx_export import OPSET
    from engine.making.quantization import CALIBRATION_SEED

    bundle = load_bundle(bundle_folder)
    model = build_model(bundle)
    load_weights(model, bundle)
    model.eval()
    example = torch.zeros(2, bundle.input.channels, *bundle.input.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # As Lantern's export does (dynamo, its opset, one self-contained file), logits only.
        torch.onnx.export(model, (example,), str(Path(tmp) / "plain.onnx"), dynamo=True, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                          external_data=False)
        proto = onnx.load(str(Path(tmp) / "plain.onnx"))
    calibration, _ = heldout_inputs(bundle, CALIBRATION_IMAGES, CALIBRATION_SEED)
    recipe = _lantern_recipe(proto.graph)

    class Reader:
        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"input": image[None]}

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        src = Path(tmp) / "plain.onnx"
        onnx.save(proto, str(src))
        quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, **recipe,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return out


def _lantern_recipe(graph) -> dict:
    """What ``quantize_bytes`` does to a graph besides the fixed settings, as far as this version
    of engine.making has it: fold the transposes of weights (so the quantizer sees them as
    weights), and for a graph with attention quantize only the layers with weights, never the
    products of two activations (``attention_recipe``)."""
    from engine.making import onnx_graph, quantization

    if hasattr(onnx_graph, "fold_weight_transposes"):
        onnx_graph.fold_weight_transposes(graph)
    if hasattr(quantization, "attention_recipe") and any(n.op_type == "Softmax" for n in graph.node):
        for i, node in enumerate(graph.node):
            node.name = node.name or f"node_{i}_{node.op_type}"
        op_types, products = quantization.attention_recipe(graph)
        return {"op_types_to_quantize": op_types, "nodes_to_exclude": products}
    return {}


def plain_classifier_check(bundle_folder: Path, graph: Path, n: int = 4) -> float:
    """Top-1 agreement of the plain INT8 classifier with the bundle's fp32 explain graph (or the
    int8 one when there is no fp32) on ``n`` held-out phantoms: proof it is the same network."""
    from engine.backends.onnx_backend import OnnxSessions, open_session
    from engine.bundle import load_bundle
    from engine.making.export_verification import VERIFY_SEED, heldout_inputs

    bundle = load_bundle(bundle_folder)
    reference = OnnxSessions(bundle.onnx.get("fp32") or bundle.onnx["int8"], None)
    plain = open_session(graph)
    inputs, _ = heldout_inputs(bundle, n, VERIFY_SEED)
    got = plain.run(["logits"], {"input": inputs})[0]
    return float(np.mean(np.argmax(got, axis=1) == np.argmax(reference.forward(inputs), axis=1)))


def failure_reason(exc: Exception) -> str:
    if isinstance(exc, LanternError):
        return exc.reason
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def make_plain(bundle_folder: Path, tmp: Path) -> tuple[Path | None, dict]:
    """The plain ORT INT8 classifier of the bundle's network, made in ``tmp`` and checked against
    the bundle's own graph: (its path, or None, and what to report about it)."""
    start = time.perf_counter()
    try:
        graph = plain_int8_classifier(bundle_folder, tmp / "plain.int8.onnx")
    except Exception as exc:  # torch's exporter and the quantizer raise many types
        return None, {"error": f"could not make it: {failure_reason(exc)}"}
    info = {"seconds_to_make": round(time.perf_counter() - start, 1)}
    try:
        info["top1_agreement_with_bundle_graph"] = plain_classifier_check(bundle_folder, graph)
    except Exception as exc:  # no ONNX graph in the bundle (export refused): nothing to compare with
        info["note"] = f"not compared with the bundle's graph: {failure_reason(exc)}"
    return graph, info
