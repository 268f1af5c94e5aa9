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

from engine.bundle import ARCHITECTURES as BUNDLE_ARCHITECTURES
from engine.bundle import ModelBundle
from engine.errors import ModelBundleError


class LinearWithDropout(nn.Linear):
    """nn.Linear with dropout on its input; same parameters (weight, bias) as nn.Linear."""

    def __init__(self, in_features: int, out_features: int, p: float):
        super().__init__(in_features, out_features)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(x))


# How the explained layer lays out its features, when not as (B, K, h, w) like a CNN's:
CLASS_TOKEN = "class_token"  # ViT: (B, n + h*w, K), n class/distillation/register tokens, then patches row by row
CHANNELS_LAST = "channels_last"  # Swin (torchvision, timm): (B, h, w, K)
PATCH_TOKENS = "patch_tokens"  # Swin (Hugging Face): (B, h*w, K), patches row by row, merged 2 x 2 per stage


@dataclass(frozen=True)
class ArchitectureInfo:
    first_conv: str  # replaced when the bundle wants 1-channel input (a ViT's patch projection)
    final_linear: str  # gets the bundle's dropout
    head: str  # the module whose input is the pooled feature vector (MC dropout runs it)
    target_layer: str  # default layer to explain: the last block whose every position feeds the head
    tokens: str | None = None  # CLASS_TOKEN, CHANNELS_LAST or PATCH_TOKENS: made a grid before any CAM rule


def _vit(depth: int) -> ArchitectureInfo:
    # The last block's first norm, not its output: of the output only the class token reaches the
    # head, so its patch tokens get no gradient; the last block's attention still reads them all.
    return ArchitectureInfo("conv_proj", "heads.head", "heads", f"encoder.layers.encoder_layer_{depth - 1}.ln_1",
                            CLASS_TOKEN)


# One rule per family, by name prefix (the names themselves are engine.bundle.ARCHITECTURES, which
# loading checks without torch). The first matching prefix wins.
FAMILY_RULES: tuple[tuple[tuple[str, ...], ArchitectureInfo], ...] = (
    (("resnet", "resnext", "wide_resnet"), ArchitectureInfo("conv1", "fc", "fc", "layer4")),
    (("densenet",), ArchitectureInfo("features.conv0", "classifier", "classifier", "features.norm5")),
    (("efficientnet_",), ArchitectureInfo("features.0.0", "classifier.1", "classifier", "features")),  # v1 and v2
    (("convnext_",), ArchitectureInfo("features.0.0", "classifier.2", "classifier", "features")),
    (("mobilenet_v2",), ArchitectureInfo("features.0.0", "classifier.1", "classifier", "features")),
    (("mobilenet_v3_",), ArchitectureInfo("features.0.0", "classifier.3", "classifier", "features")),
    (("regnet_",), ArchitectureInfo("stem.0", "fc", "fc", "trunk_output")),
    (("vit_b_",), _vit(12)),
    (("vit_l_",), _vit(24)),
    (("vit_h_",), _vit(32)),
    (("swin_",), ArchitectureInfo("features.0.0", "head", "head", "features", CHANNELS_LAST)),  # v1 and v2
)


def _family_rule(name: str) -> ArchitectureInfo:
    for prefixes, info in FAMILY_RULES:
        if name.startswith(prefixes):
            return info
    raise KeyError(f"no family rule for architecture '{name}'")


ARCHITECTURES: dict[str, ArchitectureInfo] = {name: _family_rule(name) for name in BUNDLE_ARCHITECTURES}


def merged_grid(patches: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The grid of ``tokens`` patch tokens after Swin's patch merging: the patch grid halved
    (rounding up: a stage pads an odd side) until it has that many cells."""
    h, w = patches
    while h * w > tokens and (h, w) != (1, 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise ModelBundleError(f"{tokens} tokens do not lie on the {patches[0]} x {patches[1]} patch grid "
                               "or a merged (halved) one")
    return h, w


def to_grid(activation: torch.Tensor, gradients: torch.Tensor, tokens: str | None,
            grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The explained layer's activation (B, ...) and all-class gradients (C, B, ...) laid out as
    (B, K, h, w) and (C, B, K, h, w), the layout every CAM rule and map warp expects. ``grid``:
    (h, w) of the model's patch layout (input size over the patch projection's stride).

    The one place tokens become a grid: the PyTorch engine calls it after its backward, and the
    ONNX export puts the same call into the explain graph. A ViT's class token (and any
    distillation or register token before the patches) is dropped: it sits nowhere on the image.
    A layer already on a grid (a ViT's patch convolution) passes unchanged."""
    if tokens == CHANNELS_LAST:
        return activation.movedim(-1, -3), gradients.movedim(-1, -3)
    if tokens == CLASS_TOKEN and activation.dim() == 3:
        first_patch = activation.shape[1] - grid[0] * grid[1]
        return tuple(t[..., first_patch:, :].unflatten(-2, grid).movedim(-1, -3) for t in (activation, gradients))
    if tokens == PATCH_TOKENS and activation.dim() == 3:
        cells = merged_grid(grid, activation.shape[1])
        return tuple(t.unflatten(-2, cells).movedim(-1, -3) for t in (activation, gradients))
    return activation, gradients


def _set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def build_model(bundle: ModelBundle) -> nn.Module:
    """An untrained torchvision model shaped as the bundle says (weights loaded separately)."""
    info = ARCHITECTURES[bundle.architecture]
    options = {}
    if info.tokens == CLASS_TOKEN:
        # A ViT's position embedding is sized for one square input; every other family pools.
        height, width = bundle.input.size
        patch = int(bundle.architecture.rsplit("_", 1)[1])
        if height != width or height % patch:
            raise ModelBundleError(f"a {bundle.architecture} takes a square input whose side is a multiple of "
                                   f"{patch}, not {height} x {width}", bundle.folder)
        options["image_size"] = height
    model = torchvision.models.get_model(bundle.architecture, weights=None, num_classes=bundle.num_classes,
                                         **options)
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


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, read into memory and deserialized (no pickle).

    Not safetensors.torch.load_file: its memory-mapped loading calls back into torch from Rust,
    and twice in one day it deadlocked on a viewer worker thread (that thread waiting on a futex
    inside UntypedStorage.__getitem__ while holding the GIL, the GUI thread waiting for the GIL).
    Reading the bytes first has no such callbacks; a bundle's weights fit in memory anyway."""
    from safetensors.torch import load

    with open(path, "rb") as f:
        return load(f.read())


def load_weights(model: nn.Module, bundle: ModelBundle) -> None:
    """Load safetensors weights (no pickle), explaining mismatches in plain words."""
    from safetensors import SafetensorError

    try:
        state = read_safetensors(bundle.weights)
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
