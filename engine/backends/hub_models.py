"""Hugging Face and timm classifiers from a checkpoint folder, shaped as the PyTorch engine runs
torchvision ones: a module whose output is the logits, a layer to explain, and a head whose
input is the pooled feature vector, with dropout on it for MC uncertainty.

Nothing is downloaded (the folder is read with ``local_files_only`` and the libraries are told
they are offline before they are first imported) and nothing is unpickled (safetensors only).
transformers and timm are imported here, on first use: the ONNX path never needs them.
"""

from __future__ import annotations

import json
import os

from torch import nn

from engine.backends.architectures import (
    CHANNELS_LAST, CLASS_TOKEN, PATCH_TOKENS, ArchitectureInfo, LinearWithDropout, read_safetensors)
from engine.bundle import ModelBundle
from engine.checkpoints import CNN, HUGGING_FACE, HUGGING_FACE_FAMILIES, SWIN, TIMM, VIT, timm_family
from engine.errors import EngineUnavailableError, ModelBundleError

_INSTALL_HINT = "install Lantern's 'hub' extra (pip install 'lantern[hub]')"


def _offline() -> None:
    # Read by huggingface_hub when it is first imported: no call home, no telemetry, whatever
    # a caller forgets to pass.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")


def open_checkpoint_model(bundle: ModelBundle) -> nn.Module:
    """The checkpoint's model with its weights, float32, dropout on the classifier's input."""
    _offline()
    if bundle.architecture.startswith(HUGGING_FACE):
        model = _hugging_face_model(bundle)
    else:
        model = _timm_model(bundle)
    info = checkpoint_layers(bundle, model)
    final = model.get_submodule(info.final_linear)
    if not isinstance(final, nn.Linear):
        raise ModelBundleError(f"the classifier '{info.final_linear}' is not a linear layer; Lantern cannot put "
                               "MC dropout on it", bundle.folder)
    if final.out_features != bundle.num_classes:
        raise ModelBundleError(f"the labels list {bundle.num_classes} classes; the classifier has "
                               f"{final.out_features}", bundle.folder)
    head = LinearWithDropout(final.in_features, final.out_features, bundle.head.dropout)
    head.weight, head.bias = final.weight, final.bias  # the same parameters under the same names
    model.set_submodule(info.final_linear, head)
    return model.float().eval()


def checkpoint_layers(bundle: ModelBundle, model: nn.Module) -> ArchitectureInfo:
    """The layers the engine uses, found by name on the built model (names differ between
    library versions, e.g. transformers' ``vit.encoder.layer.N`` became ``vit.layers.N``)."""
    names = [name for name, _ in model.named_modules()]
    if bundle.architecture.startswith(TIMM):
        kind, classifier = _timm_kind(bundle), _timm_classifier(bundle, model)
        if kind == VIT:
            # The last block's first norm, as for torchvision's ViT (architectures._vit says why).
            target = [n for n in names if n.startswith("blocks.") and n.endswith(".norm1")][-1]
            return ArchitectureInfo("patch_embed.proj", classifier, classifier, target, CLASS_TOKEN)
        target = model.feature_info[-1]["module"]
        if kind == SWIN:  # its stages give (B, h, w, K)
            return ArchitectureInfo("patch_embed.proj", classifier, classifier, target, CHANNELS_LAST)
        return ArchitectureInfo("", classifier, classifier, target)
    family = HUGGING_FACE_FAMILIES.get(bundle.architecture.removeprefix(HUGGING_FACE))
    if family is None:
        raise ModelBundleError(f"unknown Hugging Face architecture '{bundle.architecture.removeprefix(HUGGING_FACE)}' "
                               f"(Lantern opens {', '.join(HUGGING_FACE_FAMILIES)})", bundle.folder)
    final = [n for n in names if n.startswith("classifier") and isinstance(model.get_submodule(n), nn.Linear)]
    if family.kind == CNN:
        stages = f"{family.base}.encoder.stages"
        return ArchitectureInfo("", final[-1], "classifier", f"{stages}.{len(model.get_submodule(stages)) - 1}")
    patches = [n for n in names if n.endswith("patch_embeddings.projection")][0]
    if family.kind == SWIN:
        # The final norm: its tokens all reach the pooled head (the stages' blocks return tuples,
        # which a hook cannot hand on).
        return ArchitectureInfo(patches, final[-1], "classifier", f"{family.base}.layernorm", PATCH_TOKENS)
    # A ViT or DeiT: the last block's first norm, as for torchvision's ViT (architectures._vit says why).
    target = [n for n in names if n.endswith("layernorm_before")][-1]
    return ArchitectureInfo(patches, final[-1], "classifier", target, CLASS_TOKEN)


def _timm_classifier(bundle: ModelBundle, model: nn.Module) -> str:
    classifier = model.pretrained_cfg["classifier"]
    if not isinstance(classifier, str):
        # timm's distilled DeiT: a class-token head and a distillation-token head, averaged.
        raise ModelBundleError(f"Lantern does not open a timm '{bundle.architecture.removeprefix(TIMM)}': it has "
                               f"{len(classifier)} classifiers ({', '.join(classifier)}) whose logits it averages, "
                               "and Lantern's Monte-Carlo dropout needs one classifier on one feature vector",
                               bundle.folder)
    return classifier


def _timm_kind(bundle: ModelBundle) -> str:
    family = timm_family(bundle.architecture.removeprefix(TIMM))
    if family is None:
        raise ModelBundleError(f"unknown timm architecture '{bundle.architecture.removeprefix(TIMM)}'", bundle.folder)
    return family[0]


def _logits_only(_module: nn.Module, _inputs, output):
    # Hugging Face models return an output object; the engine (and MC dropout) wants the logits.
    # A hook rather than a wrapper keeps every layer's name the checkpoint's own.
    return output.logits


def _hugging_face_model(bundle: ModelBundle) -> nn.Module:
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as exc:
        raise EngineUnavailableError(f"opening a Hugging Face checkpoint needs transformers: {_INSTALL_HINT}",
                                     bundle.folder) from exc
    _check_classifier_rows(bundle, ("classifier.weight", "classifier.1.weight"))
    try:
        model, loading = AutoModelForImageClassification.from_pretrained(
            str(bundle.folder), local_files_only=True, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelBundleError(f"the Hugging Face checkpoint could not be loaded: {exc}", bundle.folder) from exc
    _refuse_partial(bundle, sorted(loading.get("missing_keys") or ()), sorted(loading.get("unexpected_keys") or ()),
                    [str(k) for k in loading.get("mismatched_keys") or ()])
    built = type(model).__name__
    if HUGGING_FACE + built != bundle.architecture:  # a manifest naming another model than config.json
        raise ModelBundleError(f"config.json describes a {built}, but manifest.json's 'architecture' is "
                               f"'{bundle.architecture}'", bundle.folder)
    model.register_forward_hook(_logits_only)
    return model


def _timm_model(bundle: ModelBundle) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise EngineUnavailableError(f"opening a timm checkpoint needs timm: {_INSTALL_HINT}", bundle.folder) from exc
    from safetensors import SafetensorError

    config = json.loads((bundle.folder / "config.json").read_text(encoding="utf-8"))
    arch = bundle.architecture.removeprefix(TIMM)
    args = {k: v for k, v in (config.get("model_args") or {}).items() if k not in ("num_classes", "in_chans")}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=bundle.num_classes,
                                  in_chans=bundle.input.channels, **args)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelBundleError(f"timm could not build a '{arch}': {exc}", bundle.folder) from exc
    patches = getattr(model, "patch_embed", None)
    side = getattr(patches, "img_size", None)
    if side is not None and getattr(patches, "strict_img_size", True) and tuple(side) != tuple(bundle.input.size):
        # A ViT's position embedding (a Swin's attention masks) are sized for one input.
        raise ModelBundleError(f"config.json: 'pretrained_cfg.input_size' {bundle.input.size[0]} x "
                               f"{bundle.input.size[1]} differs from the model's img_size {side[0]} x {side[1]}, "
                               "the only size it takes", bundle.folder)
    try:
        state = read_safetensors(bundle.weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelBundleError(f"the weights file could not be read as safetensors: {exc}", bundle.folder) from exc
    classifier = state.get(_timm_classifier(bundle, model) + ".weight")
    if classifier is not None and classifier.shape[0] != bundle.num_classes:
        raise ModelBundleError(f"config.json's 'label_names' lists {bundle.num_classes} classes; the weights' "
                               f"classifier has {classifier.shape[0]}", bundle.folder)
    expected = model.state_dict()
    _refuse_partial(bundle, sorted(set(expected) - set(state)), sorted(set(state) - set(expected)),
                    [k for k in state if k in expected and state[k].shape != expected[k].shape])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model


def _check_classifier_rows(bundle: ModelBundle, keys: tuple[str, ...]) -> None:
    """Compare the label count with the weights' classifier before a library reports a size mismatch."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(bundle.weights), framework="pt") as weights:
            shapes = {k: weights.get_slice(k).get_shape() for k in keys if k in weights.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelBundleError(f"the weights file could not be read as safetensors: {exc}", bundle.folder) from exc
    for shape in shapes.values():
        if shape[0] != bundle.num_classes:
            raise ModelBundleError(f"config.json's 'id2label' lists {bundle.num_classes} classes; the weights' "
                                   f"classifier has {shape[0]}", bundle.folder)


def _refuse_partial(bundle: ModelBundle, missing: list, unexpected: list, mismatched: list) -> None:
    # Both libraries would start missing parameters from random values and carry on: a model
    # that explains nothing it learned. Refused instead.
    detail = [f"{len(keys)} {what} (e.g. {', '.join(map(str, keys[:3]))})"
              for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
              if keys]
    if detail:
        raise ModelBundleError("the weights do not fit the architecture in config.json: parameters "
                               + "; ".join(detail), bundle.folder)

