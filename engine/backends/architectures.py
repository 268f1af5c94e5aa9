"""torchvision classifiers as Lantern builds them: input channels, classes, and a dropout head.

State-dict keys stay those of plain torchvision models, so a user's own fine-tuned weights load
as they are: dropout is added inside the final linear layer (``LinearWithDropout``) instead of
wrapping it in a new Sequential that would rename its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from engine.bundle import ModelBundle
from engine.errors import ModelBundleError


class LinearWithDropout(nn.Linear):
    """nn.Linear with dropout on its input; same parameters (weight, bias) as nn.Linear."""

    def __init__(self, in_features: int, out_features: int, p: float):
        super().__init__(in_features, out_features)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(x))


@dataclass(frozen=True)
class ArchitectureInfo:
    first_conv: str  # replaced when the bundle wants 1-channel input
    final_linear: str  # gets the bundle's dropout
    head: str  # the module whose input is the pooled feature vector (MC dropout runs it)
    target_layer: str  # default layer to explain: the last convolutional block


ARCHITECTURES = {
    "resnet18": ArchitectureInfo("conv1", "fc", "fc", "layer4"),
    "resnet50": ArchitectureInfo("conv1", "fc", "fc", "layer4"),
    "densenet121": ArchitectureInfo("features.conv0", "classifier", "classifier", "features.norm5"),
    "efficientnet_b0": ArchitectureInfo("features.0.0", "classifier.1", "classifier", "features"),
    "convnext_tiny": ArchitectureInfo("features.0.0", "classifier.2", "classifier", "features"),
    "mobilenet_v3_large": ArchitectureInfo("features.0.0", "classifier.3", "classifier", "features"),
}


def _set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def build_model(bundle: ModelBundle) -> nn.Module:
    """An untrained torchvision model shaped as the bundle says (weights loaded separately)."""
    info = ARCHITECTURES[bundle.architecture]
    model = torchvision.models.get_model(bundle.architecture, weights=None, num_classes=bundle.num_classes)
    if bundle.input.channels != 3:
        old = model.get_submodule(info.first_conv)
        _set_submodule(model, info.first_conv, nn.Conv2d(
            bundle.input.channels, old.out_channels, old.kernel_size, old.stride, old.padding,
            old.dilation, old.groups, old.bias is not None))
    linear = model.get_submodule(info.final_linear)
    head = LinearWithDropout(linear.in_features, linear.out_features, bundle.head.dropout)
    _set_submodule(model, info.final_linear, head)
    # Torchvision's own dropouts in the classifier (efficientnet, mobilenet) follow the bundle too,
    # so the manifest is the single statement of the head's dropout.
    for module in model.get_submodule(info.head).modules():
        if isinstance(module, nn.Dropout):
            module.p = bundle.head.dropout
    return model


def head_module_name(bundle: ModelBundle) -> str:
    return bundle.head.module or ARCHITECTURES[bundle.architecture].head


def target_layer_name(bundle: ModelBundle) -> str:
    return bundle.target_layer or ARCHITECTURES[bundle.architecture].target_layer


def load_weights(model: nn.Module, bundle: ModelBundle) -> None:
    """Load safetensors weights (no pickle), explaining mismatches in plain words."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(bundle.weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelBundleError(f"the weights file could not be read as safetensors: {exc}", bundle.folder) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelBundleError(
            f"the weights do not fit a {bundle.architecture}: parameters " + "; ".join(detail), bundle.folder)
    head_weight = state.get(ARCHITECTURES[bundle.architecture].final_linear + ".weight")
    if head_weight is not None and head_weight.shape[0] != bundle.num_classes:
        raise ModelBundleError(
            f"the manifest lists {bundle.num_classes} classes; the weights have {head_weight.shape[0]}",
            bundle.folder)
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelBundleError(
                f"weight '{key}' has shape {tuple(tensor.shape)} but a {bundle.architecture} with this "
                f"manifest needs {tuple(expected[key].shape)} (check input channels and size)", bundle.folder)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
