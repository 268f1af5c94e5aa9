"""The PyTorch engine: one forward pass gives logits, the explained layer and every class's
gradient; MC dropout re-runs only the head on features computed once.

Gradients flow only through the layers after the explained one: the explained activation is
detached in a hook and becomes the leaf that autograd differentiates against, and all classes'
gradients come from one batched backward (``is_grads_batched``), not one backward per class.

One model is not safe to share between threads as it is: a call adds hooks to it (which would
capture another thread's forward), MC dropout switches its dropout layers on, and a copy made
meanwhile would inherit both. So every call on a backend holds that backend's lock: the viewer's
analysis, a faithfulness score and the Evaluate dialog may share one loaded model and each gets
exactly what a serial run would give. MC dropout also seeds torch's global generator, which every
backend shares, so it holds one process-wide lock as well.
"""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from engine.backends.architectures import (
    ARCHITECTURES, build_model, head_module_name, load_weights, target_layer_name, to_grid)
from engine.backends.base import ExplainedLayer, ForwardOutputs
from engine.backends.hub_models import checkpoint_layers, open_checkpoint_model
from engine.backends.multi_input import HEAD as MULTI_INPUT_HEAD
from engine.backends.multi_input import MultiInputNet, target_layer_names
from engine.bundle import ModelBundle
from engine.checkpoints import is_checkpoint_bundle
from engine.errors import ModelBundleError

_GLOBAL_RNG = threading.Lock()  # torch's default generator: MC dropout seeds it (see above)


class _Capture:
    def __init__(self):
        self.activations: list[torch.Tensor] = []  # the explained layer's outputs, in call order
        self.head_input: torch.Tensor | None = None

    @property
    def activation(self) -> torch.Tensor:
        return self.activations[0]


@contextmanager
def capture_layers(model: nn.Module, targets: list[nn.Module], head: nn.Module, detach_target: bool) -> Iterator[_Capture]:
    """Hook the explained layers and the head for one forward; hooks are always removed. A
    multi-input model's layers are each input's, in input order (shared branches: one module that
    runs once per input)."""
    store = _Capture()

    def on_target(_module, _inputs, output):
        if not detach_target:
            store.activations.append(output)
            return output
        leaf = output.detach().requires_grad_(True)
        store.activations.append(leaf)
        # A clone goes on, so that an in-place op after the layer (DenseNet's relu) does not
        # modify the leaf autograd differentiates against.
        return leaf.clone()

    def on_head(_module, inputs):
        store.head_input = inputs[0].detach()

    handles = [t.register_forward_hook(on_target) for t in dict.fromkeys(targets)]
    handles.append(head.register_forward_pre_hook(on_head))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _tensors(batch) -> tuple[torch.Tensor, ...]:
    """A model's inputs: one array, or one per input of a multi-input model."""
    arrays = batch if isinstance(batch, (tuple, list)) else (batch,)
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)


@contextmanager
def dropout_active(module: nn.Module) -> Iterator[None]:
    """Switch on only the dropout layers of ``module``; everything else keeps its mode."""
    dropouts = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    before = [m.training for m in dropouts]
    for m in dropouts:
        m.train()
    try:
        yield
    finally:
        for m, mode in zip(dropouts, before):
            m.train(mode)


def deterministic_prefix(head: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the layers of a sequential head before its first dropout, the rest): the prefix gives
    the same for every MC sample, so it runs once, not once per sample (mobilenet_v3's
    960 -> 1280 layer). A head that is not a sequence: (identity, the head)."""
    if isinstance(head, nn.Sequential):
        for i, layer in enumerate(head):
            if any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules()):
                return head[:i], head[i:]
    return nn.Identity(), head


class TorchBackend:
    engine = "torch"

    def __init__(self, bundle: ModelBundle, model: nn.Module | None = None):
        self.bundle = bundle
        if model is None:
            if bundle.weights is None:
                raise ModelBundleError("this bundle has no safetensors weights for PyTorch", bundle.folder)
            if is_checkpoint_bundle(bundle):
                model = open_checkpoint_model(bundle)
            elif bundle.multi_input:
                model = MultiInputNet(bundle)
                load_weights(model, bundle)
            else:
                model = build_model(bundle)
                load_weights(model, bundle)
        self.model = model.eval()
        # Lantern never trains here; parameters without grad keep autograd to the layers after
        # the explained one.
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            if is_checkpoint_bundle(bundle):  # a Hugging Face or timm folder: its layers are found by name
                info = checkpoint_layers(bundle, self.model)
                targets, head = [bundle.target_layer or info.target_layer], bundle.head.module or info.head
            elif bundle.multi_input:
                info = ARCHITECTURES[bundle.architecture]
                targets, head = target_layer_names(bundle), bundle.head.module or MULTI_INPUT_HEAD
            else:
                info = ARCHITECTURES[bundle.architecture]
                targets, head = [target_layer_name(bundle)], head_module_name(bundle)
            self.targets = [self.model.get_submodule(t) for t in targets]
            self.head = self.model.get_submodule(head)
            self.target_names, self.head_name = list(targets), head  # what the ONNX export hooks
        except AttributeError as exc:
            raise ModelBundleError(f"the manifest names a layer this model does not have: {exc}", bundle.folder) from exc
        self.has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.head.modules())
        # Transformers explain tokens: laid out on the patch grid (the patch projection's stride)
        # before any CAM rule sees them, so their maps land on the image as a CNN's do.
        # One layout per model input: a multi-input model's branches may be different families.
        if bundle.multi_input and not is_checkpoint_bundle(bundle):
            prefixes = (["backbone."] * len(bundle.inputs) if bundle.branches == "shared"
                        else [f"branches.{i.name}." for i in bundle.inputs])
            families = [(ARCHITECTURES[i.architecture], prefix) for i, prefix in zip(bundle.inputs, prefixes)]
        else:
            families = [(info, "")]
        self.layouts = [(family.tokens, self.model.get_submodule(prefix + family.first_conv).stride
                         if family.tokens else (1, 1)) for family, prefix in families]
        self.tokens, self.patch = self.layouts[0]
        self.lock = threading.RLock()  # held by every call: see the module's docstring

    @property
    def target(self) -> nn.Module:
        """The explained layer (a multi-input model's first input's)."""
        return self.targets[0]

    def forward(self, batch) -> np.ndarray:
        with self.lock, torch.inference_mode():
            return self.model(*_tensors(batch)).numpy()

    def forward_features(self, batch) -> tuple[np.ndarray, np.ndarray]:
        with self.lock, capture_layers(self.model, self.targets, self.head, detach_target=False) as store:
            with torch.inference_mode():
                logits = self.model(*_tensors(batch))
        return logits.numpy(), store.head_input.numpy()

    def explain(self, tensor) -> ForwardOutputs:
        xs = _tensors(tensor)
        with self.lock, capture_layers(self.model, self.targets, self.head, detach_target=True) as store:
            with torch.enable_grad():
                logits = self.model(*xs)
                every = all_class_gradients(logits, tuple(store.activations))
            layers = []
            for k, (x, activation, gradients) in enumerate(zip(xs, store.activations, every)):
                activation, gradients = self.on_grid(activation.detach(), gradients, tuple(x.shape[-2:]), k)
                layers.append(ExplainedLayer(activation[0].numpy(), gradients[:, 0].numpy()))
        return ForwardOutputs(logits=logits[0].detach().numpy(), layers=tuple(layers),
                              head_input=store.head_input[0].numpy())

    def on_grid(self, activation: torch.Tensor, gradients: torch.Tensor,
                input_size: tuple[int, int], input_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The explained layer's activation and gradients laid out as (B, K, h, w) and
        (C, B, K, h, w) for model input ``input_index`` of ``input_size`` (architectures.to_grid;
        the ONNX export calls this too, so both engines lay tokens out by the same rule)."""
        tokens, patch = self.layouts[input_index]
        grid = (input_size[0] // patch[0], input_size[1] // patch[1])
        return to_grid(activation, gradients, tokens, grid)

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        if not self.has_dropout:
            raise ValueError("this model has no dropout in its head")
        prefix, rest = deterministic_prefix(self.head)
        # fork_rng: seeding for reproducible masks must not disturb anyone else's random stream.
        with self.lock, _GLOBAL_RNG, torch.random.fork_rng(devices=[]), torch.inference_mode(), \
                dropout_active(self.head):
            features = prefix(torch.from_numpy(np.ascontiguousarray(head_input))[None])
            torch.manual_seed(seed)
            return rest(features.expand(samples, *features.shape[1:]).contiguous()).numpy()


def all_class_gradients(logits: torch.Tensor, activation):
    """d logit_c / d activation for every class c: (C, B, K, h, w), one batched backward. Given
    a tuple of activations (a multi-input model's layers), a tuple of such gradients."""
    several = isinstance(activation, tuple)
    leaves = activation if several else (activation,)
    n_classes = logits.shape[1]
    eye = torch.eye(n_classes, dtype=logits.dtype)[:, None, :].expand(n_classes, logits.shape[0], n_classes)
    try:
        grads = torch.autograd.grad(logits, leaves, grad_outputs=eye, is_grads_batched=True)
    except RuntimeError:
        # Some layers have no batching rule for vmap; fall back to one backward per class
        # (still only through the layers after the explained one).
        per_class = [torch.autograd.grad(logits, leaves, grad_outputs=eye[c], retain_graph=c < n_classes - 1)
                     for c in range(n_classes)]
        grads = tuple(torch.stack([g[i] for g in per_class]) for i in range(len(leaves)))
    grads = tuple(g.detach() for g in grads)
    return grads if several else grads[0]


MAX_RANDOMIZATION_STEPS = 16


def randomization_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The model's parameterised layers grouped by block (``layer4.1``, ``features.denseblock4``,
    ``fc``...), from the output back to the input: the order of cascading randomisation."""
    groups: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            groups.setdefault(".".join(name.split(".")[:2]), []).append(module)
    ordered = list(groups.items())[::-1]
    # Deep nets have many blocks; merge neighbours so a check stays a few seconds long.
    size = -(-len(ordered) // MAX_RANDOMIZATION_STEPS)
    return [(" + ".join(label for label, _ in ordered[i : i + size]),
             [m for _, modules in ordered[i : i + size] for m in modules]) for i in range(0, len(ordered), size)]


def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of ``module``'s own parameters, drawn from ``generator``
    rather than the global stream (MC dropout on another thread seeds and draws from that one)."""
    if hasattr(module, "reset_running_stats") or isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        module.reset_parameters()  # normalisation layers: ones, zeros and fresh statistics, nothing random
        return
    weight = getattr(module, "weight", None)
    for name, parameter in module.named_parameters(recurse=False):
        if parameter.dim() > 1:
            nn.init.kaiming_uniform_(parameter, a=math.sqrt(5), generator=generator)
        elif name == "bias" and isinstance(weight, torch.Tensor) and weight.dim() > 1:
            fan_in = weight[0].numel()
            nn.init.uniform_(parameter, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=generator)
        else:
            nn.init.normal_(parameter, std=0.02, generator=generator)


def cascading_randomization(backend: TorchBackend, seed: int = 0) -> Iterator[tuple[str, TorchBackend]]:
    """Yield (layers just randomised, a backend over the copy randomised so far), re-initialising
    one group more each time, from the top of the network down (Adebayo et al., 2018). The
    trained model is never touched."""
    with backend.lock:  # never copy another call's hooks or switched-on dropout
        model = copy.deepcopy(backend.model)
    generator = torch.Generator().manual_seed(seed)
    for label, modules in randomization_groups(model):
        with torch.no_grad():
            for module in modules:
                _reinitialize(module, generator)
        yield label, TorchBackend(backend.bundle, model)
