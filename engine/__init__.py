"""Lantern's model side: Qt-free, and torch-free unless the PyTorch engine is used.

The tree is the architecture. At the top, the runtime pipeline, in the order data flows through
it (all of it ships in the packaged app, except the torch engine):

    images.load_image       a DICOM/PNG/JPEG/TIFF frame -> SourceImage (source_image)
                            (DICOM: dicom reads and decodes, dicom_codestream refuses a
                            compressed frame whose declared size exceeds the header's before a
                            native decoder sees it, dicom_pixels turns decoded pixels into
                            modality units, dicom_header reads the header)
    studies.scan_studies    a folder or DICOMDIR -> studies -> series -> images
    bundle.load_bundle      manifest.json + weights -> ModelBundle
                            (checkpoints: a Hugging Face or timm folder as it is)
    preprocess.prepare_input  SourceImage -> the tensor the model sees (+ geometry back)
    backends.open_backend   torch / onnx / onnx-int8 -> logits, activations, all-class gradients
    cam                     one CAM core + a weighting rule per method; maps warped on demand
    uncertainty             MC-dropout samples -> UncertaintySummary
    analysis.analyze        all of the above -> Analysis (plain numpy data); a multi-input
                            model's case is one image per named input
                            (case_inputs proposes which image goes to which input)
    steps                   Progress, and run_to_end for any generator of steps
    errors, files, resources, version   plain-words errors; every write (atomic, never over a
                            source); where the demo resources are; Lantern's version

Around it, one sub-package each, a layer may import those below it and the pipeline, never
those above it (import-linter contracts in pyproject.toml):

    cli/         lantern-engine: argument parsing and the subcommands, bench    not shipped
    making/      training, onnx_export (+ its graph rewrites, ONNX graph tools and
                 verification), quantization (+ int8_validation), checkpoint_bundle
                 (a Hugging Face / timm folder made a bundle): need torch       not shipped
    service/     lantern-engine serve: the analysis over HTTP (FastAPI)       not shipped
    workflows/   batch (+ batch_record, batch_failures, uncertainty_report), labels, evaluation
                 (+ _run, _outputs)                                           shipped
    exports/     overlay, pictures, report, dicom_export (Secondary Capture), parametric_map,
                 structured_report (TID 1500), dicom_objects (the three), anonymize, figures  shipped
    network/     the DICOM node: storage_scp (+ inbox, dataset_check, network_events), nodes,
                 association, query_retrieve, send, verification              shipped
    trust/       faithfulness, sanity, similarity, calibration, temperature    shipped
    synthetic/   phantoms, demo_data, teaching_set (patient-free demo data)    shipped

The names below are the pipeline's interface, the one the viewer (or any other front end) uses:
it never imports a pipeline module directly (an import-linter contract), and it uses trust/,
workflows/, exports/ and synthetic/ directly, never cli/ or making/. ``scan_studies`` is loaded
on first use: it brings pydicom, which opening a PNG or starting the window does not need.
"""

from engine.analysis import Analysis, AnalysisOptions, LoadedModel, analysis_steps, analyze, load_model
from engine.backends import ENGINES
from engine.bundle import ModelBundle
from engine.case_inputs import BY_ORDER, BY_VIEW_POSITION, Assignment, propose_inputs
from engine.cam import DEFAULT_METHOD, METHOD_NAMES, method_label
from engine.errors import (
    AnalysisCancelled,
    EngineUnavailableError,
    ImageLoadError,
    ImageTooLargeError,
    LanternError,
    ModelBundleError,
    NotAnImageError,
)
from engine.files import folder_size, unused_path, write_bytes_atomic, write_json_atomic
from engine.images import SourceImage, load_image
from engine.resources import DEMO_MODEL, DEMO_STUDIES, ROOT, TEACHING_LABELS
from engine.steps import Progress, Steps, run_to_end
from engine.uncertainty import DEFAULT_SAMPLES
from engine.version import lantern_version

__all__ = [
    # analysing: open an image and a model, analyse, as steps that can be stopped
    "Analysis", "AnalysisOptions", "LoadedModel", "ModelBundle", "SourceImage", "analysis_steps", "analyze",
    "load_image", "load_model", "scan_studies", "Progress", "Steps", "run_to_end",
    # a multi-input model's case: which image goes to which input
    "Assignment", "BY_ORDER", "BY_VIEW_POSITION", "propose_inputs",
    # the choices a front end offers, with their defaults
    "ENGINES", "DEFAULT_METHOD", "METHOD_NAMES", "method_label", "DEFAULT_SAMPLES",
    # what can go wrong, in plain words
    "AnalysisCancelled", "EngineUnavailableError", "ImageLoadError", "ImageTooLargeError", "LanternError",
    "ModelBundleError", "NotAnImageError",
    # writing files (atomic, never over a source), the shipped resources, Lantern's version
    "folder_size", "unused_path", "write_bytes_atomic", "write_json_atomic",
    "DEMO_MODEL", "DEMO_STUDIES", "ROOT", "TEACHING_LABELS", "lantern_version",
]


def __getattr__(name: str):
    if name == "scan_studies":  # loaded on first use (see above)
        from engine.studies import scan_studies

        return scan_studies
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
