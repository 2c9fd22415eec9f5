"""Structured pruning: remove whole channels, neurons and attention heads.

``build_graph`` (dependency groups) → importance per group → a plan (kept channels per
group, uniform or global) → ``apply_plan`` slices every coupled parameter, giving a plain,
physically smaller ``nn.Module``. :func:`fit_to_state_dict` re-shapes a freshly built model
to a pruned state dict, so pruned ``.safetensors`` weights can be loaded into the original
factory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...backends.pruned_modules import HeadPrunedAttention, fit_to_state_dict
from ...errors import InputError
from ..config import StructuredPruneConfig
from . import reconstruct
from .apply import apply_plan, mask_plan, plan_global, plan_uniform
from .graph import DependencyGraph, Group, Member, build_graph
from .importance import activation_scores, fisher_scores, group_scores, input_norms, taylor_grads

__all__ = ["DependencyGraph", "Group", "HeadPrunedAttention", "Member", "apply_plan", "build_graph",
           "fit_to_state_dict", "mask_plan", "plan_structured", "structured_prune"]


def plan_structured(model: nn.Module, config: StructuredPruneConfig, example_inputs: tuple[torch.Tensor, ...] | None,
                    *, protected: set[str] | None = None, taylor_batches: list[tuple[torch.Tensor, ...]] | None = None,
                    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor] | None = None,
                    act_batches: list[tuple[torch.Tensor, ...]] | None = None) -> DependencyGraph:
    """Build the graph and decide which channels every prunable group keeps (no change yet)."""
    graph = build_graph(model, example_inputs, protected=protected)
    _check_applies(graph, config)
    ratio_for = {"channel": config.ratio, "ffn": config.ffn_ratio if config.ffn_ratio is not None else config.ratio,
                 "head": config.heads_ratio}
    groups = [g for g in graph.prunable() if ratio_for.get(g.kind, 0.0) > 0]
    batches = act_batches or ([example_inputs] if example_inputs is not None else None)
    if config.importance in ("activation", "fisher") and not batches:
        raise InputError(f"importance '{config.importance}' needs example data (--data) to observe activations")
    if config.importance == "taylor" and (not taylor_batches or loss_fn is None):
        raise InputError("importance 'taylor' needs labelled data (--data) to compute gradients")
    if config.importance == "fisher":
        scores = fisher_scores(model, groups, batches)
    elif config.importance == "activation":
        norms = input_norms(model, {m.module for g in groups for m in g.members if m.role == "in"}, batches)
        scores = {g.id: activation_scores(model, g, norms) for g in groups}
    else:  # from the weights (l1, l2, bn) or their gradients (taylor)
        grads = taylor_grads(model, taylor_batches, loss_fn) if config.importance == "taylor" else None
        scores = {g.id: group_scores(model, g, config.importance, grads) for g in groups}
    if config.scope == "uniform":
        plan_uniform(groups, scores, ratio_for, config.round_to)
    elif config.importance == "fisher":  # one unit (squared output change) in every layer: rank raw, per kind
        for kind in ("channel", "ffn", "head"):
            same = [g for g in groups if g.kind == kind]
            if same:
                _short(graph, kind, config, *plan_global(same, scores, ratio_for[kind], config.min_keep,
                                                         1 if kind == "head" else config.round_to, normalise=False))
    else:
        chans = [g for g in groups if g.kind != "head"]
        _short(graph, "channel", config, *plan_global(chans, scores, config.ratio, config.min_keep, config.round_to))
        plan_uniform([g for g in groups if g.kind == "head"], scores, ratio_for)
    heads_ranked = config.importance == "fisher" and config.scope == "global"  # a layer may keep all its heads
    whole = [g for g in groups if g.kind == "head" and g.keep is not None and len(g.keep) == g.size
             and not heads_ranked]
    if whole:  # e.g. 0.2 of 4 heads: less than one head, so none goes; say so rather than ignore the option
        graph.warnings.append(f"heads_ratio {config.heads_ratio:g} removes no head of "
                              + ", ".join(f"{g.name} ({g.size} heads)" for g in whole[:4])
                              + ": less than one head each")
    return graph


def _short(graph: DependencyGraph, kind: str, config: StructuredPruneConfig, removed: int, asked: int) -> None:
    """Say when a global plan removed fewer channels than asked (each group's floor, round_to)."""
    if removed < asked:
        what = {"channel": "channels", "ffn": "FFN neurons", "head": "heads"}[kind]
        rounding = f", rounded up to a multiple of {config.round_to}" if config.round_to > 1 and kind != "head" else ""
        graph.warnings.append(f"scope global removed {removed} of the {asked} {what} asked: every group keeps at least "
                              f"min_keep {config.min_keep:g} of its own{rounding}")


def _check_applies(graph: DependencyGraph, config: StructuredPruneConfig) -> None:
    """Refuse ``heads_ratio`` / ``ffn_ratio`` when the model has nothing they could remove, naming why."""
    for kind, value, field, what in (
            ("head", config.heads_ratio, "heads_ratio (--heads-ratio)", "attention heads"),
            ("ffn", config.ffn_ratio, "ffn_ratio (--ffn-ratio)", "transformer FFN neurons")):
        if not value:
            continue
        found = [g for g in graph.groups if g.kind == kind]
        if any(g.prunable for g in found):
            continue
        if found:
            reasons = "; ".join(f"{g.name}: {g.blocked[0]}" for g in found[:3] if g.blocked)
            raise InputError(f"{field} {value:g}: the {what} of this model cannot be removed ({reasons})")
        where = ("nn.MultiheadAttention, BERT-style query/key/value or MPNet-style q/k/v/o attention" if kind == "head" else
                 "nn.TransformerEncoderLayer/DecoderLayer linear1 → linear2 or BERT-style intermediate/output")
        raise InputError(f"{field} {value:g}: the model has no {what} to remove (they are found in {where}); "
                         + ("leave it at 0" if kind == "head" else "--sparsity sets the share of its other channels"))


def structured_prune(model: nn.Module, config: StructuredPruneConfig,
                     example_inputs: tuple[torch.Tensor, ...] | None, *,
                     recon_batches: list[tuple[torch.Tensor, ...]] | None = None, recon_mask: int | None = None,
                     **kw: Any) -> DependencyGraph:
    """Plan and apply in place; returns the graph (with ``keep`` set on pruned groups).

    With ``config.reconstruct``, the pruned layers' consumers are then re-fitted on ``recon_batches``
    (tuples of the model's positional inputs; default ``act_batches``, else ``example_inputs``;
    ``recon_mask``: the index of an attention mask among them, default found by the forward signature)
    and ``graph.fits`` lists each re-fitted layer's output error before/after
    (:func:`.reconstruct.reconstruct`). Raises :class:`InputError` when reconstruction has no data."""
    graph = plan_structured(model, config, example_inputs, **kw)
    for w in graph.warnings:
        warnings.warn(w, stacklevel=2)
    targets = None
    if config.reconstruct and any(g.keep is not None for g in graph.groups):  # nothing pruned: nothing to re-fit
        batches = recon_batches or kw.get("act_batches") or ([example_inputs] if example_inputs is not None else None)
        if not batches:
            raise InputError("reconstruct needs example data (--data) to fit the pruned layers on")
        if recon_mask is None:
            recon_mask = reconstruct.mask_index(model, len(batches[0]))
        fit = reconstruct.consumers(model, graph)
        skipped = reconstruct.left_alone(model, graph)
        if not fit:
            raise InputError("reconstruct re-fits the Linear layers and attention output projections that read "
                             "removed channels; here " + ("only convolutions do (" + ", ".join(skipped[:3]) + ")"
                                                          if skipped else "none does"))
        if skipped:
            msg = (f"reconstruct left {len(skipped)} convolution(s) as pruned (only Linear layers are re-fitted): "
                   + ", ".join(skipped[:4]))
            graph.warnings.append(msg)
            warnings.warn(msg, stacklevel=2)
        targets = reconstruct.original_outputs(model, fit, batches, recon_mask)
    apply_plan(model, graph)
    if targets:
        graph.fits = reconstruct.reconstruct(model, targets, batches, recon_mask, config.reconstruct_ridge)
    _update_hf_configs(model, graph)
    return graph


def _update_hf_configs(model: nn.Module, graph: DependencyGraph) -> None:
    """Keep ``config.intermediate_size`` truthful when every FFN kept the same width.
    (``num_attention_heads`` stays: HF derives the head size from it; the attention modules
    carry their own pruned head counts.)"""
    ffn = [g for g in graph.groups if g.kind == "ffn" and g.keep is not None]
    widths = {len(g.keep) for g in ffn}  # type: ignore[arg-type]
    if ffn and len(widths) == 1:
        width = widths.pop()
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "intermediate_size"):
                cfg.intermediate_size = width
