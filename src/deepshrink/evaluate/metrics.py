"""Task metrics: accuracy on labelled data, fidelity against a reference model, KL."""

from __future__ import annotations

import numpy as np

from ..convert.parity import OutputDiff, compare_outputs
from ..errors import InputError


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (0..1) of classifier outputs against integer labels."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(logits) != len(labels) or len(labels) == 0 or labels.size != len(labels):
        raise InputError(f"accuracy needs as many labels as outputs (got {len(labels)} labels, {len(logits)} outputs)")
    if logits.ndim != 2:
        raise InputError(f"accuracy needs (N, classes) outputs, got shape {list(logits.shape)}")
    return float((logits.argmax(1) == labels.reshape(-1)).mean())


def fidelity(reference: np.ndarray, output: np.ndarray) -> OutputDiff:
    """Cosine (mean/min per sample), max-abs, relative error and top-1 agreement."""
    return compare_outputs(reference, output)


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(ref) || softmax(out)) over samples, in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(np.asarray(ref_logits, np.float64)), log_softmax(np.asarray(logits, np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())
