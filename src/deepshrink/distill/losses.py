"""Distillation losses. Every function takes float tensors (bfloat16 ones, from a forward pass under mixed
precision, are computed in float32) and returns a float32 scalar (0-d) tensor.

Sources: soft targets with the T² factor — Hinton, Vinyals & Dean, "Distilling the Knowledge
in a Neural Network" (2015); hidden-state hints through a learned projection — Romero et al.,
FitNets (2015); hidden-state MSE with a uniform layer map — Jiao et al., TinyBERT (2020); attention
distributions compared by KL divergence — Wang et al., MiniLM (2020); sentence-embedding MSE — Reimers & Gurevych, "Making Monolingual Sentence
Embeddings Multilingual using Knowledge Distillation" (2020).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ..train.kd import kd_loss, soft_target_loss

__all__ = ["attention_loss", "embedding_loss", "feature_loss", "hidden_loss", "kd_loss", "soft_target_loss",
           "uniform_layer_map"]


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, metric: str = "mse") -> torch.Tensor:
    """``mse``: mean squared difference; ``cosine``: mean of 1 − cos over the last axis. Shapes (..., D) equal."""
    student, teacher = student.float(), teacher.detach().float()
    if metric == "mse":
        return F.mse_loss(student, teacher)
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown feature metric {metric!r}; use mse or cosine")


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, metric: str = "mse") -> torch.Tensor:
    """Distance between student and teacher embeddings (N, D): see :func:`feature_loss`."""
    return feature_loss(student, teacher, metric)


def hidden_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], layer_map: list[int],
                projections: nn.ModuleList | None, metric: str = "mse", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over student layers j of ``metric(proj_j(student_states[j]), teacher_states[layer_map[j]])``.

    States: (N, ..., D_student) and (N, ..., D_teacher); ``projections[j]`` maps D_student → D_teacher
    (None or identity when equal). ``mask``: (N, L) with 1 for real tokens, 0 for padding, for states
    (N, L, D): only the real tokens' positions count (a padded position's state is not compared).
    """
    terms = []
    for j, t_idx in enumerate(layer_map):
        s = student_states[j].float()
        if projections is not None:
            s = projections[j](s)
        t = teacher_states[t_idx]
        if mask is not None and s.dim() == 3 and tuple(mask.shape) == tuple(s.shape[:2]):
            keep = mask.bool()
            s, t = s[keep], t[keep]
        terms.append(feature_loss(s, t, metric))
    return torch.stack(terms).mean()


def attention_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], layer_map: list[int], *,
                   heads: list[list[int] | None] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over student layers j of ``KL(teacher ‖ student)`` between the attention distributions of student
    layer j and teacher layer ``layer_map[j]`` (MiniLM's self-attention distribution transfer, Wang et al. 2020).

    Maps: attention probabilities (N, H, L, S), each query row a distribution over the S keys. The KL divergence
    is summed over the keys and averaged over heads and query rows: a number of the same scale at every sequence
    length (an MSE of probabilities shrinks as 1/S²). ``heads[j]``: for a student layer that lost heads by
    structured pruning, the teacher head each of its heads was (their original indices), so each head is compared
    with the head it was pruned from; otherwise, when the head counts differ, both sides are head-averaged (N, L, S)
    first (TinyBERT's choice for students of another head count). ``mask``: (N, L) with 1 for real tokens, 0 for
    padding; only real tokens' query rows count (a padded query's row is not compared).
    """
    terms = []
    for j, t_idx in enumerate(layer_map):
        s, t = student_maps[j].float(), teacher_maps[t_idx].detach().float()
        kept = heads[j] if heads is not None else None
        if kept is not None and len(kept) == s.shape[1] and t.shape[1] > max(kept):
            t = t[:, list(kept)]
        elif s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        kl = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1)  # (N, H, L)
        if mask is not None and tuple(mask.shape) == (kl.shape[0], kl.shape[2]):
            rows = mask.to(kl.dtype)[:, None, :].expand_as(kl)
            terms.append((kl * rows).sum() / rows.sum().clamp_min(1.0))
        else:
            terms.append(kl.mean())
    return torch.stack(terms).mean()


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer (0-based) for each student layer: student j of M ↔ teacher (j+1)·N/M − 1 (TinyBERT's
    g(m) = m·N/M), so the last student layer learns from the last teacher layer."""
    if n_student < 1 or n_teacher < 1:
        raise ValueError("layer maps need at least one layer on each side")
    return [max(0, (j + 1) * n_teacher // n_student - 1) for j in range(n_student)]
