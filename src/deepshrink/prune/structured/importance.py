"""Channel importance over a whole coupled group: L1/L2 weight norms, BatchNorm scale, and
first-order Taylor (|w · dL/dw|, summed over every parameter slice of the channel).

Scores are summed across all members of a group (every producer row, consumer column and
per-channel parameter), so a residual group is ranked by all branches together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .attention import head_views
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
        if member.role == "mha_heads":
            if kind == "bn":
                continue
            for v in head_views(mod, _head_tensors(mod, member.module, kind, grads)):
                score += v.sum(1).double()
                used = True
            continue
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


def _head_tensors(mod: nn.Module, prefix: str, kind: str,
                  grads: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The attention's parameters (|w|, w² or |w·grad|) by name, for :func:`~.attention.head_views`."""
    out = {}
    for name, p in mod.named_parameters():
        if kind == "taylor":
            g = (grads or {}).get(f"{prefix}.{name}" if prefix else name)
            if g is not None:
                out[name] = (p.detach() * g).abs()
        else:
            out[name] = p.detach().abs() if kind == "l1" else p.detach() ** 2
    return out


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


@torch.no_grad()
def input_norms(model: nn.Module, modules: set[str], batches: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Per input column L2 norm of what each Linear/Conv in ``modules`` receives over ``batches``."""
    acc: dict[str, torch.Tensor] = {}
    hooks = []
    mods = dict(model.named_modules())

    def hook(name: str, mod: nn.Module) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double()
            sq = (x ** 2).sum(dim=tuple(range(x.dim() - 1))) if isinstance(mod, nn.Linear) else \
                (x ** 2).transpose(0, 1).reshape(x.shape[1], -1).sum(1)
            acc[name] = acc.get(name, 0) + sq
        return fn

    for name in modules:
        mod = mods.get(name)
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(mod.register_forward_pre_hook(hook(name, mod)))
    was = model.training
    model.eval()
    try:
        for b in batches:
            model(*b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: v.sqrt() for k, v in acc.items()}


def activation_scores(model: nn.Module, group: Group, norms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each channel's contribution to its consumers: Σ over its input columns of
    ‖x_col‖ · ‖W[:, col]‖ (the Wanda criterion, summed per channel). Falls back to L2."""
    mods = dict(model.named_modules())
    score = torch.zeros(group.size, dtype=torch.float64)
    used = False
    for m in group.members:
        if m.role != "in" or m.module not in norms:
            continue
        w = mods[m.module].weight.detach().double()
        col = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1) * norms[m.module]
        score += col[m.offset: m.offset + group.size * m.repeat].reshape(group.size, m.repeat).sum(1)
        used = True
    return score if used else group_scores(model, group, "l2")
