"""Lantern's model side: Qt-free, and torch-free unless the PyTorch engine is used.

The tree is the architecture. At the top, the runtime pipeline, in the order data flows through
it (all of it ships in the packaged app, except the torch engine):

    images.load_image       a DICOM/PNG/JPEG/TIFF frame -> SourceImage (source_image)
                            (DICOM: dicom reads and decodes, dicom_pixels turns decoded
                            pixels into modality units, dicom_header reads the header)
    studies.scan_studies    a folder or DICOMDIR -> studies -> series -> images
    bundle.load_bundle      manifest.json + weights -> ModelBundle
    preprocess.prepare_input  SourceImage -> the tensor the model sees (+ geometry back)
    backends.open_backend   torch / onnx / onnx-int8 -> logits, activations, all-class gradients
    cam                     one CAM core + a weighting rule per method; maps warped on demand
    uncertainty             MC-dropout samples -> UncertaintySummary
    analysis.analyze        all of the above -> Analysis (plain numpy data)
    steps                   Progress, and run_to_end for any generator of steps
    errors, files, resources, version   plain-words errors; every write (atomic, never over a
                            source); where the demo resources are; Lantern's version

Around it, one sub-package each, a layer may import those below it and the pipeline, never
those above it (import-linter contracts in pyproject.toml):

    cli/         lantern-engine: argument parsing and the subcommands, bench    not shipped
    making/      training, onnx_export (+ its graph rewrites, ONNX graph tools and
                 verification), quantization: need torch                       not shipped
    workflows/   batch (+ batch_record), labels, evaluation (+ _run, _outputs)   shipped
    exports/     overlay, pictures, report, dicom_export, anonymize, figures    shipped
    trust/       faithfulness, sanity, similarity, calibration, temperature    shipped
    synthetic/   phantoms, demo_data, teaching_set (patient-free demo data)    shipped

The viewer calls the pipeline through the names below, and uses trust/, workflows/, exports/
and synthetic/ directly; it never imports cli/ or making/.
"""

from engine.analysis import Analysis, AnalysisOptions, LoadedModel, analysis_steps, analyze, load_model
from engine.errors import (
    AnalysisCancelled,
    EngineUnavailableError,
    ImageLoadError,
    ImageTooLargeError,
    LanternError,
    ModelBundleError,
    NotAnImageError,
)
from engine.images import SourceImage, load_image
from engine.steps import Progress, run_to_end

__all__ = [
    "Analysis", "AnalysisOptions", "LoadedModel", "Progress", "analysis_steps", "analyze", "load_model", "run_to_end",
    "AnalysisCancelled", "EngineUnavailableError", "ImageLoadError", "ImageTooLargeError",
    "LanternError", "ModelBundleError", "NotAnImageError", "SourceImage", "load_image",
]
