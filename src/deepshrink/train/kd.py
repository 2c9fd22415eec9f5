"""Knowledge distillation's soft-target loss, and the training step that fine-tunes a compressed model on the
soft targets of the model it came from (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
2015).

It lives with the trainer rather than in :mod:`deepshrink.distill` because every fine-tune uses it — a pruned
model's (:mod:`deepshrink.prune`), Deep Compression's (:mod:`deepshrink.codec`) and the distillation verb's — and
``distill`` itself builds on ``prune`` (students derived by structured pruning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .trainer import are_probabilities


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over samples (and positions).

    Logits: (..., C), the class (vocabulary) axis last; leading axes are flattened into samples.
    The T² factor keeps the gradient scale independent of T (Hinton et al. 2015, §2).
    """
    c = student_logits.shape[-1]
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    s = F.log_softmax(student_logits.reshape(-1, c) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, c).detach() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            temperature: float, alpha: float) -> torch.Tensor:
    """``alpha · soft_target_loss + (1 − alpha) · cross_entropy(student, labels)``; without labels the soft term.

    ``labels``: int64 class indices shaped like the logits without their last axis.
    """
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if labels is None or alpha >= 1.0:
        return soft
    hard = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
    return alpha * soft + (1.0 - alpha) * hard


def _logits(out: Any) -> torch.Tensor:
    """A model's first output as logits: a softmax head's probabilities (N, C) become their logarithm, whose
    softmax gives them back (softening a probability row as if it were logits would flatten it wrongly)."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.float().clamp_min(1e-12).log() if are_probabilities(out) else out


def kd_step(teacher: nn.Module, temperature: float, alpha: float
            ) -> Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]:
    """A :class:`~deepshrink.train.Trainer` step: the model's first output against ``teacher``'s (run without
    gradients on the same inputs) by :func:`kd_loss`, the batch's last tensor the labels.

    ``teacher``: the uncompressed model, in eval mode, its parameters frozen. ``temperature`` > 0 softens both
    distributions; ``alpha`` in [0, 1] weighs the soft term against the labels' cross-entropy (1: labels unused).
    Outputs are class scores (N, C), logits or a softmax head's probabilities.
    """
    def step(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        *inputs, labels = batch
        with torch.no_grad():
            ref = _logits(teacher(*inputs))
        return kd_loss(_logits(model(*inputs)), ref, labels, temperature, alpha)

    return step


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every parameter frozen: the teacher of a fine-tune that changes
    ``model`` in place."""
    import copy

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
