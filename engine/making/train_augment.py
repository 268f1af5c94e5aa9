"""Augmentations suited to radiographs, applied on top of ``prepare_input``'s tensors.

Each acts in the 0..1 intensity space prepare_input makes before normalising (undone and redone
here), so that what the model is trained on stays what it can meet at inference:

    rotate    a small rotation, up to MAX_DEGREES either way (patients are not always straight);
              the corners it uncovers are 0, the letterbox fill prepare_input uses
    flip      left-right mirroring, half the time. Only when asked: anatomy has sides (the heart
              is on the left), and a mirrored chest is not a chest a reader will ever see
    contrast  contrast and brightness changed a little (exposure, detector and processing differ
              between sites); black (the letterbox border, and anything clipped to black) stays black

Random draws come from torch's global generator, which the training loop seeds at every epoch's
start: the same seed gives the same augmented batches, also after --resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.bundle import InputSpec

MAX_DEGREES = 7.0
CONTRAST = (0.8, 1.25)  # factor around the image's mean, drawn log-uniformly
BRIGHTNESS = 0.08  # shift in 0..1 units, either way


class Augmenter:
    def __init__(self, names: tuple[str, ...], spec: InputSpec):
        self.names = tuple(names)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.names:
            return x
        unit = x * self.std + self.mean
        n = len(unit)
        if "contrast" in self.names:
            black = unit <= 0
            low, high = math.log(CONTRAST[0]), math.log(CONTRAST[1])
            factor = torch.exp(torch.empty(n, 1, 1, 1).uniform_(low, high))
            shift = torch.empty(n, 1, 1, 1).uniform_(-BRIGHTNESS, BRIGHTNESS)
            centre = unit.mean(dim=(1, 2, 3), keepdim=True)
            unit = ((unit - centre) * factor + centre + shift).clamp_(0.0, 1.0).masked_fill_(black, 0.0)
        if "rotate" in self.names:
            unit = _rotate(unit, torch.empty(n).uniform_(-MAX_DEGREES, MAX_DEGREES))
        if "flip" in self.names:
            mirrored = torch.rand(n) < 0.5
            unit = torch.where(mirrored.view(-1, 1, 1, 1), unit.flip(-1), unit)
        return ((unit - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def _rotate(unit: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre; uncovered pixels become 0 (grid_sample's zeros)."""
    h, w = unit.shape[-2:]
    angle = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in coordinates normalised per axis: a rotation by pixels on a non-square
    # image scales its off-diagonal terms by the aspect ratio.
    theta = torch.stack([torch.stack([cos, -sin * h / w, torch.zeros_like(cos)], dim=1),
                         torch.stack([sin * w / h, cos, torch.zeros_like(cos)], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
