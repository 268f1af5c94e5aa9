"""Model bundles: a folder with ``manifest.json`` and weights (safetensors, ONNX).

Loading validates the manifest and resolves every path inside the bundle folder; it never
imports torch and never unpickles anything. The manifest format is documented in
``docs/model-bundle.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelBundleError
from engine.files import write_json_atomic
from engine.intended_inputs import IntendedInputs, parse_intended_inputs

MANIFEST_NAME = "manifest.json"
SINGLE_INPUT = "image"  # the one input of an ordinary model, where a name is needed
FORMAT_VERSION = 1
# torchvision classifiers Lantern builds (engine/backends/architectures.py: how, by family).
ARCHITECTURES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    "densenet121", "densenet161", "densenet169", "densenet201",
    *(f"efficientnet_b{i}" for i in range(8)), "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *(f"regnet_x_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
    *(f"regnet_y_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")),
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
)
# Where a CNN's feature cell i sits on its input, at stride s: nets whose convolutions are padded
# to keep centres (ResNet, MobileNet, EfficientNet, RegNet) centre cell i on input pixel s*i; nets
# that downsample by unpadded patches (ConvNeXt's stem, DenseNet's transitions, a ViT's or Swin's
# patches) centre it near s*i + (s-1)/2, which is what a plain image resize assumes. Half a cell is
# 16 px at /32: enough to move a map's peak off a small lesion.
MAP_ALIGNMENTS = ("stride", "resize")
# A Hugging Face or timm classifier kept in its own format ('lantern-engine bundle --from'):
# "huggingface:<class name>" or "timm:<model name>", with its config.json beside the manifest
# (engine/checkpoints.py). No default alignment for those: the manifest names its own.
CHECKPOINT_PREFIXES = ("huggingface:", "timm:")
_PATCH_ALIGNED = ("densenet", "convnext_", "vit_", "swin_")
DEFAULT_MAP_ALIGNMENT = {arch: "resize" if arch.startswith(_PATCH_ALIGNED) else "stride" for arch in ARCHITECTURES}
RESIZE_RULES = ("stretch", "letterbox", "center_crop")
DEFAULT_CUTOFF = 0.5
INTENSITY_RULES = ("percentile", "window", "minmax", "unit8")
NORMALIZATIONS = {
    # Name -> (mean, std) per channel; "xray" suits single-channel radiographs scaled to 0..1.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "xray": ((0.5,), (0.25,)),
}


@dataclass(frozen=True)
class InputSpec:
    """How a source image becomes the tensor the model expects."""

    channels: int
    size: tuple[int, int]  # (height, width)
    resize: str = "letterbox"
    intensity: str = "percentile"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    # center_crop only: the share of the scaled image's shorter side the input keeps (a
    # checkpoint's crop_pct: 0.875 scales the shorter side to size / 0.875, then keeps the middle).
    crop: float = 1.0


# A multi-input model's input names: also ONNX input and output names, file-name parts and
# command-line keys (``--input PA=pa.dcm``), so plain identifiers only.
INPUT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
BRANCH_RULES = ("shared", "separate")  # one backbone for every input, or one backbone per input


@dataclass(frozen=True)
class NamedInput:
    """One input of a multi-input model (several images of one case, e.g. PA and lateral)."""

    name: str
    spec: InputSpec
    architecture: str  # the branch's backbone (with shared branches, the same for every input)
    # DICOM View Position values (0018,5101) that identify this input's image, upper case.
    view_positions: tuple[str, ...] = ()
    map_alignment: str = "resize"  # see MAP_ALIGNMENTS: the branch's own backbone decides


@dataclass(frozen=True)
class HeadSpec:
    """The classifier head whose dropout Monte-Carlo uncertainty samples."""

    module: str | None = None  # dotted name; None = the architecture's classifier
    dropout: float = 0.0


@dataclass(frozen=True)
class ModelBundle:
    folder: Path
    name: str
    version: str
    architecture: str
    classes: tuple[str, ...]
    input: InputSpec
    head: HeadSpec
    target_layer: str | None  # None = auto-detect (the last convolutional block)
    weights: Path | None  # safetensors
    onnx: dict[str, Path] = field(default_factory=dict)  # "fp32" / "int8" -> file
    intended_use: str = ""
    model_card: dict[str, Any] = field(default_factory=dict)
    synthetic_demo: bool = False
    map_alignment: str = "resize"  # see MAP_ALIGNMENTS
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    # Temperature scaling fitted on a labelled folder (engine/trust/temperature.py); 1 = none.
    temperature: float = 1.0
    # Per-class probability cut-offs ("operating points"); classes not listed use DEFAULT_CUTOFF.
    cutoffs: dict[str, float] = field(default_factory=dict)
    # A multi-input model's inputs (``input`` is then the first one's); empty for one image.
    inputs: tuple[NamedInput, ...] = ()
    branches: str = "shared"  # see BRANCH_RULES; multi-input only
    intended_inputs: IntendedInputs | None = None  # what the model was made for (None: not declared)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_input(self) -> bool:
        return len(self.inputs) > 1

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs) if self.inputs else (SINGLE_INPUT,)

    def require_single_input(self, what: str) -> None:
        """Refuse, in plain words, work that takes one image at a time on a multi-input model."""
        if self.multi_input:
            raise ModelBundleError(f"{what} takes models of one image; this model takes a case of "
                                   f"{len(self.inputs)} images ({', '.join(self.input_names)}): explain it with "
                                   f"'lantern-engine explain --input NAME=FILE' or in the viewer", self.folder)

    def cutoff(self, class_index: int) -> float:
        """The probability at or above which the model claims this class."""
        return self.cutoffs.get(self.classes[class_index], DEFAULT_CUTOFF)


def _inside(folder: Path, relative: str, what: str) -> Path:
    """Resolve a manifest path, refusing anything that escapes the bundle folder."""
    if not isinstance(relative, str) or not relative:
        raise ModelBundleError(f"{what} must be a file name inside the bundle", folder)
    candidate = (folder / relative).resolve()
    if not candidate.is_relative_to(folder.resolve()):
        raise ModelBundleError(
            f"{what} '{relative}' points outside the bundle folder; refusing to read it", folder
        )
    return candidate


def _require(manifest: dict, key: str, kind: type, folder: Path):
    if key not in manifest:
        raise ModelBundleError(f"manifest.json has no '{key}'", folder)
    value = manifest[key]
    if not isinstance(value, kind):
        raise ModelBundleError(f"manifest.json: '{key}' should be a {kind.__name__}", folder)
    return value


def _input_spec(raw: Any, folder: Path) -> InputSpec:
    if not isinstance(raw, dict):
        raise ModelBundleError("manifest.json: 'input' should be an object", folder)
    channels = raw.get("channels")
    if channels not in (1, 3):
        raise ModelBundleError(f"input channels must be 1 or 3, not {channels!r}", folder)
    size = raw.get("size")
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and 16 <= s <= 4096 for s in size)):
        raise ModelBundleError(f"input size must be [height, width] between 16 and 4096, not {size!r}", folder)
    resize = raw.get("resize", "letterbox")
    if resize not in RESIZE_RULES:
        raise ModelBundleError(f"unknown resize rule '{resize}' (known: {', '.join(RESIZE_RULES)})", folder)
    intensity = raw.get("intensity", "percentile")
    if intensity not in INTENSITY_RULES:
        raise ModelBundleError(f"unknown intensity rule '{intensity}' (known: {', '.join(INTENSITY_RULES)})", folder)
    norm = raw.get("normalization", "xray" if channels == 1 else "imagenet")
    if isinstance(norm, str):
        if norm not in NORMALIZATIONS:
            raise ModelBundleError(f"unknown normalization '{norm}' (known: {', '.join(NORMALIZATIONS)})", folder)
        mean, std = NORMALIZATIONS[norm]
    elif isinstance(norm, dict) and "mean" in norm and "std" in norm:
        mean, std = tuple(map(float, norm["mean"])), tuple(map(float, norm["std"]))
    else:
        raise ModelBundleError("normalization must be a name or {'mean': [...], 'std': [...]}", folder)
    if len(mean) == 1 and channels == 3:
        mean, std = mean * 3, std * 3
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise ModelBundleError(
            f"normalization has {len(mean)} mean / {len(std)} std values for {channels} input channels", folder
        )
    crop = raw.get("crop", 1.0)
    if not (isinstance(crop, (int, float)) and 0.5 <= crop <= 1.0) or (crop != 1.0 and resize != "center_crop"):
        raise ModelBundleError(f"input crop must be between 0.5 and 1.0, and only with center_crop, not {crop!r}",
                               folder)
    return InputSpec(channels, (size[0], size[1]), resize, intensity, tuple(mean), tuple(std), float(crop))


def parse_manifest(manifest: dict, folder: Path) -> ModelBundle:
    """Validate a manifest dictionary; every problem is a ModelBundleError in plain words."""
    folder = Path(folder)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelBundleError(
            f"manifest format_version is {version!r}; this Lantern reads version {FORMAT_VERSION}", folder
        )
    name = _require(manifest, "name", str, folder)
    model_version = str(manifest.get("version", "0"))
    arch = _require(manifest, "architecture", str, folder)
    checkpoint = arch.startswith(CHECKPOINT_PREFIXES) and bool(arch.partition(":")[2])
    if checkpoint and "map_alignment" not in manifest:
        raise ModelBundleError(f"manifest.json: '{arch}' needs a 'map_alignment' ('bundle --from' writes it)", folder)
    if arch not in ARCHITECTURES and not checkpoint:
        raise ModelBundleError(
            f"unknown architecture '{arch}' (supported: {', '.join(ARCHITECTURES)})", folder
        )
    classes = _require(manifest, "classes", list, folder)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ModelBundleError("'classes' must list at least two distinct class names", folder)
    head_raw = manifest.get("head", {}) or {}
    dropout = float(head_raw.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ModelBundleError(f"head dropout must be in [0, 1), not {dropout}", folder)
    head = HeadSpec(head_raw.get("module"), dropout)
    weights = manifest.get("weights")
    weights_path = _inside(folder, weights, "weights") if weights else None
    if weights_path is not None and weights_path.suffix != ".safetensors":
        raise ModelBundleError(
            "weights must be a .safetensors file (pickled checkpoints are never loaded; "
            "convert with 'lantern-engine bundle')",
            folder,
        )
    alignment = manifest["map_alignment"] if checkpoint else manifest.get("map_alignment", DEFAULT_MAP_ALIGNMENT[arch])
    if alignment not in MAP_ALIGNMENTS:
        raise ModelBundleError(f"map_alignment must be one of {', '.join(MAP_ALIGNMENTS)}", folder)
    onnx = {k: _inside(folder, v, f"onnx model '{k}'") for k, v in (manifest.get("onnx") or {}).items()}
    if weights_path is None and not onnx:
        raise ModelBundleError("the bundle names no weights and no ONNX model", folder)
    temperature = _temperature(manifest.get("calibration"), folder)
    cutoffs = _cutoffs(manifest.get("cutoffs"), classes, folder)
    inputs, branches = _inputs(manifest, arch, folder)
    return ModelBundle(
        folder=folder,
        name=name,
        version=model_version,
        architecture=arch,
        classes=tuple(classes),
        input=inputs[0].spec if inputs else _input_spec(manifest.get("input"), folder),
        head=head,
        target_layer=manifest.get("target_layer"),
        weights=weights_path,
        onnx=onnx,
        intended_use=str(manifest.get("intended_use", "")),
        model_card=dict(manifest.get("model_card") or {}),
        synthetic_demo=bool(manifest.get("synthetic_demo", False)),
        map_alignment=alignment,
        manifest=manifest,
        temperature=temperature,
        cutoffs=cutoffs,
        inputs=inputs,
        branches=branches,
        intended_inputs=parse_intended_inputs(manifest.get("intended_inputs"), folder),
    )


def _inputs(manifest: dict, arch: str, folder: Path) -> tuple[tuple[NamedInput, ...], str]:
    """A multi-input model's ``inputs`` and ``branches``, checked as strictly as ``input``."""
    raw = manifest.get("inputs")
    if raw is None:
        if "branches" in manifest:
            raise ModelBundleError("manifest.json: 'branches' is only for a model with several 'inputs'", folder)
        return (), "shared"
    if "input" in manifest:
        raise ModelBundleError("manifest.json has both 'input' and 'inputs'; a model has one or the other", folder)
    if not (isinstance(raw, list) and 2 <= len(raw) <= 8 and all(isinstance(r, dict) for r in raw)):
        raise ModelBundleError("manifest.json: 'inputs' must list 2 to 8 input objects", folder)
    branches = manifest.get("branches", "shared")
    if branches not in BRANCH_RULES:
        raise ModelBundleError(f"manifest.json: 'branches' must be one of {', '.join(BRANCH_RULES)}", folder)
    inputs = []
    for n, entry in enumerate(raw, 1):
        name = entry.get("name")
        if not (isinstance(name, str) and INPUT_NAME.fullmatch(name)):
            raise ModelBundleError(f"manifest.json: input {n} needs a 'name' of letters, digits and '_' "
                                   f"(starting with a letter, at most 32), not {name!r}", folder)
        branch_arch = entry.get("architecture", arch)
        if branch_arch not in ARCHITECTURES:
            raise ModelBundleError(f"manifest.json: input '{name}' names an unknown or unsupported backbone "
                                   f"'{branch_arch}'", folder)
        views = entry.get("view_positions", [])
        if not (isinstance(views, list) and all(isinstance(v, str) and v.strip() for v in views)):
            raise ModelBundleError(f"manifest.json: input '{name}': 'view_positions' must list DICOM View "
                                   f"Position values such as PA, AP, LL", folder)
        alignment = entry.get("map_alignment", manifest.get("map_alignment", DEFAULT_MAP_ALIGNMENT[branch_arch]))
        if alignment not in MAP_ALIGNMENTS:
            raise ModelBundleError(f"manifest.json: input '{name}': map_alignment must be one of "
                                   f"{', '.join(MAP_ALIGNMENTS)}", folder)
        spec = {k: v for k, v in entry.items() if k not in ("name", "architecture", "view_positions", "map_alignment")}
        try:
            parsed = _input_spec(spec, folder)
        except ModelBundleError as exc:
            raise ModelBundleError(f"input '{name}': {exc.reason}", folder) from exc
        inputs.append(NamedInput(name, parsed, branch_arch, tuple(v.strip().upper() for v in views), alignment))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise ModelBundleError("manifest.json: input names must differ from one another", folder)
    if branches == "shared":
        first = inputs[0]
        if any(i.architecture != first.architecture or i.spec.channels != first.spec.channels for i in inputs):
            raise ModelBundleError("shared branches are one backbone, so every input needs the same architecture "
                                   "and channels; use \"branches\": \"separate\" otherwise", folder)
    return tuple(inputs), branches


def _temperature(calibration: Any, folder: Path) -> float:
    if calibration is None:
        return 1.0
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 100.0:
        raise ModelBundleError("manifest.json: 'calibration' needs a 'temperature' between 0.01 and 100", folder)
    return float(value)


def _cutoffs(raw: Any, classes: list, folder: Path) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ModelBundleError("manifest.json: 'cutoffs' should map class names to probabilities", folder)
    for name, value in raw.items():
        if name not in classes:
            raise ModelBundleError(f"manifest.json: 'cutoffs' names '{name}', which is not one of the classes", folder)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ModelBundleError(f"manifest.json: the cut-off of '{name}' must be a probability in 0..1", folder)
    return {name: float(value) for name, value in raw.items()}


def load_bundle(folder: str | Path) -> ModelBundle:
    folder = Path(folder)
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelBundleError("this folder is not a model bundle (no manifest.json)", folder)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelBundleError(f"manifest.json could not be read: {exc}", folder) from exc
    if not isinstance(manifest, dict):
        raise ModelBundleError("manifest.json must hold a JSON object", folder)
    bundle = parse_manifest(manifest, folder)
    ood = (manifest.get("ood") or {}).get("file") if isinstance(manifest.get("ood"), dict) else None
    ood_file = _inside(folder, ood, "the out-of-distribution statistics") if ood else None
    for label, file in [("weights", bundle.weights), *bundle.onnx.items(), ("out-of-distribution statistics", ood_file)]:
        if file is not None and not file.is_file():
            raise ModelBundleError(f"{label} file '{file.name}' is missing from the bundle", folder)
    return bundle


def update_manifest(bundle: ModelBundle, **changes: Any) -> ModelBundle:
    """Rewrite the bundle's manifest with some keys changed and return the re-validated bundle."""
    manifest = {**bundle.manifest, **changes}
    parse_manifest(manifest, bundle.folder)
    write_json_atomic(bundle.folder / MANIFEST_NAME, manifest)
    return load_bundle(bundle.folder)
