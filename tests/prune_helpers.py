"""Helpers shared by the structured-pruning tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

from deepshrink.prune.structured import apply_plan, mask_plan, plan_structured


def exact(model: nn.Module, cfg, x: tuple[torch.Tensor, ...], **kw) -> tuple[nn.Module, float]:
    """Prune ``model`` by ``cfg`` and also mask the same channels in a copy; (pruned model, max-abs
    difference between the two on ``x``) — 0 up to rounding when the pruning is exact."""
    graph = plan_structured(model, cfg, x, **kw)
    masked, pruned = copy.deepcopy(model), copy.deepcopy(model)
    mask_plan(masked, graph)
    apply_plan(pruned, graph)
    with torch.no_grad():
        diff = float((masked(*x) - pruned(*x)).abs().max())
    return pruned, diff
