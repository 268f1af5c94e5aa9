"""One CAM core; each method only says how to weight the explained layer's channels.

Inputs are plain arrays the backends produce from one forward pass: the explained layer's
activations A (K, h, w) and the gradients of every class logit with respect to them,
G (C, K, h, w). A map is relu(sum_k W_ck * A_k) where the weighting rule gives W, either one
weight per channel (C, K) or one per position (C, K, h, w). Because the rules need no autograd,
the ONNX engine reuses them unchanged.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from engine.preprocess import Geometry, grid_to_source_affine, map_to_source

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
        # One matrix product (channel weights) or one broadcast sum (position weights): the same
        # sums as einsum, whose optimize=True searched a contraction path on every call (0.38 ms
        # of a 20 ms INT8 analysis, against 0.09 ms for the product).
        k, h, w = activations.shape
        if weights.ndim == 2:
            maps = (weights @ activations.reshape(k, h * w)).reshape(-1, h, w)
        else:
            maps = (weights * activations[None]).sum(axis=1)
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


# The one list of explanation methods: everything else (command line, viewer, evaluation,
# exports) takes names, labels and the default from here.
METHODS: dict[str, CamMethod] = {m.name: m for m in (GradCam(), GradCamPlusPlus(), LayerCam())}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
DEFAULT_METHOD = GradCam.name


def method_label(name: str) -> str:
    """What a reader sees for a method name ("Grad-CAM++" for "gradcam++")."""
    return METHODS[name].label if name in METHODS else name


def get_method(name: str) -> CamMethod:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"gradcam": "gradcam", "gradcam++": "gradcam++", "gradcampp": "gradcam++",
               "gradcamplusplus": "gradcam++", "layercam": "layercam"}
    if key not in aliases:
        raise ValueError(f"unknown explanation method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[aliases[key]]


class ClassMaps:
    """Maps for every class from one method, kept on the model's feature grid and warped onto
    the source image one class at a time, when asked.

    Warping every class of every method to a 2000 x 2000 radiograph took most of an analysis
    (and a batch or a thumbnail strip never needs it), so each class is warped on first use and
    kept. ``source_map`` keeps the method's own scale (comparable across images and classes);
    ``normalized_map`` divides by the class's own peak, for display (0 stays 0).
    """

    def __init__(self, method: str, grid: np.ndarray, geometry: "Geometry", alignment: str = "resize"):
        self.method = method
        self.grid = np.ascontiguousarray(grid, dtype=np.float32)  # (C, h, w), absolute units
        self.geometry = geometry
        self.alignment = alignment
        self._warped: dict[int, np.ndarray] = {}
        self._centres: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # on first use: analyze never needs them
        self._lock = threading.Lock()  # a worker and the GUI thread may ask for the same class
        self._peaks: np.ndarray | None = None  # per-class display peaks shared with other images

    def __getstate__(self) -> dict:
        # Sent from a Ray worker to the driver (exports): a lock cannot be pickled, and the warped
        # maps are source-sized (megabytes a class) and remade on first use from the grid.
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_warped")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._warped = {}
        self._lock = threading.Lock()

    @staticmethod
    def share_scale(maps: "list[ClassMaps]") -> None:
        """Display every class of several images' maps (a multi-input case) on one scale: the
        class's peak over all of them, so an image with less evidence looks dimmer rather than
        each image's own peak looking as strong as the case's."""
        peaks = np.array([[m.image_peak(c) for c in range(m.n_classes)] for m in maps]).max(axis=0)
        for m in maps:
            m._peaks = peaks

    @property
    def n_classes(self) -> int:
        return self.grid.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the source image the maps are warped onto."""
        return self.geometry.source_shape

    def source_map(self, class_index: int) -> np.ndarray:
        """(H, W) float32 map of one class on the source image, in the method's own units."""
        with self._lock:
            found = self._warped.get(class_index)
            if found is None:
                found = map_to_source(self.grid[class_index : class_index + 1], self.geometry, self.alignment)[0]
                found.setflags(write=False)
                self._warped[class_index] = found
            return found

    def normalized_map(self, class_index: int) -> np.ndarray:
        """(H, W) float32 map scaled by the class's peak: 0..1.

        The peak is that of the cells over the image; pixels at the image's edge that lean towards
        a stronger cell over letterbox padding saturate at 1."""
        return np.minimum(self.source_map(class_index) * self._unit(class_index), 1.0)

    def sampled_map(self, class_index: int, step: int, normalized: bool = True) -> np.ndarray:
        """The map at every step-th source pixel (``source_map(i)[::step, ::step]``), warped
        straight to that size and not kept: for thumbnails."""
        grid = self.grid[class_index : class_index + 1]
        small = map_to_source(grid, self.geometry, self.alignment, step)[0]
        return np.minimum(small * self._unit(class_index), 1.0) if normalized else small

    @property
    def on_image(self) -> np.ndarray:
        """(h, w) bool: grid cells whose centre lies on the source image."""
        return self._cell_info()[2]

    def image_peak(self, class_index: int) -> float:
        """The class's largest value among the cells over the image (absolute units)."""
        return float(self.grid[class_index][self.on_image].max())

    def _unit(self, class_index: int) -> np.float32:
        peak = self.image_peak(class_index) if self._peaks is None else float(self._peaks[class_index])
        return np.float32(1.0 / peak if peak > _EPS else 0.0)

    def _cell_info(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._centres is None:  # pure: two threads computing it at once get the same arrays
            self._centres = self._cell_centres()
        return self._centres

    def _cell_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Source (row, column) of every grid cell's centre, and which centres fall on the image:
        with letterbox padding some cells see only padding and must not set the peak."""
        gh, gw = self.grid.shape[1:]
        to_grid = np.vstack([grid_to_source_affine(self.geometry, (gh, gw), self.alignment), [0.0, 0.0, 1.0]])
        gy, gx = np.mgrid[:gh, :gw]
        cells = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)]).astype(np.float64)
        x, y, _ = np.linalg.solve(to_grid, cells)
        H, W = self.shape
        on_image = ((x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5)).reshape(gh, gw)
        if not on_image.any():  # an image smaller than one cell
            on_image[:] = True
        return y.reshape(gh, gw), x.reshape(gh, gw), on_image

    @property
    def absolute(self) -> np.ndarray:
        """(C, H, W): every class on the source image (warps all of them; avoid in hot paths)."""
        return np.stack([self.source_map(i) for i in range(self.n_classes)])

    @property
    def normalized(self) -> np.ndarray:
        """(C, H, W) in 0..1 (warps every class)."""
        return np.stack([self.normalized_map(i) for i in range(self.n_classes)])

    def peak(self, class_index: int) -> tuple[int, int]:
        """(row, column) on the source image of the map's maximum.

        Found on the grid, among the cells over the image, and carried to the source through the
        geometry: bilinear warping puts the maximum where the peak cell's centre lands."""
        rows, cols, on_image = self._cell_info()
        grid = np.where(on_image, self.grid[class_index], -np.inf)
        cell = np.unravel_index(int(np.argmax(grid)), grid.shape)
        H, W = self.shape
        return (int(np.clip(round(rows[cell]), 0, H - 1)),
                int(np.clip(round(cols[cell]), 0, W - 1)))
