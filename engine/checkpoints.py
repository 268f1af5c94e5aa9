"""Checkpoint folders: a Hugging Face or timm image classifier saved as it is, opened as a bundle.

A folder without ``manifest.json`` but with ``config.json`` (+ ``model.safetensors``) is read
here into the same :class:`ModelBundle` a manifest gives: classes from ``id2label`` (Hugging
Face) or ``label_names`` (timm), input size and preprocessing from ``preprocessor_config.json``
or timm's ``pretrained_cfg``, mapped onto Lantern's own resize and normalisation rules only where
they fit exactly; anything else is refused in words, naming the file and the field. Like
engine.bundle, this never imports torch and never unpickles anything: the model itself is built
by engine/backends/hub_models.py on the PyTorch engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.bundle import CHECKPOINT_PREFIXES, MANIFEST_NAME, HeadSpec, InputSpec, ModelBundle
from engine.errors import ModelBundleError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"
HUGGING_FACE, TIMM = CHECKPOINT_PREFIXES  # prefixes of ModelBundle.architecture for a checkpoint's model
# A checkpoint says nothing about MC dropout: this much is put on the classifier's input (its
# parameters keep their names, as LinearWithDropout does), and the model card says so.
DEFAULT_HEAD_DROPOUT = 0.2
# Images become 0..1 by their display window: for 8-bit and colour images that is exactly the
# division by 255 both libraries do; a 16-bit image or DICOM becomes what its display shows.
INTENSITY = "window"


# What a family is, for finding its layers (engine/backends/hub_models.py) and its input size:
CNN = "cnn"  # feature maps (B, K, h, w); any input size
VIT = "vit"  # class (+ distillation) token, then patch tokens; one square input size (its position embedding)
SWIN = "swin"  # patch tokens merged 2 x 2 per stage; any input size (padded to its windows)


@dataclass(frozen=True)
class HubFamily:
    """A Hugging Face classifier Lantern can explain; layer names are found on the built model."""

    base: str  # the base model's attribute (``model.base_model_prefix``)
    kind: str  # CNN, VIT or SWIN
    map_alignment: str  # see engine.bundle.MAP_ALIGNMENTS


HUGGING_FACE_FAMILIES = {
    "ConvNextForImageClassification": HubFamily("convnext", CNN, "resize"),
    "ConvNextV2ForImageClassification": HubFamily("convnextv2", CNN, "resize"),
    "ResNetForImageClassification": HubFamily("resnet", CNN, "stride"),
    "ViTForImageClassification": HubFamily("vit", VIT, "resize"),
    "DeiTForImageClassification": HubFamily("deit", VIT, "resize"),
    "SwinForImageClassification": HubFamily("swin", SWIN, "resize"),
    "Swinv2ForImageClassification": HubFamily("swinv2", SWIN, "resize"),
}
# Known classifiers Lantern does not open, and why (a plain refusal rather than "unknown").
HUGGING_FACE_REFUSED = {
    "DeiTForImageClassificationWithTeacher": (
        "it has two classifiers (on the class and the distillation token) whose logits it averages, and "
        "Lantern's Monte-Carlo dropout needs one classifier on one feature vector; fine-tune or save it as "
        "DeiTForImageClassification"),
}
# timm models by name prefix (the first match wins). The explained layer and the classifier are
# timm's own (feature_info, pretrained_cfg["classifier"]), except a ViT's (hub_models says why).
TIMM_FAMILIES = {"resnet": (CNN, "stride"), "resnext": (CNN, "stride"), "seresnet": (CNN, "stride"),
                 "wide_resnet": (CNN, "stride"), "efficientnet": (CNN, "stride"), "mobilenet": (CNN, "stride"),
                 "regnet": (CNN, "stride"), "convnext": (CNN, "resize"), "densenet": (CNN, "resize"),
                 "vit_": (VIT, "resize"), "deit_": (VIT, "resize"), "swin_": (SWIN, "resize"),
                 "swinv2_": (SWIN, "resize")}


def timm_family(arch: str) -> tuple[str, str] | None:
    """(kind, map alignment) of a timm architecture name, or None when Lantern does not open it."""
    return next((family for prefix, family in TIMM_FAMILIES.items() if arch.startswith(prefix)), None)


def is_checkpoint_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and not (folder / MANIFEST_NAME).exists() and (folder / CONFIG_NAME).is_file()


def is_checkpoint_bundle(bundle: ModelBundle) -> bool:
    return bundle.architecture.startswith((HUGGING_FACE, TIMM))


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise ModelBundleError(f"{name} is missing from the checkpoint folder", folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelBundleError(f"{name} could not be read as JSON: {exc}", folder) from exc
    if not isinstance(data, dict):
        raise ModelBundleError(f"{name} must hold a JSON object", folder)
    return data


def load_checkpoint_folder(folder: str | Path) -> ModelBundle:
    """The bundle a Hugging Face or timm checkpoint folder describes; every problem is a
    ModelBundleError naming the file and field."""
    folder = Path(folder)
    config = _read_json(folder, CONFIG_NAME)
    if isinstance(config.get("architectures"), list):
        bundle = _hugging_face(config, folder)
    elif isinstance(config.get("architecture"), str):
        bundle = _timm(config, folder)
    else:
        raise ModelBundleError(
            "config.json names no 'architectures' (Hugging Face) or 'architecture' (timm): "
            "this is not an image-classifier checkpoint Lantern can open", folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelBundleError(
            f"the weights file '{WEIGHTS_NAME}' is missing from the checkpoint folder (pickled "
            "pytorch_model.bin files are never loaded; save with safe_serialization=True)", folder)
    return bundle


def _classes(labels: list, where: str, folder: Path) -> tuple[str, ...]:
    if len(labels) < 2 or not all(isinstance(c, str) and c for c in labels) or len(set(labels)) != len(labels):
        raise ModelBundleError(f"{where} must give at least two distinct class names", folder)
    return tuple(labels)


def _hugging_face(config: dict, folder: Path) -> ModelBundle:
    names = config["architectures"]
    arch = names[0] if len(names) == 1 else None
    family = HUGGING_FACE_FAMILIES.get(arch)
    if arch in HUGGING_FACE_REFUSED:
        raise ModelBundleError(f"config.json: Lantern does not open a {arch}: {HUGGING_FACE_REFUSED[arch]}", folder)
    if family is None:
        raise ModelBundleError(
            f"config.json: unknown architecture {', '.join(map(str, names))} (Lantern opens "
            f"{', '.join(HUGGING_FACE_FAMILIES)})", folder)
    id2label = config.get("id2label")
    if not isinstance(id2label, dict):
        raise ModelBundleError("config.json has no 'id2label': the class names are needed", folder)
    try:
        order = sorted(id2label, key=int)
    except ValueError as exc:
        raise ModelBundleError("config.json: 'id2label' keys must be class indices 0, 1, ...", folder) from exc
    if [int(k) for k in order] != list(range(len(order))):
        raise ModelBundleError("config.json: 'id2label' must number the classes 0, 1, ... without gaps", folder)
    classes = _classes([id2label[k] for k in order], "config.json: 'id2label'", folder)
    channels = config.get("num_channels", 3)
    processor = _read_json(folder, PREPROCESSOR_NAME)
    size, resize, crop = _hugging_face_geometry(processor, folder)
    if family.kind == VIT:
        side = config.get("image_size")
        side = tuple(side) if isinstance(side, list) else (side, side)
        if size != side:
            raise ModelBundleError(
                f"preprocessor_config.json: 'size' {size[0]} x {size[1]} differs from config.json's "
                f"'image_size' {side[0]} x {side[1]}, the only size this vision transformer takes", folder)
    mean, std = _hugging_face_normalization(processor, folder)
    spec = _input_spec(channels, size, resize, mean, std, PREPROCESSOR_NAME, folder, crop)
    return _bundle(folder, HUGGING_FACE + arch, classes, spec, family.map_alignment, "Hugging Face",
                   config.get("_name_or_path") or "")


def _hugging_face_geometry(processor: dict, folder: Path) -> tuple[tuple[int, int], str, float]:
    """(input size, Lantern resize rule, crop share) for a processor's resize and centre crop, if
    one fits exactly."""
    where = "preprocessor_config.json"
    if not processor.get("do_resize", True):
        raise ModelBundleError(f"{where}: 'do_resize' is false; Lantern needs the one input size the model takes",
                               folder)
    size = processor.get("size")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict):
        raise ModelBundleError(f"{where}: 'size' is missing or not understood ({size!r})", folder)
    crop = processor.get("crop_size") if processor.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "height" in size and "width" in size:  # resized to exactly this size (ViT): a stretch
        hw = (size["height"], size["width"])
        if crop is not None and (crop.get("height"), crop.get("width")) != hw:
            raise ModelBundleError(f"{where}: 'crop_size' {crop} after 'size' {size} cannot be represented "
                                   "(Lantern stretches, letterboxes or crops to the input size, not both)", folder)
        return hw, "stretch", 1.0
    if set(size) == {"shortest_edge"}:
        edge = size["shortest_edge"]
        if "ConvNext" in str(processor.get("image_processor_type", "")):
            # ConvNeXt's rule: below 384 the shorter side goes to edge / crop_pct and the middle
            # edge x edge is cropped; from 384 up the image is warped to edge x edge.
            if edge >= 384:
                return (edge, edge), "stretch", 1.0
            return (edge, edge), "center_crop", _crop_share(processor.get("crop_pct", 224 / 256), where, folder)
        if crop is not None and crop.get("height") == crop.get("width") and isinstance(crop.get("height"), int):
            # The shorter side goes to `edge`, then the middle crop x crop is kept.
            return (crop["height"], crop["height"]), "center_crop", _crop_share(crop["height"] / edge, where, folder)
        raise ModelBundleError(f"{where}: 'size' {size} with 'crop_size' {crop} cannot be represented (Lantern "
                               "crops the middle of the shorter side to a square)", folder)
    raise ModelBundleError(f"{where}: 'size' {size} cannot be represented", folder)


def _hugging_face_normalization(processor: dict, folder: Path) -> tuple[list[float], list[float]]:
    """Mean and std on 0..1 pixels. Lantern scales to 0..1 first, so a rescale other than 1/255
    (or none) folds into them: (x * r - m) / s == (x / 255 - m / (255 r)) / (s / (255 r))."""
    rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True):
        mean, std = processor.get("image_mean"), processor.get("image_std")
    else:
        mean, std = [0.0], [1.0]
    mean, std = ([v] if isinstance(v, (int, float)) else v for v in (mean, std))
    if not (isinstance(mean, list) and isinstance(std, list) and all(isinstance(v, (int, float)) for v in mean + std)):
        raise ModelBundleError("preprocessor_config.json: 'image_mean' and 'image_std' must be numbers", folder)
    if not isinstance(rescale, (int, float)) or rescale <= 0:
        raise ModelBundleError(f"preprocessor_config.json: 'rescale_factor' {rescale!r} must be positive", folder)
    factor = 255.0 * rescale
    return [m / factor for m in mean], [s / factor for s in std]


def _crop_share(value: Any, where: str, folder: Path) -> float:
    """A checkpoint's crop_pct as Lantern's input crop: the share of the shorter side kept."""
    if not (isinstance(value, (int, float)) and 0.5 <= value <= 1.0):
        raise ModelBundleError(f"{where}: a centre crop keeping {value!r} of the image cannot be represented "
                               "(Lantern keeps between 0.5 and 1.0 of the shorter side)", folder)
    return float(value)


def _input_spec(channels: Any, size: tuple, resize: str, mean: list, std: list, where: str,
                folder: Path, crop: float = 1.0) -> InputSpec:
    if channels not in (1, 3):
        raise ModelBundleError(f"config.json: {channels!r} input channels; Lantern takes 1 or 3", folder)
    if not all(isinstance(s, int) and 16 <= s <= 4096 for s in size):
        raise ModelBundleError(f"{where}: input size {size} must be whole numbers between 16 and 4096", folder)
    if len(mean) != channels and len(set(mean)) == 1 and len(set(std)) == 1:
        mean, std = mean[:1] * channels, std[:1] * channels  # the same for every channel
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise ModelBundleError(f"{where}: {len(mean)} mean / {len(std)} std values (positive) are needed "
                               f"for {channels} input channels", folder)
    return InputSpec(channels, (size[0], size[1]), resize, INTENSITY, tuple(map(float, mean)), tuple(map(float, std)),
                     crop)


def _timm(config: dict, folder: Path) -> ModelBundle:
    arch = config["architecture"]
    family = timm_family(arch)
    if family is None:
        raise ModelBundleError(f"config.json: unknown architecture '{arch}' (Lantern opens timm models whose "
                               f"names start with {', '.join(TIMM_FAMILIES)})", folder)
    alignment = family[1]
    labels = config.get("label_names")
    if not isinstance(labels, list):
        raise ModelBundleError("config.json has no 'label_names': the class names are needed", folder)
    classes = _classes(labels, "config.json: 'label_names'", folder)
    if config.get("num_classes", len(classes)) != len(classes):
        raise ModelBundleError(f"config.json: 'num_classes' is {config.get('num_classes')} but 'label_names' "
                               f"lists {len(classes)}", folder)
    cfg = config.get("pretrained_cfg")
    if not isinstance(cfg, dict):
        raise ModelBundleError("config.json has no 'pretrained_cfg': how images were prepared is unknown", folder)
    input_size = cfg.get("input_size")
    if not (isinstance(input_size, list) and len(input_size) == 3):
        raise ModelBundleError("config.json: 'pretrained_cfg.input_size' must be [channels, height, width]", folder)
    crop_pct, mode = cfg.get("crop_pct", 0.875), cfg.get("crop_mode", "center")
    # timm's centre crop scales the shorter side to size / crop_pct and keeps the middle; squash
    # warps and border pads, which Lantern can follow only when nothing is cropped off.
    resize = {"center": "center_crop", "squash": "stretch", "border": "letterbox"}.get(mode)
    if resize is None or (resize != "center_crop" and crop_pct != 1):
        raise ModelBundleError(f"config.json: 'pretrained_cfg.crop_mode' '{mode}' with crop_pct {crop_pct} "
                               "cannot be represented", folder)
    crop = _crop_share(crop_pct, "config.json: 'pretrained_cfg.crop_pct'", folder)
    mean, std = cfg.get("mean", [0.485, 0.456, 0.406]), cfg.get("std", [0.229, 0.224, 0.225])
    spec = _input_spec(input_size[0], tuple(input_size[1:]), resize, list(mean), list(std),
                       "config.json: 'pretrained_cfg'", folder, crop)
    return _bundle(folder, TIMM + arch, classes, spec, alignment, "timm", cfg.get("hf_hub_id") or "")


def checkpoint_summary(how: str, dropout: float) -> str:
    """The model card's summary of a checkpoint's model: ``how`` it came to Lantern, then what
    Lantern added to it."""
    return (f"{how} Monte-Carlo dropout uses p = {dropout} on the classifier's input, added by Lantern: the "
            "checkpoint says nothing about it. Resizing interpolates as Lantern does (area / bilinear), which may "
            "differ slightly from the library's own.")


def library_name(architecture: str) -> str:
    return "Hugging Face" if architecture.startswith(HUGGING_FACE) else "timm"


def _bundle(folder: Path, architecture: str, classes: tuple[str, ...], spec: InputSpec, alignment: str,
            library: str, origin: str) -> ModelBundle:
    notes = checkpoint_summary(f"Opened from a {library} checkpoint folder as it is (no manifest.json).",
                               DEFAULT_HEAD_DROPOUT)
    return ModelBundle(
        folder=folder,
        name=folder.resolve().name,
        version="checkpoint",
        architecture=architecture,
        classes=classes,
        input=spec,
        head=HeadSpec(None, DEFAULT_HEAD_DROPOUT),
        target_layer=None,  # found on the built model (engine/backends/hub_models.py)
        weights=folder / WEIGHTS_NAME,
        model_card={"summary": notes, **({"source": origin} if origin else {})},
        map_alignment=alignment,
    )
