"""Model-randomisation sanity check (Adebayo et al., 2018): does the map depend on the model?

The same map is recomputed for the same image while the model's layers are re-initialised one
block after another from the top (the classifier) down to the input (cascading randomisation).
A map that explains the model must change as the weights it explains are destroyed; a map that
stays alike is showing the image (edges, bright areas), not the model's evidence.

Similarity to the trained model's map is measured on the model-input grid with Spearman rank
correlation and SSIM (engine.trust.similarity). A method is marked as **barely changing** when, with
every layer randomised, its map still has a rank correlation of at least ``BARELY_CHANGES``
(0.5) with the trained map: at that point the model computes nothing learnt, so half of the
map's ordering surviving means the map is mostly image structure. The paper showed Guided
Backprop and Guided Grad-CAM fail this way; on the demo model Grad-CAM's correlation falls
far below it.

Randomising weights needs the PyTorch model (ONNX graphs have their weights baked in): on an
ONNX-only install ``check_randomization`` raises EngineUnavailableError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from engine.analysis import LoadedModel, load_model
from engine.steps import Progress, run_to_end
from engine.cam import ClassMaps, get_method
from engine.errors import EngineUnavailableError
from engine.trust.faithfulness import input_map
from engine.preprocess import ModelInput
from engine.trust.similarity import spearman, ssim
from engine.cam import DEFAULT_METHOD

BARELY_CHANGES = 0.5

# (backend, model input, class index) -> (h, w) map on the input grid.
MapFunction = Callable[[object, ModelInput, int], np.ndarray]


def cam_map_function(method: str, alignment: str = "resize") -> MapFunction:
    """The map a CAM method gives for one class, on the model-input grid."""
    rule = get_method(method)

    def compute(backend, model_input: ModelInput, class_index: int) -> np.ndarray:
        outputs = backend.explain(model_input.tensor)
        grid = rule.raw_maps(outputs.activations, outputs.gradients)
        return input_map(ClassMaps(rule.name, grid, model_input.geometry, alignment), class_index)

    return compute


@dataclass(frozen=True)
class RandomizationStep:
    layers: str  # the block(s) re-initialised at this step (all blocks above stay randomised)
    saliency: np.ndarray  # (h, w) map on the input grid
    spearman: float
    ssim: float


@dataclass(frozen=True)
class SanityResult:
    method: str
    class_index: int
    trained: np.ndarray  # (h, w) the trained model's map
    steps: tuple[RandomizationStep, ...]
    threshold: float = BARELY_CHANGES

    @property
    def final_spearman(self) -> float:
        return self.steps[-1].spearman

    @property
    def barely_changes(self) -> bool:
        """True when the map survives randomising the whole model: it does not explain the model."""
        return self.final_spearman >= self.threshold

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "class_index": self.class_index,
            "steps": [{"layers": s.layers, "spearman": round(s.spearman, 6), "ssim": round(s.ssim, 6)}
                      for s in self.steps],
            "threshold_spearman": self.threshold,
            "barely_changes": self.barely_changes,
        }


def torch_model_for(model: LoadedModel) -> LoadedModel:
    """The same bundle on the torch engine (re-opened only if ``model`` runs on ONNX)."""
    if model.engine == "torch":
        return model
    try:
        return load_model(model.bundle, "torch")
    except EngineUnavailableError as exc:
        raise EngineUnavailableError(
            "the randomisation check re-initialises the model's weights and needs PyTorch and the "
            "bundle's safetensors weights; this install or bundle has only the ONNX engine",
            model.bundle.folder) from exc


def randomization_steps(model: LoadedModel, model_input: ModelInput, class_index: int,
                        method: str = DEFAULT_METHOD, map_function: MapFunction | None = None,
                        seed: int = 0) -> Generator[Progress, None, SanityResult]:
    """Cascading randomisation of ``model`` for one image and class, as a generator that yields
    :class:`Progress` between steps (close it to cancel) and returns the :class:`SanityResult`.
    ``map_function`` defaults to the CAM ``method``; tests pass their own (a broken method)."""
    model.bundle.require_single_input("the randomisation check")
    torch_model = torch_model_for(model)
    from engine.backends.torch_backend import cascading_randomization, randomization_groups

    total = len(randomization_groups(torch_model.backend.model)) + 1
    compute = map_function or cam_map_function(method, torch_model.bundle.map_alignment)
    yield Progress("trained map", 0, total)
    trained = compute(torch_model.backend, model_input, class_index)
    steps = []
    for layers, backend in cascading_randomization(torch_model.backend, seed):
        yield Progress(f"randomising {layers}", len(steps) + 1, total)
        saliency = compute(backend, model_input, class_index)
        steps.append(RandomizationStep(layers, saliency, spearman(trained, saliency), ssim(trained, saliency)))
    return SanityResult(method, int(class_index), trained, tuple(steps))


def check_randomization(model: LoadedModel, model_input: ModelInput, class_index: int,
                        method: str = DEFAULT_METHOD, map_function: MapFunction | None = None,
                        seed: int = 0) -> SanityResult:
    return run_to_end(randomization_steps(model, model_input, class_index, method, map_function, seed))
