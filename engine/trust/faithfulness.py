"""Does the map point at what the model uses? Deletion and insertion (Petsiuk et al., 2018).

Pixels of the model input are ranked by the map, most important first. Deletion replaces the
top k % with a "removed" baseline and watches the class probability fall; insertion starts from
the baseline and reveals the top k %, watching it rise. The area under each probability curve
(fraction removed or revealed on the x axis, 0..1) is the score: a faithful map has a LOW
deletion AUC and a HIGH insertion AUC; a map no better than chance lands near a random map's.

What "removed" means follows Petsiuk et al.'s protocol. Deletion replaces pixels with the
normalisation's mean (0 in model units: a flat mid-grey), which erases any finding, large or
small. Insertion starts from the image blurred (Gaussian, sigma = ``BLUR_SIGMA`` of the input's
shorter side) and puts sharp pixels back: starting from a flat grey instead would make the first
revealed patches, with their sharp edges on a featureless field, look like findings of their own.
Both are out-of-distribution images to some degree (the problem ROAD, Rong et al. 2022, tries to
reduce); on Lantern's phantoms a blurred deletion baseline could not remove a large effusion (its
opacity survives blurring) and a grey insertion start made random patches read as nodules, so
each curve uses the baseline that removes evidence without inventing it. Compare scores only
between maps of the same image, class and settings.

Everything runs on the model input (the preprocessed tensor) with ``backend.forward`` only, so
the score is the same on the torch, onnx and onnx-int8 engines, in one or two batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from engine.errors import LanternError
from engine.cam import ClassMaps
from engine.preprocess import Geometry, map_to_source
from engine.steps import Progress, Steps, run_to_end
from engine.uncertainty import softmax

DEFAULT_STEPS = 16
BLUR_SIGMA = 0.05  # of the input's shorter side: 8 px at 160 px, wider than a small nodule
BASELINES = ("blur", "mean")
DELETION_BASELINE, INSERTION_BASELINE = "mean", "blur"
BATCH = 32


@dataclass(frozen=True)
class FaithfulnessScore:
    method: str
    class_index: int
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better
    deletion_curve: np.ndarray  # (steps + 1,) class probability after removing each fraction
    insertion_curve: np.ndarray  # (steps + 1,) class probability after revealing each fraction
    fractions: np.ndarray  # (steps + 1,) 0..1
    deletion_baseline: str = DELETION_BASELINE
    insertion_baseline: str = INSERTION_BASELINE

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "class_index": self.class_index,
            "deletion_auc": round(self.deletion_auc, 6),
            "insertion_auc": round(self.insertion_auc, 6),
            "deletion_curve": [round(float(v), 6) for v in self.deletion_curve],
            "insertion_curve": [round(float(v), 6) for v in self.insertion_curve],
            "fractions": [round(float(v), 6) for v in self.fractions],
            "deletion_baseline": self.deletion_baseline,
            "insertion_baseline": self.insertion_baseline,
        }


def input_map(maps: ClassMaps, class_index: int) -> np.ndarray:
    """(h, w) map of one class on the model input's pixel grid (not the source image's)."""
    h, w = maps.geometry.input_shape
    identity = Geometry((h, w), (h, w), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    return map_to_source(maps.grid[class_index : class_index + 1], identity, maps.alignment)[0]


def removal_baseline(tensor: np.ndarray, kind: str = "blur") -> np.ndarray:
    """What "removed" pixels become, per channel, in model units (tensor is (1, C, h, w))."""
    if kind == "mean":
        return np.zeros_like(tensor)
    if kind != "blur":
        raise ValueError(f"unknown faithfulness baseline '{kind}' (known: {', '.join(BASELINES)})")
    sigma = BLUR_SIGMA * min(tensor.shape[2:])
    blurred = [cv2.GaussianBlur(channel, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for channel in tensor[0]]
    return np.stack(blurred)[None].astype(np.float32)


def pixel_order(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most important first. Ties (a CAM is exactly 0 over large areas) are
    taken in a seeded random order, not raster order, which would favour the image's top."""
    values = np.asarray(saliency, dtype=np.float64).reshape(-1)
    tie_break = np.random.default_rng(seed).random(values.size)
    return np.lexsort((tie_break, -values))


def perturbed_inputs(tensor: np.ndarray, order: np.ndarray, steps: int,
                     deletion_baseline: np.ndarray, insertion_baseline: np.ndarray) -> np.ndarray:
    """(2 * steps, C, h, w): deletion inputs for fractions 1/steps..1, then insertion inputs for
    0..(steps-1)/steps. Deletion at 0 and insertion at 1 are the image itself (added by the
    caller)."""
    _, channels, h, w = tensor.shape
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    rank = rank.reshape(h, w)
    cut = np.round(np.linspace(0.0, 1.0, steps + 1) * order.size).astype(np.int64)
    batch = np.empty((2 * steps, channels, h, w), dtype=np.float32)
    for i in range(steps):
        batch[i] = np.where(rank < cut[i + 1], deletion_baseline[0], tensor[0])
        batch[steps + i] = np.where(rank < cut[i], tensor[0], insertion_baseline[0])
    return batch


def _auc(fractions: np.ndarray, curve: np.ndarray) -> float:
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def score_map_steps(backend, tensor: np.ndarray, saliency: np.ndarray, class_index: int, method: str = "",
                    steps: int = DEFAULT_STEPS, deletion_baseline: str = DELETION_BASELINE,
                    insertion_baseline: str = INSERTION_BASELINE, seed: int = 0) -> Steps[FaithfulnessScore]:
    """Deletion and insertion of ``saliency`` (h, w, on the input grid) for one class, as steps
    (one per forward batch), so that the viewer can stop it between batches."""
    if steps < 2:
        raise ValueError("faithfulness needs at least 2 steps")
    if saliency.shape != tensor.shape[2:]:
        raise ValueError(f"the map is {saliency.shape} but the model input is {tensor.shape[2:]}")
    batch = perturbed_inputs(tensor, pixel_order(saliency, seed), steps,
                             removal_baseline(tensor, deletion_baseline), removal_baseline(tensor, insertion_baseline))
    # The image itself once more, so that every point of both curves comes from this one call.
    batch = np.concatenate([batch, tensor])
    starts = range(0, len(batch), BATCH)
    logits = []
    for n, start in enumerate(starts):
        yield Progress(f"deletion and insertion ({method or 'map'})", n, len(starts))
        logits.append(backend.forward(batch[start : start + BATCH]))
    probs = softmax(np.concatenate(logits).astype(np.float64))[:, class_index]
    original = probs[-1]
    deletion = np.concatenate([[original], probs[:steps]])
    insertion = np.concatenate([probs[steps : 2 * steps], [original]])
    fractions = np.linspace(0.0, 1.0, steps + 1)
    return FaithfulnessScore(method, int(class_index), _auc(fractions, deletion), _auc(fractions, insertion),
                             deletion.astype(np.float32), insertion.astype(np.float32), fractions,
                             deletion_baseline, insertion_baseline)


def score_map(backend, tensor: np.ndarray, saliency: np.ndarray, class_index: int, method: str = "",
              **options) -> FaithfulnessScore:
    """:func:`score_map_steps`, run to the end."""
    return run_to_end(score_map_steps(backend, tensor, saliency, class_index, method, **options))


def score_analysis_steps(analysis, backend, method: str, class_index: int, **options) -> Steps[FaithfulnessScore]:
    """Faithfulness of one map of an :class:`~engine.analysis.Analysis` (same engine or another)."""
    if len(analysis.views) > 1:
        # Deleting pixels of one view while the others stay whole is not what the score means.
        raise LanternError("faithfulness scores take models of one image; this analysis is a multi-input case")
    maps = analysis.maps[method]
    return score_map_steps(backend, analysis.model_input.tensor, input_map(maps, class_index), class_index,
                           method=method, **options)


def score_analysis(analysis, backend, method: str, class_index: int, **options) -> FaithfulnessScore:
    """:func:`score_analysis_steps`, run to the end."""
    return run_to_end(score_analysis_steps(analysis, backend, method, class_index, **options))


def score_analyses(analyses: Iterable, model, methods: Sequence[str] | None = None,
                   classes: str = "predicted", **options) -> list[list[FaithfulnessScore]]:
    """For a batch: the scores of each analysis (one list per analysis, in order).

    ``model`` is the LoadedModel the analyses came from; ``methods`` defaults to every method an
    analysis holds; ``classes`` is "predicted" (the predicted class only) or "all"."""
    if classes not in ("predicted", "all"):
        raise ValueError("classes must be 'predicted' or 'all'")
    results = []
    for analysis in analyses:
        wanted = [analysis.predicted] if classes == "predicted" else range(len(analysis.classes))
        results.append([score_analysis(analysis, model.backend, method, c, **options)
                        for method in (methods or list(analysis.maps)) for c in wanted])
    return results


def scores_to_dict(scores: Sequence[FaithfulnessScore], classes: Sequence[str]) -> dict:
    """{method: {class name: score dict}}: the block a result.json carries as "faithfulness"."""
    out: dict[str, dict] = {}
    for score in scores:
        out.setdefault(score.method, {})[classes[score.class_index]] = score.to_dict()
    return out


def chance_map(maps: ClassMaps, seed: int = 0) -> np.ndarray:
    """A random map at the CAM's own resolution, on the input grid: the score a map must beat
    to be better than chance (a pixel-level random map would be an unfairly noisy rival)."""
    grid = np.random.default_rng(seed).random((1, *maps.grid.shape[1:])).astype(np.float32)
    return input_map(ClassMaps("chance", grid, maps.geometry, maps.alignment), 0)
