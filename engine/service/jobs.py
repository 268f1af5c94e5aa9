"""What a worker thread does with an upload: load it, analyse it, build the response.

Everything here runs on the pool's threads (engine.service.pool), never on the event loop: a
load, an analysis or a PNG encoding would stop every other request while it ran. Errors are
Lantern's own (``LanternError``, whose ``reason`` the viewer shows too); the app turns them into
422 responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Sequence

from engine.analysis import AnalysisOptions, LoadedModel, analyze
from engine.errors import LanternError
from engine.exports.dicom_objects import DICOM_OBJECT_KINDS
from engine.images import load_image
from engine.service.records import dicom_entries, map_entries, upload_record
from engine.service.uploads import PrivateFolder

# The command line's defaults (MC samples, seed, threshold): the same file gives the same
# numbers here as in ``lantern-engine explain`` and the viewer.
CLASSIFY_OPTIONS = AnalysisOptions(methods=())


@dataclass(frozen=True)
class ExplainChoice:
    methods: tuple[str, ...]  # canonical method names, at least one
    classes: tuple[int, ...] | None  # class indices; None: the predicted class
    outputs: frozenset[str]  # some of records.OUTPUTS
    dicom_kinds: tuple[str, ...] = DICOM_OBJECT_KINDS  # with "dicom" in outputs: which objects


class Analyst:
    """The loaded model and the private folder uploads pass through, shared by all workers
    (analyses of one loaded model may run on several threads at once: engine.backends)."""

    def __init__(self, model: LoadedModel, folder: PrivateFolder):
        self.model, self.folder = model, folder

    def classify(self, upload: BinaryIO, frame: int) -> dict:
        """Probabilities, predicted class, uncertainty and input check: one record, no maps."""
        with self.folder.saved(upload) as path:
            image = load_image(path, frame, with_tags=False)  # the tag rows are for the viewer's browser
            return upload_record(analyze(image, self.model, CLASSIFY_OPTIONS))

    def classify_each(self, uploads: Sequence[BinaryIO], frame: int) -> dict:
        """A result or the plain-words reason per file, in upload order: one unreadable file does
        not cost the others theirs."""
        results = []
        for index, upload in enumerate(uploads):
            try:
                results.append({"index": index, "status": 200, "result": self.classify(upload, frame)})
            except LanternError as exc:
                results.append({"index": index, "status": 422, "error": exc.reason})
        failed = sum(r["status"] != 200 for r in results)
        return {"results": results, "analysed": len(results) - failed, "failed": failed}

    def explain(self, upload: BinaryIO, frame: int, choice: ExplainChoice) -> dict:
        """The record with maps (its ``method`` is the first one asked for), plus per method and
        class the outputs asked for: ``explanations`` (PNG overlay, float array) and
        ``dicom_objects`` (records.dicom_entries)."""
        with self.folder.saved(upload) as path:
            image = load_image(path, frame, with_tags=False)
            analysis = analyze(image, self.model, AnalysisOptions(methods=choice.methods))
            classes = choice.classes if choice.classes is not None else (analysis.predicted,)
            record = upload_record(analysis, choice.methods[0])
            if choice.outputs & {"png", "array"}:
                record["explanations"] = map_entries(image, analysis, choice.methods, classes, choice.outputs)
            if "dicom" in choice.outputs:
                # Made while the temporary file exists: the export reads the source header again.
                record["dicom_objects"] = dicom_entries(self.folder.path, image, analysis, self.model, choice.methods,
                                                        classes, choice.dicom_kinds)
            return record
