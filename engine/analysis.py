"""Analysis out: one call from a loaded image and a model to predictions, maps and uncertainty.

``analysis_steps`` is a generator that yields :class:`Progress` between stages and returns the
:class:`Analysis`; a caller cancels by closing it (the viewer's worker does so between steps).
``analyze`` runs it to the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import numpy as np

from engine.backends import Backend, open_backend
from engine.bundle import ModelBundle, load_bundle
from engine.cam import DEFAULT_METHOD, ClassMaps, get_method
from engine.checkpoints import is_checkpoint_folder, load_checkpoint_folder
from engine.images import SourceImage
from engine.preprocess import ModelInput, prepare_input
from engine.result import result_record
from engine.steps import Progress, run_to_end
from engine.uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD, UncertaintySummary, calibrated_probabilities


@dataclass(frozen=True)
class AnalysisOptions:
    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    mc_samples: int = DEFAULT_SAMPLES  # 0 = no MC dropout
    seed: int = 0
    confidence_threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class LoadedModel:
    """A bundle with an open engine: what ``analyze`` needs besides the image."""

    bundle: ModelBundle
    backend: Backend

    @property
    def engine(self) -> str:
        return self.backend.engine


def load_model(bundle: str | Path | ModelBundle, engine: str = "auto") -> LoadedModel:
    if not isinstance(bundle, ModelBundle):
        # A Hugging Face or timm checkpoint folder (config.json, no manifest.json) opens as it is.
        bundle = load_checkpoint_folder(bundle) if is_checkpoint_folder(bundle) else load_bundle(bundle)
    return LoadedModel(bundle, open_backend(bundle, engine))


@dataclass(frozen=True, eq=False)
class Analysis:
    source: Path
    frame: int
    model_name: str
    model_version: str
    engine: str
    classes: tuple[str, ...]
    logits: np.ndarray  # (C,)
    probabilities: np.ndarray  # (C,) softmax(logits / the bundle's temperature), dropout off
    maps: dict[str, ClassMaps]  # method name -> maps for every class
    uncertainty: UncertaintySummary | None
    uncertainty_note: str  # why uncertainty is missing, when it is
    model_input: ModelInput = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.classes[self.predicted]

    def to_dict(self, method: str | None = None) -> dict:
        """This analysis in the one result schema (engine.result); ``method``: the map written
        or shown, if any."""
        return result_record(source=self.source, frame=self.frame, model_name=self.model_name,
                             model_version=self.model_version, engine=self.engine, classes=self.classes,
                             logits=self.logits, probabilities=self.probabilities, uncertainty=self.uncertainty,
                             uncertainty_note=self.uncertainty_note, maps=self.maps, timings=self.timings,
                             method=method)


def mc_uncertainty(model: LoadedModel, head_input: np.ndarray, samples: int, seed: int,
                   threshold: float) -> tuple[UncertaintySummary | None, str]:
    """MC-dropout over one image's cached head input, or why there is none (a note for the reader)."""
    if samples <= 1:
        return None, "Monte-Carlo dropout was switched off."
    if not model.backend.has_dropout:
        return None, "This model has no dropout in its head, so MC-dropout uncertainty is unavailable."
    logits = model.backend.mc_logits(head_input, samples, seed)
    return UncertaintySummary.from_logit_samples(logits, threshold, model.bundle.temperature), ""


def analysis_steps(
    image: SourceImage, model: LoadedModel, options: AnalysisOptions = AnalysisOptions()
) -> Generator[Progress, None, Analysis]:
    methods = [get_method(m) for m in options.methods]
    timings: dict[str, float] = {}
    total = 4
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    model_input = prepare_input(image, model.bundle.input)
    lap("preprocess")
    yield Progress("forward", 1, total)
    outputs = model.backend.explain(model_input.tensor)
    lap("forward")
    yield Progress("maps", 2, total)
    maps: dict[str, ClassMaps] = {}
    for method in methods:
        grid = method.raw_maps(outputs.activations, outputs.gradients)
        maps[method.name] = ClassMaps(method.name, grid, model_input.geometry, model.bundle.map_alignment)
    lap("maps")
    yield Progress("uncertainty", 3, total)
    uncertainty, note = mc_uncertainty(model, outputs.head_input, options.mc_samples, options.seed,
                                       options.confidence_threshold)
    lap("uncertainty")
    yield Progress("done", total, total)
    bundle = model.bundle
    return Analysis(
        source=image.path,
        frame=image.frame,
        model_name=bundle.name,
        model_version=bundle.version,
        engine=model.engine,
        classes=bundle.classes,
        logits=outputs.logits,
        probabilities=calibrated_probabilities(outputs.logits, bundle.temperature).astype(np.float32),
        maps=maps,
        uncertainty=uncertainty,
        uncertainty_note=note,
        model_input=model_input,
        timings=timings,
    )


def analyze(image: SourceImage, model: LoadedModel, options: AnalysisOptions = AnalysisOptions()) -> Analysis:
    return run_to_end(analysis_steps(image, model, options))
