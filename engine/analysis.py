"""Analysis out: one call from a loaded image and a model to predictions, maps and uncertainty.

``analysis_steps`` is a generator that yields :class:`Progress` between stages and returns the
:class:`Analysis`; a caller cancels by closing it (the viewer's worker does so between steps).
``analyze`` runs it to the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Mapping

import numpy as np

from engine.backends import Backend, open_backend
from engine.bundle import ModelBundle, load_bundle
from engine.cam import DEFAULT_METHOD, ClassMaps, get_method
from engine.errors import LanternError
from engine.checkpoints import is_checkpoint_folder, load_checkpoint_folder
from engine.images import SourceImage
from engine.intended_inputs import InputCheck, check_inputs
from engine.ood import OodStatistics, load_ood
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
    ood: OodStatistics | None = None  # the bundle's out-of-distribution statistics, if fitted

    @property
    def engine(self) -> str:
        return self.backend.engine


def load_model(bundle: str | Path | ModelBundle, engine: str = "auto") -> LoadedModel:
    if not isinstance(bundle, ModelBundle):
        # A Hugging Face or timm checkpoint folder (config.json, no manifest.json) opens as it is.
        bundle = load_checkpoint_folder(bundle) if is_checkpoint_folder(bundle) else load_bundle(bundle)
    backend = open_backend(bundle, engine)
    return LoadedModel(bundle, backend, load_ood(bundle.folder, bundle.manifest.get("ood"), backend.engine))


@dataclass(frozen=True, eq=False)
class InputView:
    """One model input's image and its maps (a multi-input case has one per input)."""

    name: str  # the bundle's input name (``image`` for an ordinary model)
    source: Path
    frame: int
    maps: dict[str, ClassMaps]  # method name -> maps for every class, on this image
    model_input: ModelInput = field(repr=False)


@dataclass(frozen=True, eq=False)
class Analysis:
    model_name: str
    model_version: str
    engine: str
    classes: tuple[str, ...]
    logits: np.ndarray  # (C,)
    probabilities: np.ndarray  # (C,) softmax(logits / the bundle's temperature), dropout off
    views: tuple[InputView, ...]  # one per model input, in the bundle's order
    uncertainty: UncertaintySummary | None
    uncertainty_note: str  # why uncertainty is missing, when it is
    input_check: InputCheck = field(default_factory=InputCheck)  # inside what the model was made for?
    head_input: np.ndarray | None = field(default=None, repr=False)  # features entering the head
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    # An ordinary model's one image (a multi-input case's first), as most callers need it.
    @property
    def source(self) -> Path:
        return self.views[0].source

    @property
    def frame(self) -> int:
        return self.views[0].frame

    @property
    def maps(self) -> dict[str, ClassMaps]:
        return self.views[0].maps

    @property
    def model_input(self) -> ModelInput:
        return self.views[0].model_input

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
                             method=method, inputs=[(v.name, v.source, v.frame, v.maps) for v in self.views],
                             input_check=self.input_check)


def mc_uncertainty(model: LoadedModel, head_input: np.ndarray, samples: int, seed: int,
                   threshold: float) -> tuple[UncertaintySummary | None, str]:
    """MC-dropout over one image's cached head input, or why there is none (a note for the reader)."""
    if samples <= 1:
        return None, "Monte-Carlo dropout was switched off."
    if not model.backend.has_dropout:
        return None, "This model has no dropout in its head, so MC-dropout uncertainty is unavailable."
    logits = model.backend.mc_logits(head_input, samples, seed)
    return UncertaintySummary.from_logit_samples(logits, threshold, model.bundle.temperature), ""


def case_images(images: SourceImage | Mapping[str, SourceImage], bundle: ModelBundle) -> tuple[SourceImage, ...]:
    """The images in the bundle's input order: one image for an ordinary model, one per named
    input for a multi-input model; a missing or unknown input is a plain-words error."""
    if isinstance(images, SourceImage):
        if bundle.multi_input:
            raise LanternError(f"this model takes one image per input ({', '.join(bundle.input_names)}); "
                               f"give each, e.g. --input {bundle.input_names[0]}=FILE", images.path)
        return (images,)
    unknown = sorted(set(images) - set(bundle.input_names))
    if unknown:
        raise LanternError(f"this model has no input named {', '.join(unknown)} "
                           f"(its inputs: {', '.join(bundle.input_names)})")
    missing = [name for name in bundle.input_names if name not in images]
    if missing:
        raise LanternError(f"no image was given for the model's input {', '.join(missing)} "
                           f"(it takes {', '.join(bundle.input_names)})")
    return tuple(images[name] for name in bundle.input_names)


def analysis_steps(
    image: SourceImage | Mapping[str, SourceImage], model: LoadedModel, options: AnalysisOptions = AnalysisOptions()
) -> Generator[Progress, None, Analysis]:
    """``image``: one image, or for a multi-input model a case: input name -> image."""
    methods = [get_method(m) for m in options.methods]
    bundle = model.bundle
    images = case_images(image, bundle)
    timings: dict[str, float] = {}
    total = 4
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    specs = [i.spec for i in bundle.inputs] if bundle.multi_input else [bundle.input]
    inputs = [prepare_input(img, spec) for img, spec in zip(images, specs)]
    lap("preprocess")
    yield Progress("forward", 1, total)
    tensors = tuple(i.tensor for i in inputs)
    outputs = model.backend.explain(tensors if bundle.multi_input else tensors[0])
    lap("forward")
    yield Progress("maps", 2, total)
    alignments = [i.map_alignment for i in bundle.inputs] if bundle.multi_input else [bundle.map_alignment]
    views = []
    for name, img, model_input, layer, alignment in zip(bundle.input_names, images, inputs, outputs.layers,
                                                        alignments):
        maps = {m.name: ClassMaps(m.name, m.raw_maps(layer.activations, layer.gradients), model_input.geometry,
                                  alignment) for m in methods}
        views.append(InputView(name, img.path, img.frame, maps, model_input))
    if len(views) > 1:
        for method in methods:
            # One scale per class across the case: a view with less evidence looks dimmer.
            ClassMaps.share_scale([v.maps[method.name] for v in views])
    lap("maps")
    yield Progress("uncertainty", 3, total)
    uncertainty, note = mc_uncertainty(model, outputs.head_input, options.mc_samples, options.seed,
                                       options.confidence_threshold)
    input_check = check_inputs(bundle.intended_inputs, images, model.ood, outputs.head_input)
    lap("uncertainty")
    yield Progress("done", total, total)
    return Analysis(
        model_name=bundle.name,
        model_version=bundle.version,
        engine=model.engine,
        classes=bundle.classes,
        logits=outputs.logits,
        probabilities=calibrated_probabilities(outputs.logits, bundle.temperature).astype(np.float32),
        views=tuple(views),
        uncertainty=uncertainty,
        uncertainty_note=note,
        input_check=input_check,
        head_input=outputs.head_input,
        timings=timings,
    )


def analyze(image: SourceImage | Mapping[str, SourceImage], model: LoadedModel, options: AnalysisOptions = AnalysisOptions()) -> Analysis:
    return run_to_end(analysis_steps(image, model, options))
