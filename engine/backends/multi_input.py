"""Multi-input models: several images of one case (PA + lateral, four derived maps of one eye),
each through a branch, their pooled features concatenated into one dropout head.

Layout (also the state-dict names a team's weights must use, see docs/model-bundle.md):
``backbone.*`` (shared branches: one torchvision classifier body run on every input) or
``branches.<input name>.*`` (separate branches), each with its classifier replaced by an identity
so it returns the pooled feature vector, and ``head`` (``LinearWithDropout``: ``head.weight``,
``head.bias``). The head's input is the concatenation in the manifest's input order, so MC dropout
samples the fused features once, exactly as for one image.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from engine.backends.architectures import ARCHITECTURES, LinearWithDropout, build_model
from engine.bundle import ModelBundle

HEAD = "head"


def _branch(bundle: ModelBundle, index: int) -> tuple[nn.Module, int]:
    """One input's backbone returning its pooled features, and their length."""
    named = bundle.inputs[index]
    single = dataclasses.replace(bundle, architecture=named.architecture, input=named.spec, inputs=())
    model = build_model(single)
    final = ARCHITECTURES[named.architecture].final_linear
    features = model.get_submodule(final).in_features
    model.set_submodule(final, nn.Identity())
    return model, features


class MultiInputNet(nn.Module):
    def __init__(self, bundle: ModelBundle):
        super().__init__()
        self.names = [i.name for i in bundle.inputs]
        self.shared = bundle.branches == "shared"
        if self.shared:
            self.backbone, width = _branch(bundle, 0)
            total = width * len(self.names)
        else:
            built = [_branch(bundle, i) for i in range(len(self.names))]
            self.branches = nn.ModuleDict({name: model for name, (model, _) in zip(self.names, built)})
            total = sum(width for _, width in built)
        self.head = LinearWithDropout(total, bundle.num_classes, bundle.head.dropout)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        if self.shared:
            features = [self.backbone(x) for x in images]
        else:
            features = [self.branches[name](x) for name, x in zip(self.names, images)]
        return self.head(torch.cat([f.flatten(1) for f in features], dim=1))


def target_layer_names(bundle: ModelBundle) -> list[str]:
    """The explained layer of every input's branch (with shared branches one layer, run once per
    input, in input order)."""
    names = []
    for named in bundle.inputs:
        layer = bundle.target_layer or ARCHITECTURES[named.architecture].target_layer
        names.append(f"backbone.{layer}" if bundle.branches == "shared" else f"branches.{named.name}.{layer}")
    return names
