"""What every engine gives back: the same plain arrays (:class:`ForwardOutputs`) behind one
protocol (:class:`Backend`), so the CAM rules, the uncertainty summary and everything after them
are shared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

ENGINES = ("torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class ForwardOutputs:
    """One image's forward pass, with what every CAM rule and MC dropout needs."""

    logits: np.ndarray  # (C,)
    activations: np.ndarray  # (K, h, w): the explained layer
    gradients: np.ndarray  # (C, K, h, w): d logit_c / d activations
    head_input: np.ndarray  # features entering the dropout head (computed once, reused by MC)


class Backend(Protocol):
    engine: str
    has_dropout: bool

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Plain logits (B, C) for a batch (B, C_in, h, w): no maps, no sampling."""

    def forward_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, C) and head inputs (B, F...) for a batch: what a triage needs (the
        prediction and MC dropout), without maps."""

    def explain(self, tensor: np.ndarray) -> ForwardOutputs:
        """Logits, activations and all-class gradients for one input (1, C_in, h, w)."""

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        """(samples, C) logits of the head with dropout active, over cached features."""
