"""Lantern's model side: Qt-free, and torch-free unless the PyTorch engine is used.

The pipeline, in the order data flows through it:

    images.load_image       a DICOM/PNG/JPEG/TIFF frame -> SourceImage
    studies.scan_studies    a folder or DICOMDIR -> studies -> series -> images
    bundle.load_bundle      manifest.json + weights -> ModelBundle
    preprocess.prepare_input  SourceImage -> the tensor the model sees (+ geometry back)
    backends.open_backend   torch / onnx / onnx-int8 -> logits, activations, all-class gradients
    cam                     one CAM core + a weighting rule per method
    uncertainty             MC-dropout samples -> UncertaintySummary
    analysis.analyze        all of the above -> Analysis (plain numpy data)
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
