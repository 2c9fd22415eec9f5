"""Channel importance over a whole coupled group: L1/L2 weight norms, BatchNorm scale, and
first-order Taylor (|w · dL/dw|, summed over every parameter slice of the channel).

Scores are summed across all members of a group (every producer row, consumer column and
per-channel parameter), so a residual group is ranked by all branches together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...backends.pruned_modules import head_views
from ...backends.torch import flatten_outputs, run_hooked
from ...errors import InputError
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
        if member.role.startswith("tensor:"):  # a per-channel constant (an imported graph's bias): not scored
            continue
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
    run_hooked(model, batches, hooks)
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


def fisher_scores(model: nn.Module, groups: list[Group], batches: list[tuple[torch.Tensor, ...]], *,
                  probes: int = 4, seed: int = 0) -> dict[int, torch.Tensor]:
    """Diagonal Fisher information of a mask on each channel / head of ``groups``, without labels.

    Method: Kwon et al., "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022) rank
    heads and neurons by the empirical Fisher of a mask variable m_c (1 = kept) on each:
    Σ_samples (∂L/∂m_c)². They need labels; here L is the log-likelihood of a Gaussian centred on the
    model's own output, ``L = vᵀ f(x)`` with ``v ~ N(0, I)`` drawn ``probes`` times per batch, whose
    expected squared mask gradient is ‖∂f(x)/∂m_c‖² — the second-order estimate of how far the output
    moves when channel c is removed. It needs no labels and no task head, so it serves any model whose
    outputs are floating-point tensors. At m = 1, ∂L/∂m_c is Σ over the columns that read channel c
    (every consumer, every repeat) and over the non-batch positions of x · ∂L/∂x, which forward hooks
    read off each consumer's input per sample (samples are independent in ``eval()`` mode, so one
    backward gives every sample's gradient).

    ``batches``: tuples of the model's positional inputs, batch on axis 0. Returns one float64 score
    of shape ``(group.size,)`` per group id (higher = more important); a group with no Linear/Conv
    consumer whose input the hooks can see (e.g. ``nn.MultiheadAttention`` heads) gets its L2 norm
    score (:func:`group_scores`). The model's weights and grads are left as they were."""
    mods = dict(model.named_modules())
    consumers = {m.module for g in groups for m in g.members
                 if m.role == "in" and isinstance(mods.get(m.module), (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}
    seen: list[tuple[str, bool, torch.Tensor]] = []  # this forward's consumer inputs

    def hook(name: str, conv: bool) -> Callable[..., None]:
        def pre(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            if not (isinstance(args[0], torch.Tensor) and args[0].requires_grad):
                return None
            # an alias of the input for this consumer alone: the gradient of the tensor itself would also
            # count its other uses (a residual branch, a second consumer)
            x = args[0].view_as(args[0])
            seen.append((name, conv, x))
            return (x, *args[1:])
        return pre

    handles = [mods[n].register_forward_pre_hook(hook(n, not isinstance(mods[n], nn.Linear))) for n in consumers]
    saved = {n: p.requires_grad for n, p in model.named_parameters()}  # autograd.grad leaves .grad alone
    for p in model.parameters():
        p.requires_grad_(True)  # the hooks need activations that carry a graph
    acc = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    try:
        for b in batches:
            for _ in range(probes):
                seen.clear()
                outs = [o for o in flatten_outputs(model(*b)) if o.is_floating_point()]
                if not outs:
                    raise InputError("importance 'fisher' needs a model with floating-point outputs (it measures how "
                                     "far they move); this one's are integers — use --importance activation")
                loss = sum((torch.randn(o.shape, generator=gen, dtype=o.dtype) * o).sum() for o in outs)
                grads = torch.autograd.grad(loss, [x for _, _, x in seen], allow_unused=True) if seen else ()
                col_grad: dict[str, torch.Tensor] = {}  # per-sample ∂L/∂(input column): (batch, in)
                for (name, conv, x), g in zip(seen, grads, strict=True):
                    if g is None:
                        continue
                    prod = (x.detach() * g).double()
                    per = prod.flatten(2).sum(2) if conv else prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)
                    col_grad[name] = col_grad.get(name, 0) + per
                for g in groups:
                    per_sample = None
                    for m in g.members:
                        cg = col_grad.get(m.module) if m.role == "in" else None
                        if cg is None:
                            continue
                        part = cg[:, m.offset: m.offset + g.size * m.repeat].reshape(cg.shape[0], g.size, m.repeat)
                        per_sample = part.sum(2) if per_sample is None else per_sample + part.sum(2)
                    if per_sample is not None:
                        acc[g.id] += (per_sample ** 2).sum(0)
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was)
    return {g.id: (acc[g.id] if acc[g.id].any() else group_scores(model, g, "l2")) for g in groups}
