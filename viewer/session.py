"""The reading session: which files are open, which image and frame is shown, the model, and
the jobs that load and analyse them. Qt-signal based, no widgets.

Its jobs run under three keys of the window's JobRunner, "model", "image" and "analysis": the
latest request of each wins, so a result for a model, image or analysis the reader has already
left never arrives here (viewer/jobs.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal

import engine
from engine import DEFAULT_METHOD, DEFAULT_SAMPLES, METHOD_NAMES
from viewer import logs
from viewer.display import DisplayImage, make_display_image, map_to_uint8, overlay_step
from viewer.jobs import CallJob, JobRunner, StepsJob, user_message

log = logging.getLogger("lantern.session")
# The session's job keys: the latest request of each wins (viewer/jobs.py).
MODEL_JOB, IMAGE_JOB, ANALYSIS_JOB = "model", "image", "analysis"
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}


@dataclass(frozen=True)
class LoadedImage:
    source: "engine.SourceImage"
    display: DisplayImage
    index: int  # position in the file list
    count: int  # files in the list


def expand_paths(paths) -> list[Path]:
    """Files as given; folders become their image files (sorted, recursively)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() in IMAGE_SUFFIXES or (child.suffix == "" and child.name != "DICOMDIR"):
                    files.append(child)
        else:
            files.append(path)
    return files


def with_display_maps(steps, method: str):
    """Run the engine's steps, then, still on the worker, make the overlay data the window shows
    first: the predicted class under the window's method. Other classes and methods (the
    compare view) are made when the reader asks for them (a few milliseconds each)."""
    analysis = yield from steps
    maps = analysis.maps.get(method) or next(iter(analysis.maps.values()))
    step = overlay_step(maps.shape)
    key = (maps.method, analysis.predicted, "normalized", step)
    return analysis, {key: map_to_uint8(maps.sampled_map(analysis.predicted, step), 1.0)}


def _displayable(source, index: int, count: int) -> LoadedImage:
    return LoadedImage(source, make_display_image(source.pixels), index, count)


class Session(QObject):
    modelReady = Signal(object)  # engine.LoadedModel
    modelFailed = Signal(str)  # what the reader reads (viewer.jobs.user_message)
    filesChanged = Signal(list)  # the open file list (a multi-input case is chosen from it)
    imageReady = Signal(object)  # LoadedImage
    imageFailed = Signal(str)
    progress = Signal(int, int, str)  # step, total, stage of the running analysis
    analysisReady = Signal(object)  # engine.Analysis
    analysisState = Signal(str)  # running / done / cancelled / failed
    analysisFailed = Signal(str)

    def __init__(self, parent: QObject | None = None, *, mc_samples: int = DEFAULT_SAMPLES,
                 steps_factory: Callable | None = None):
        super().__init__(parent)
        self.runner = JobRunner(self)
        self.files: list[Path] = []
        self.index = -1
        self.frame = 0
        self.model = None
        self.image: LoadedImage | None = None
        self.source = None  # engine.SourceImage of the current file, as soon as it is decoded
        self._early_result = None  # an analysis that finished before its image was on screen
        self._analysed_source = None
        self.analysis = None
        # (method, class, scale, step) -> uint8 overlay data made on the worker with the analysis
        self.display_maps: dict[tuple, object] = {}
        self.shown_method = DEFAULT_METHOD  # the window's method: its overlay is made first
        self.mc_samples = mc_samples
        # Tests substitute a slow or failing generator here; production uses the engine's.
        self.steps_factory = steps_factory or engine.analysis_steps

    # model -----------------------------------------------------------------
    def load_model(self, folder: str | Path, engine_name: str = "auto") -> None:
        folder = Path(folder)
        job = CallJob[engine.LoadedModel](lambda: engine.load_model(folder, engine_name), "loading the model")
        self.runner.start(job, key=MODEL_JOB, on_done=self._model_done,
                          on_failed=lambda exc: self.modelFailed.emit(user_message(exc, job.what)))

    def _model_done(self, model: engine.LoadedModel) -> None:
        self.model = model
        self.modelReady.emit(model)
        if self.source is not None:
            self.analyse()

    # images ------------------------------------------------------------------
    def open_paths(self, paths) -> bool:
        files = expand_paths(paths)
        if not files:
            self.imageFailed.emit("No image files found in " + ", ".join(Path(p).name for p in paths))
            return False
        self.open_files(files)
        return True

    def open_files(self, files, index: int = 0) -> None:
        self.files = [Path(f) for f in files]
        self.filesChanged.emit(list(self.files))
        self.show_index(index)

    def show_index(self, index: int, frame: int = 0) -> None:
        if not self.files:
            return
        self.index = max(0, min(index, len(self.files) - 1))
        self.frame = frame
        self.cancel()  # the user has moved on: whatever was running is for another image
        self.analysis = None
        self.source = None
        self._early_result = None
        path = self.files[self.index]
        logs.register_path(path)
        job = CallJob[engine.SourceImage](lambda: engine.load_image(path, frame), "opening an image")
        self.runner.start(job, key=IMAGE_JOB, on_done=self._source_done, on_failed=self._image_failed)

    def step(self, delta: int) -> None:
        """Wheel / arrow: next frame of a multi-frame file, else the next file."""
        if self.image is not None and self.image.source.n_frames > 1:
            frame = self.frame + delta
            if 0 <= frame < self.image.source.n_frames:
                self.show_index(self.index, frame)
                return
        self.step_file(delta)

    def step_frame(self, delta: int) -> None:
        """The next or previous frame of a multi-frame file; nothing past its first or last."""
        if self.image is not None and self.image.source.n_frames > 1:
            frame = self.frame + delta
            if 0 <= frame < self.image.source.n_frames:
                self.show_index(self.index, frame)

    def step_file(self, delta: int) -> None:
        target = self.index + delta
        if self.files and 0 <= target < len(self.files) and target != self.index:
            self.show_index(target)

    def _source_done(self, source: engine.SourceImage) -> None:
        """Decoded: the analysis and the display image are made at the same time, on two
        workers, instead of one after the other."""
        self.source = source
        if self.model is not None:
            self.analyse()
        index, count = self.index, len(self.files)
        job = CallJob[LoadedImage](lambda: _displayable(source, index, count), "preparing the image for display")
        self.runner.start(job, key=IMAGE_JOB, on_done=self._image_done, on_failed=self._image_failed)

    def _image_done(self, image: LoadedImage) -> None:
        self.image = image
        self.imageReady.emit(image)
        if self._early_result is not None:
            result, self._early_result = self._early_result, None
            self._show_analysis(result)

    def _image_failed(self, exc: BaseException) -> None:
        self.imageFailed.emit(user_message(exc, "opening an image"))

    # analysis ----------------------------------------------------------------
    def analyse(self) -> None:
        if self.model is None or self.source is None or self.model.bundle.multi_input:
            return  # a multi-input model analyses cases (viewer/case_view.py), not one image
        self.cancel()
        source, model = self.source, self.model
        self._analysed_source = source
        options = engine.AnalysisOptions(methods=METHOD_NAMES, mc_samples=self.mc_samples)
        factory, method = self.steps_factory, self.shown_method
        # The result: the analysis and the overlay data the window shows first (with_display_maps).
        job = StepsJob[tuple[engine.Analysis, dict]](
            lambda: with_display_maps(factory(source, model, options), method), "analysing an image")
        self.runner.start(job, key=ANALYSIS_JOB, on_done=self._analysis_done, on_failed=self._analysis_failed,
                          on_progress=lambda p: self.progress.emit(p.step, p.total, p.stage))
        self.analysisState.emit("running")

    def cancel(self) -> bool:
        """Stop the running analysis; nothing it reports from now on arrives here."""
        if self.runner.drop(ANALYSIS_JOB):
            log.info("analysis cancelled")
            self.analysisState.emit("cancelled")
            return True
        return False

    @property
    def analysing(self) -> bool:
        return self.runner.running(ANALYSIS_JOB)

    def _analysis_done(self, result: tuple[engine.Analysis, dict]) -> None:
        if self.image is None or self.image.source is not self._analysed_source:
            self._early_result = result  # shown as soon as its image is
            return
        self._show_analysis(result)

    def _show_analysis(self, result) -> None:
        analysis, self.display_maps = result
        self.analysis = analysis
        self.analysisReady.emit(analysis)
        self.analysisState.emit("done")

    def _analysis_failed(self, exc: BaseException) -> None:
        self.analysisFailed.emit(user_message(exc, "analysing an image"))
        self.analysisState.emit("failed")
