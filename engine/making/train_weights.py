"""The model training starts from: random (seeded), or weights from a local file.

``--init`` takes a safetensors file or a weights-only PyTorch state dict (``torch.load`` with
``weights_only=True``: plain tensors, never pickled code) for the same torchvision architecture,
e.g. ImageNet weights downloaded once by the user, or another Lantern bundle's
``model.safetensors``. Nothing is ever downloaded here. Two parts are adapted, everything else
must fit exactly (or the run is refused, naming the parameters):

* the first convolution of 3-channel (RGB) weights, for a 1-channel model, becomes the average of
  its three input channels' kernels (a grey image is the same picture in all three);
* the final linear layer is always replaced by a new one for the bundle's classes: even with the
  same number of classes, a class's row in a foreign head means someone else's class.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from engine.backends.architectures import ARCHITECTURES, build_model, read_safetensors
from engine.bundle import ModelBundle
from engine.errors import LanternError

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
# torchvision's published DenseNet files predate its module names ("norm.1" for "norm1"); its own
# loader renames them by this pattern, and so does this one.
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only .pt/.pth, in plain words when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise LanternError("the starting weights file does not exist", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError

        try:
            state = read_safetensors(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise LanternError(f"could not read it as safetensors: {exc}", path) from exc
    elif path.suffix in STATE_DICT_SUFFIXES:
        try:
            # weights_only: a checkpoint is data, never code to run.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for unsafe or broken files
            raise LanternError(f"could not read it as a PyTorch state dict (only plain tensors are accepted, "
                               f"never pickled code): {exc}", path) from exc
        for key in ("state_dict", "model"):  # common wrappers around the weights themselves
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        raise LanternError("starting weights must be .safetensors or a .pt/.pth state dict", path)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LanternError("the file does not hold a state dict (a mapping of names to tensors)", path)
    # DataParallel checkpoints prefix every key with "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {"".join(m.groups()) if (m := _DENSENET_LEGACY.match(k)) else k: v for k, v in state.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module, bundle: ModelBundle,
                     source: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``state`` made to fit ``model``: the head dropped (the model's new one kept), the first
    convolution averaged to one channel where needed. Returns it and what was done."""
    info = ARCHITECTURES[bundle.architecture]
    expected = model.state_dict()
    head = {f"{info.final_linear}.weight", f"{info.final_linear}.bias"}
    adapted = {k: v for k, v in state.items() if k not in head}
    first = f"{info.first_conv}.weight"
    done = {"head": f"replaced: a new {info.final_linear} for {bundle.num_classes} classes"}
    if first in adapted and first in expected and adapted[first].dim() == 4:
        have, want = adapted[first].shape[1], expected[first].shape[1]
        if have == 3 and want == 1:
            adapted[first] = adapted[first].float().mean(dim=1, keepdim=True)
            done["first_conv"] = f"{first}: the mean of its 3 RGB input channels"
        elif have == 1 and want == 3:  # a grey model's kernel shared by R, G and B, a third each
            adapted[first] = adapted[first].float().repeat(1, 3, 1, 1) / 3.0
            done["first_conv"] = f"{first}: its one channel shared by R, G and B"
    missing = sorted(set(expected) - set(adapted) - head)
    unexpected = sorted(set(adapted) - set(expected))
    wrong = [f"{k} {tuple(adapted[k].shape)} (needs {tuple(expected[k].shape)})" for k in sorted(adapted)
             if k in expected and adapted[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            detail.append(f"{len(wrong)} of another shape (e.g. {', '.join(wrong[:2])})")
        raise LanternError(f"these weights do not fit a {bundle.architecture} at {bundle.input.size[0]} x "
                           f"{bundle.input.size[1]}: parameters " + "; ".join(detail), source)
    for key in head:
        adapted[key] = expected[key]
    done["parameters_from_file"] = len(adapted) - len(head)
    return {k: v.float() if v.is_floating_point() else v for k, v in adapted.items()}, done


def starting_model(bundle: ModelBundle, init: Path | None, seed: int) -> tuple[nn.Module, dict]:
    """The model to train and, for the model card, where its weights came from."""
    torch.manual_seed(seed)  # the new head (and, from scratch, every layer) is seeded
    model = build_model(bundle)
    if init is None:
        return model, {"from": "scratch: random initialisation (torchvision's), seed " + str(seed)}
    state, done = adapt_state_dict(read_state_dict(init), model, bundle, Path(init))
    model.load_state_dict(state)
    return model, {"from": Path(init).name, "sha256": _sha256(Path(init)), **done}
