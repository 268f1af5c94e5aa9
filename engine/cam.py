"""One CAM core; each method only says how to weight the explained layer's channels.

Inputs are plain arrays the backends produce from one forward pass: the explained layer's
activations A (K, h, w) and the gradients of every class logit with respect to them,
G (C, K, h, w). A map is relu(sum_k W_ck * A_k) where the weighting rule gives W, either one
weight per channel (C, K) or one per position (C, K, h, w). Because the rules need no autograd,
the ONNX engine reuses them unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

_EPS = 1e-7


class CamMethod(ABC):
    name: str = ""
    label: str = ""

    @abstractmethod
    def weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """(C, K) channel weights or (C, K, h, w) position weights."""

    def raw_maps(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """(C, h, w) maps on an absolute scale: units of the class logit, comparable across
        images and classes of the same model."""
        weights = self.weights(activations, gradients)
        if weights.ndim == 2:
            maps = np.einsum("ck,khw->chw", weights, activations, optimize=True)
        else:
            maps = np.einsum("ckhw,khw->chw", weights, activations, optimize=True)
        return np.maximum(maps, 0.0).astype(np.float32)


class GradCam(CamMethod):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""

    name, label = "gradcam", "Grad-CAM"

    def weights(self, activations, gradients):
        return gradients.mean(axis=(2, 3))


class GradCamPlusPlus(CamMethod):
    """Chattopadhay et al. 2018, with the exponential-score closed form (higher derivatives as
    powers of the first), as the authors' implementation does."""

    name, label = "gradcam++", "Grad-CAM++"

    def weights(self, activations, gradients):
        g2 = gradients**2
        g3 = g2 * gradients
        sum_a = activations.sum(axis=(1, 2))[None, :, None, None]
        denominator = 2.0 * g2 + sum_a * g3
        # Guard only exact zeros: gradients of 1e-4 are common, and any epsilon on the order of
        # g^2 would distort alpha there.
        alpha = g2 / np.where(denominator != 0.0, denominator, 1.0)
        return (alpha * np.maximum(gradients, 0.0)).sum(axis=(2, 3))


class LayerCam(CamMethod):
    """Jiang et al. 2021: every position weighted by its own positive gradient."""

    name, label = "layercam", "Layer-CAM"

    def weights(self, activations, gradients):
        return np.maximum(gradients, 0.0)


METHODS: dict[str, CamMethod] = {m.name: m for m in (GradCam(), GradCamPlusPlus(), LayerCam())}


def get_method(name: str) -> CamMethod:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"gradcam": "gradcam", "gradcam++": "gradcam++", "gradcampp": "gradcam++",
               "gradcamplusplus": "gradcam++", "layercam": "layercam"}
    if key not in aliases:
        raise ValueError(f"unknown explanation method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[aliases[key]]


@dataclass(frozen=True)
class ClassMaps:
    """Maps for every class from one method, on the source image's pixel grid.

    ``absolute`` keeps the method's own scale (comparable across images and classes);
    ``normalized`` divides each class by its own peak, for display (0 stays 0).
    """

    method: str
    absolute: np.ndarray  # (C, H, W) float32
    normalized: np.ndarray  # (C, H, W) float32 in 0..1
    grid: np.ndarray  # (C, h, w) float32: the absolute maps on the model's feature grid

    def peak(self, class_index: int) -> tuple[int, int]:
        """(row, column) of the map's maximum on the source image."""
        flat = int(np.argmax(self.absolute[class_index]))
        return divmod(flat, self.absolute.shape[2])


def normalize_per_class(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(maps.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, 1.0 / np.maximum(peak, _EPS), 0.0).astype(np.float32)
    return maps * scale[:, None, None]
