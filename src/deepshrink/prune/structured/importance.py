"""Channel importance over a whole coupled group: L1/L2 weight norms, BatchNorm scale, and
first-order Taylor (|w · dL/dw|, summed over every parameter slice of the channel).

Scores are summed across all members of a group (every producer row, consumer column and
per-channel parameter), so a residual group is ranked by all branches together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .graph import Group, Member


def _channel_view(t: torch.Tensor, member: Member, size: int) -> torch.Tensor | None:
    """(size, k) view of the slice of parameter ``t`` that belongs to each channel."""
    if member.role in ("out", "channel"):
        rows = t[member.offset: member.offset + size * member.repeat]
        return rows.reshape(size, -1)
    if member.role == "in" and t.dim() >= 2:
        cols = t[:, member.offset: member.offset + size * member.repeat]
        cols = cols.transpose(0, 1).reshape(size, member.repeat, t.shape[0], -1)
        return cols.reshape(size, -1)
    return None


def _params(mod: nn.Module, member: Member, *, with_bias: bool) -> list[str]:
    if member.role == "in":
        return ["weight"]
    names = ["weight"] + (["bias"] if with_bias else [])
    return [n for n in names if getattr(mod, n, None) is not None]


def group_scores(model: nn.Module, group: Group, kind: str,
                 grads: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One score per channel of ``group`` (higher = more important)."""
    mods = dict(model.named_modules())
    score = torch.zeros(group.size, dtype=torch.float64)
    used = False
    for member in group.members:
        mod = mods[member.module]
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        if kind == "bn" and not is_bn:
            continue
        for pname in _params(mod, member, with_bias=kind == "taylor"):
            p = getattr(mod, pname)
            if kind == "bn":
                if pname != "weight":
                    continue
                v = _channel_view(p.detach().abs(), member, group.size)
            elif kind == "taylor":
                g = (grads or {}).get(f"{member.module}.{pname}")
                if g is None:
                    continue
                v = _channel_view((p.detach() * g).abs(), member, group.size)
            else:
                v = _channel_view(p.detach().abs() if kind == "l1" else p.detach() ** 2, member, group.size)
            if v is None:
                continue
            score += v.sum(1).double()
            used = True
    if not used and kind != "l2":  # e.g. "bn" on a group without BatchNorm
        return group_scores(model, group, "l2")
    return score.sqrt() if kind == "l2" else score


def taylor_grads(model: nn.Module, batches: list[tuple[torch.Tensor, ...]],
                 loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of the loss summed over ``batches`` (the model's grads are restored after)."""
    saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    was = model.training
    model.eval()
    for b in batches:
        loss_fn(model, b).backward()
    model.train(was)
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        p.grad = saved[n]
    return out
