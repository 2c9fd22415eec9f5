"""Turn importance scores into a plan (which channels each group keeps) and apply it by
slicing parameters into physically smaller modules — the same module classes with smaller
``in/out_features``, ``in/out_channels``, ``num_features``; an ``nn.MultiheadAttention`` that
loses heads becomes a :class:`~.attention.HeadPrunedAttention` — so the result is a plain
``nn.Module`` that exports to ONNX without masks.

:func:`mask_plan` is the masked twin used to prove exactness: it zeroes, in the unpruned
model, every consumer column fed by a removed channel; the sliced model must then compute
the same outputs (to float rounding).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from ...backends.pruned_modules import mask_heads, prune_heads, record_kept_heads, slice_position_bias
from ...errors import InputError
from .graph import DependencyGraph, Group


def _n_keep(size: int, ratio: float, round_to: int, min_keep: int = 1) -> int:
    keep = size - int(ratio * size + 1e-6)
    if round_to > 1:
        keep = min(size, int(math.ceil(keep / round_to) * round_to))
    return max(keep, min_keep, 1)


def plan_uniform(groups: list[Group], scores: dict[int, torch.Tensor], ratio_for: dict[str, float],
                 round_to: int = 1) -> None:
    """Each group keeps its top ``size - ratio*size`` channels (ratio by group kind)."""
    for g in groups:
        k = _n_keep(g.size, ratio_for.get(g.kind, 0.0), round_to if g.kind != "head" else 1)
        g.keep = torch.sort(torch.topk(scores[g.id], k).indices).values


def plan_global(groups: list[Group], scores: dict[int, torch.Tensor], ratio: float, min_keep: float,
                round_to: int = 1, *, normalise: bool = True) -> tuple[int, int]:
    """Rank the scores of all groups together; remove ``ratio`` of all channels, each group keeping
    at least ``min_keep`` of its own. ``normalise``: divide each group's scores by their mean first
    (weight norms differ in scale from layer to layer); off for scores already in one unit across
    layers, such as the Fisher information of the model's output. Returns (channels removed, channels
    asked): fewer are removed when the floors or ``round_to`` stop it."""
    items = []
    for g in groups:
        s = scores[g.id]
        norm = s / (s.mean() + 1e-12) if normalise else s
        items += [(float(norm[i]), g.id, i) for i in range(g.size)]
    items.sort()
    total = sum(g.size for g in groups)
    budget = int(ratio * total + 1e-6)
    floor = {g.id: max(1, int(math.ceil(min_keep * g.size))) for g in groups}
    left = {g.id: g.size for g in groups}
    removed: dict[int, set[int]] = defaultdict(set)
    for _, gid, i in items:
        if budget <= 0:
            break
        if left[gid] > floor[gid]:
            removed[gid].add(i)
            left[gid] -= 1
            budget -= 1
    for g in groups:
        keep = [i for i in range(g.size) if i not in removed[g.id]]
        if round_to > 1 and len(keep) % round_to:
            want = min(g.size, int(math.ceil(len(keep) / round_to) * round_to))
            back = sorted(removed[g.id], key=lambda i: -float(scores[g.id][i]))[: want - len(keep)]
            keep = sorted(keep + back)
        g.keep = torch.tensor(keep, dtype=torch.long)
    return sum(g.size - len(g.keep) for g in groups if g.keep is not None), int(ratio * total + 1e-6)


def _dim_index(length: int, slices: list[tuple[int, int, int, torch.Tensor]]) -> torch.Tensor:
    """Kept positions along one dimension given (offset, repeat, size, kept channels) slices."""
    keep = torch.ones(length, dtype=torch.bool)
    for offset, repeat, size, kept in slices:
        drop = torch.ones(size, dtype=torch.bool)
        drop[kept] = False
        for c in torch.nonzero(drop).flatten().tolist():
            keep[offset + c * repeat: offset + (c + 1) * repeat] = False
    return torch.nonzero(keep).flatten()


def _collect(graph: DependencyGraph) -> dict[str, dict[str, list[tuple[int, int, int, torch.Tensor]]]]:
    per: dict[str, dict[str, list[tuple[int, int, int, torch.Tensor]]]] = defaultdict(lambda: defaultdict(list))
    for g in graph.groups:
        if g.keep is None or len(g.keep) == g.size:
            continue
        for m in g.members:
            per[m.module][m.role].append((m.offset, m.repeat, g.size, g.keep))
    return per


def _param(t: torch.Tensor, dim: int, idx: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().index_select(dim, idx).clone(), requires_grad=t.requires_grad)


@torch.no_grad()
def apply_plan(model: nn.Module, graph: DependencyGraph) -> None:
    """Slice every member of every planned group; updates module attributes in place."""
    mods = dict(model.named_modules())
    swapped = False
    for name, roles in _collect(graph).items():
        if any(r.startswith("tensor:") for r in roles):  # a per-channel constant of an imported graph
            _slice_tensor(model, mods, name, roles)
            continue
        mod = mods[name]
        if "out" in roles:
            idx = _dim_index(mod.weight.shape[0], roles["out"])
            mod.weight = _param(mod.weight, 0, idx)
            if getattr(mod, "bias", None) is not None:
                mod.bias = _param(mod.bias, 0, idx)
            if isinstance(mod, nn.Linear):
                mod.out_features = len(idx)
            else:
                mod.out_channels = len(idx)
        if "in" in roles:
            idx = _dim_index(mod.weight.shape[1], roles["in"])
            mod.weight = _param(mod.weight, 1, idx)
            if isinstance(mod, nn.Linear):
                mod.in_features = len(idx)
            else:
                mod.in_channels = len(idx)
        if "channel" in roles:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                idx = _dim_index(mod.num_features, roles["channel"])
                for p in ("weight", "bias"):
                    if getattr(mod, p, None) is not None:
                        setattr(mod, p, _param(getattr(mod, p), 0, idx))
                for b in ("running_mean", "running_var"):
                    if getattr(mod, b, None) is not None:
                        setattr(mod, b, getattr(mod, b).index_select(0, idx).clone())
                mod.num_features = len(idx)
            elif isinstance(mod, nn.PReLU):  # one slope per channel
                idx = _dim_index(mod.num_parameters, roles["channel"])
                mod.weight = _param(mod.weight, 0, idx)
                mod.num_parameters = len(idx)
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):  # depthwise
                idx = _dim_index(mod.weight.shape[0], roles["channel"])
                mod.weight = _param(mod.weight, 0, idx)
                if mod.bias is not None:
                    mod.bias = _param(mod.bias, 0, idx)
                mod.in_channels = mod.out_channels = mod.groups = len(idx)
            else:
                raise InputError(f"internal: cannot slice per-channel parameters of {name} ({type(mod).__name__})")
        if "mha_heads" in roles:
            (_, _, _, kept), = roles["mha_heads"]
            parent, _, attr = name.rpartition(".")
            setattr(mods[parent] if parent else model, attr, prune_heads(mod, kept))
            swapped = True
        if "heads" in roles:
            (_, hsize, _, kept), = roles["heads"]
            mod.num_attention_heads = len(kept)
            mod.all_head_size = len(kept) * hsize
            slice_position_bias(mod, kept)
            record_kept_heads(mod, kept)
            if hasattr(mod, "num_key_value_groups"):
                raise InputError(f"internal: grouped-query attention in {name} is not supported")
    if swapped:  # nn.TransformerEncoder's nested-tensor fast path reads the packed projection it no longer has
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoder):
                m.use_nested_tensor = False


def _slice_tensor(model: nn.Module, mods: dict[str, nn.Module], name: str,
                  roles: dict[str, list[tuple[int, int, int, torch.Tensor]]]) -> None:
    """Keep the planned channels of the tensor attribute ``name`` (a parameter or buffer) on each axis K of its
    ``tensor:K`` roles."""
    parent, _, attr = name.rpartition(".")
    owner = mods[parent] if parent else model
    for role, slices in roles.items():
        t = getattr(owner, attr)
        dim = int(role.split(":", 1)[1])
        new = t.detach().index_select(dim, _dim_index(t.shape[dim], slices)).clone()
        if isinstance(t, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            owner._buffers[attr] = new


@torch.no_grad()
def mask_plan(model: nn.Module, graph: DependencyGraph) -> None:
    """Zero (in the unpruned ``model``) every consumer column fed by a removed channel."""
    mods = dict(model.named_modules())
    for name, roles in _collect(graph).items():
        if "mha_heads" in roles:
            mask_heads(mods[name], roles["mha_heads"][0][3])
        if "in" in roles:
            mod = mods[name]
            idx = _dim_index(mod.weight.shape[1], roles["in"])
            mask = torch.zeros(mod.weight.shape[1], dtype=torch.bool)
            mask[idx] = True
            mod.weight[:, ~mask] = 0.0
