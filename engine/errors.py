"""Errors a user can read.

Every error Lantern raises for bad input names the file and says, in plain words, what is wrong
with it; the technical cause stays chained (``raise ... from exc``) for the log.
"""

from __future__ import annotations

from pathlib import Path


class LanternError(Exception):
    """Base of every error Lantern reports to a user."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.path.name}: {self.reason}" if self.path else self.reason


class ImageLoadError(LanternError):
    """The file could not be opened as an image (unreadable, truncated, undecodable)."""


class NotAnImageError(ImageLoadError):
    """The file is readable but holds no image (an RT plan, a structured report, a waveform...)."""


class ImageTooLargeError(ImageLoadError):
    """The header declares more pixels than the file holds or than memory allows."""


class ModelBundleError(LanternError):
    """A model bundle is missing, malformed, unsafe or does not match its weights."""


class EngineUnavailableError(LanternError):
    """The requested engine (torch, onnx, onnx-int8) cannot run here."""


class AnalysisCancelled(LanternError):
    """The user stopped an analysis before it finished."""
