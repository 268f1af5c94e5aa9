"""One uncertainty summary from Monte-Carlo dropout samples.

Given S stochastic softmax outputs p_s (S, C): the predictive distribution is their mean;
predictive entropy H[mean p] is the total uncertainty; the mean of the per-sample entropies is
the part the model expects from noisy data; their difference, the mutual information, is the
model's own (epistemic) uncertainty. Confidence = 1 - H / log C maps entropy onto 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.85
DEFAULT_SAMPLES = 20
_TINY = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T), in float64: every probability Lantern shows (deterministic pass, MC
    samples, batch rows, evaluation) goes through here, with the bundle's fitted temperature."""
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, _TINY, 1.0))).sum(axis=-1)


@dataclass(frozen=True)
class UncertaintySummary:
    samples: int
    mean_probabilities: np.ndarray  # (C,)
    std_probabilities: np.ndarray  # (C,) per-class spread across samples
    predictive_entropy: float  # nats
    expected_entropy: float  # nats
    mutual_information: float  # nats
    confidence: float  # 1 - H / log C, in 0..1
    threshold: float
    sample_probabilities: np.ndarray  # (S, C), kept for plots

    @property
    def flagged(self) -> bool:
        """True when confidence is below the threshold: the reader should look harder."""
        return self.confidence < self.threshold

    @classmethod
    def from_logit_samples(cls, logits: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                           temperature: float = 1.0) -> "UncertaintySummary":
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or logits.shape[0] < 2 or logits.shape[1] < 2:
            raise ValueError("MC dropout needs at least 2 samples of at least 2 classes")
        # Tempered like the deterministic pass, so gauges and probabilities agree.
        probs = calibrated_probabilities(logits, temperature)
        mean = probs.mean(axis=0)
        h = float(entropy(mean))
        expected = float(entropy(probs).mean())
        n_classes = probs.shape[1]
        return cls(
            samples=probs.shape[0],
            mean_probabilities=mean.astype(np.float32),
            std_probabilities=probs.std(axis=0).astype(np.float32),
            predictive_entropy=h,
            expected_entropy=expected,
            # Clipped: rounding can make H slightly smaller than E[H] for near-identical samples.
            mutual_information=max(0.0, h - expected),
            confidence=float(np.clip(1.0 - h / np.log(n_classes), 0.0, 1.0)),
            threshold=float(threshold),
            sample_probabilities=probs.astype(np.float32),
        )

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "mean_probabilities": [round(float(v), 6) for v in self.mean_probabilities],
            "std_probabilities": [round(float(v), 6) for v in self.std_probabilities],
            "predictive_entropy": round(self.predictive_entropy, 6),
            "expected_entropy": round(self.expected_entropy, 6),
            "mutual_information": round(self.mutual_information, 6),
            "confidence": round(self.confidence, 6),
            "threshold": self.threshold,
            "flagged": self.flagged,
        }
