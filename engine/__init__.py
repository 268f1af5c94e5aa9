"""Lantern's model side: Qt-free, and torch-free unless the PyTorch engine is used.

The pipeline, in the order data flows through it:

    images.load_image       a DICOM/PNG/JPEG/TIFF frame -> SourceImage
                            (DICOM pixels in dicom, its header in dicom_header)
    studies.scan_studies    a folder or DICOMDIR -> studies -> series -> images
    bundle.load_bundle      manifest.json + weights -> ModelBundle
    preprocess.prepare_input  SourceImage -> the tensor the model sees (+ geometry back)
    backends.open_backend   torch / onnx / onnx-int8 -> logits, activations, all-class gradients
    cam                     one CAM core + a weighting rule per method; maps warped on demand
    uncertainty             MC-dropout samples -> UncertaintySummary
    analysis.analyze        all of the above -> Analysis (plain numpy data)

Around it:

    trust checks   faithfulness (deletion/insertion), sanity (model randomisation),
                   similarity (rank correlation, SSIM, method agreement), calibration
                   (reliability, ECE), temperature (scaling fitted on labelled cases)
    workflows      batch (+ batch_record, batch_command), labels, evaluation (+ evaluation_run,
                   evaluate_command, figures), exports: overlay, pictures, report,
                   dicom_export, anonymize; files (every write: atomic, never over a source)
    making models  training, onnx_export, quantization (need torch; not in the packaged app);
                   phantoms, demo_data, teaching_set (synthetic data); benchmark
    command line   cli (arguments) + commands (what the subcommands do)
"""

from .analysis import Analysis, AnalysisOptions, LoadedModel, Progress, analysis_steps, analyze, load_model
from .errors import (
    AnalysisCancelled,
    EngineUnavailableError,
    ImageLoadError,
    ImageTooLargeError,
    LanternError,
    ModelBundleError,
    NotAnImageError,
)
from .images import SourceImage, load_image

__all__ = [
    "Analysis", "AnalysisOptions", "LoadedModel", "Progress", "analysis_steps", "analyze", "load_model",
    "AnalysisCancelled", "EngineUnavailableError", "ImageLoadError", "ImageTooLargeError",
    "LanternError", "ModelBundleError", "NotAnImageError", "SourceImage", "load_image",
]
