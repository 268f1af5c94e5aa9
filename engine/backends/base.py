"""What every engine gives back: the same plain arrays (:class:`ForwardOutputs`) behind one
protocol (:class:`Backend`), so the CAM rules, the uncertainty summary and everything after them
are shared."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

ENGINES = ("torch", "onnx", "onnx-int8")
THREADS_VARIABLE = "LANTERN_THREADS"

log = logging.getLogger(__name__)


def thread_count() -> int:
    """Threads an engine computes on: the cores this process may run on (its CPU affinity, which
    containers and ``taskset`` restrict; ``os.cpu_count`` where there is none), or fewer when
    ``LANTERN_THREADS`` (a positive integer) says so, e.g. to leave cores to other programs.
    Never more than the allowed cores: extra threads only contend for them. An invalid value is
    ignored with a warning rather than stopping the engine."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cores = os.cpu_count() or 1
    cores = max(1, cores)
    wanted = os.environ.get(THREADS_VARIABLE, "").strip()
    if not wanted:
        return cores
    try:
        value = int(wanted)
    except ValueError:
        value = 0
    if value < 1:
        log.warning("ignoring %s=%r: it must be a positive whole number; using %d threads",
                    THREADS_VARIABLE, wanted, cores)
        return cores
    return min(value, cores)


@dataclass(frozen=True)
class ExplainedLayer:
    """The explained layer of one model input, laid out as every CAM rule expects."""

    activations: np.ndarray  # (K, h, w)
    gradients: np.ndarray  # (C, K, h, w): d logit_c / d activations


@dataclass(frozen=True)
class ForwardOutputs:
    """One image's (or one multi-input case's) forward pass, with what every CAM rule and MC
    dropout needs."""

    logits: np.ndarray  # (C,)
    layers: tuple[ExplainedLayer, ...]  # one per model input, in the bundle's input order
    head_input: np.ndarray  # features entering the dropout head (computed once, reused by MC)

    @property
    def activations(self) -> np.ndarray:
        """The (first) input's explained layer, (K, h, w)."""
        return self.layers[0].activations

    @property
    def gradients(self) -> np.ndarray:
        return self.layers[0].gradients


class Backend(Protocol):
    engine: str
    has_dropout: bool

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Plain logits (B, C) for a batch (B, C_in, h, w): no maps, no sampling. (A multi-input
        model takes a tuple of such batches, one per input, here and below.)"""

    def forward_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, C) and head inputs (B, F...) for a batch: what a triage needs (the
        prediction and MC dropout), without maps."""

    def explain(self, tensor: np.ndarray) -> ForwardOutputs:
        """Logits, activations and all-class gradients for one input (1, C_in, h, w)."""

    def mc_logits(self, head_input: np.ndarray, samples: int, seed: int) -> np.ndarray:
        """(samples, C) logits of the head with dropout active, over cached features."""
