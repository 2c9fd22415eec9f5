"""Helpers shared by the pruning methods: which layers are prunable, protect patterns,
weight sanity checks and the fine-tune data adapter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_finite(model: nn.Module) -> None:
    """Refuse NaN/Inf weights: magnitude ranking and importance scores are meaningless then."""
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise InputError(f"parameter {name!r} holds NaN or Inf values; pruning needs finite weights")


def protected_names(model: nn.Module, patterns: Iterable[str]) -> set[str]:
    """Module names matched by the fnmatch ``patterns`` (a match also covers the children); a
    pattern may also name the module's weight (``fc1.weight``), see ``deepshrink.core.layers``.

    A pattern that matches no module is an error: it is almost always a typo, and silently
    pruning the layer the user meant to keep would be worse.
    """
    from ..core.layers import matches

    names = [n for n, _ in model.named_modules() if n]
    out: set[str] = set()
    for pat in patterns:
        # a module path, or its weight's name as ``info --layers`` and ONNX graphs show it
        hits = [n for n in names if matches(pat, (n, f"{n}.weight"))]
        if not hits:
            sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise InputError(f"protect pattern {pat!r} matches no module; module names look like: {sample}")
        for h in hits:
            out.update(n for n in names if n == h or n.startswith(h + "."))
    return out


def weighted_layers(model: nn.Module, protect: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Linear/Conv layers that unstructured pruning touches, minus the protected ones.

    A model loaded from a ``.pt2`` archive has no Linear/Conv modules, only plain modules
    holding the parameters its graph reads; then every module with a ``weight`` parameter of
    two or more dimensions is taken (BatchNorm/LayerNorm scales are 1-D and stay).
    """
    skip = protected_names(model, protect)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED) and n not in skip}
    if not layers and not any(isinstance(m, WEIGHTED) for m in model.modules()):
        layers = {n: m for n, m in model.named_modules()
                  if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2 and n not in skip
                  and not isinstance(m, nn.Embedding)}
    if not layers:
        raise InputError("the model has no Linear/Conv layer left to prune")
    return layers


SOFT_ONLY_HINT = ("; or fine-tune on the unpruned model's soft targets alone, which needs no labels: distill with "
                  "kd_alpha 1 (--distill --kd-alpha 1)")


def as_train_data(data: Any, *, what: str, labels_needed: bool = True) -> tuple[Any, ...]:
    """Turn ``(x, y)`` arrays or a deepshrink ``Dataset`` into trainer data ``(inputs..., labels)``.

    ``labels_needed=False`` (a fine-tune on soft targets alone): a ``Dataset`` without labels gets zeros in their
    place, which that loss never reads. Raises :class:`InputError` for missing data or labels."""
    hint = SOFT_ONLY_HINT if labels_needed and what == "fine-tuning" else ""
    if data is None:
        raise InputError(f"{what} needs {'labelled ' if labels_needed else ''}data (--data, e.g. an .npz"
                         f"{' with a labels array' if labels_needed else ''})")
    if isinstance(data, (tuple, list)):
        return tuple(data)
    inputs = getattr(data, "inputs", None)
    labels = getattr(data, "labels", None)
    if inputs is None:
        raise InputError(f"{what}: cannot use data of type {type(data).__name__}")
    xs = [np.asarray(v) for v in inputs.values()]
    if labels is None:
        if labels_needed:
            raise InputError(f"{what} needs labels in the data ({getattr(data, 'source', 'data')} has none){hint}")
        return (*xs, np.zeros(len(xs[0]), np.int64))
    return (*xs, np.asarray(labels))


def first_inputs(data: Any, n: int = 8) -> tuple[torch.Tensor, ...] | None:
    """The first ``n`` samples of ``data`` as model inputs (labels dropped)."""
    if data is None:
        return None
    if isinstance(data, (torch.Tensor, np.ndarray)):  # one array of inputs, no labels
        return (torch.as_tensor(np.asarray(data)[:n]),)
    if isinstance(data, (tuple, list)):
        xs = data[:-1] if len(data) > 1 else data
        return tuple(torch.as_tensor(np.asarray(x)[:n]) for x in xs)
    inputs = getattr(data, "inputs", None)
    if inputs is None:
        return None
    return tuple(torch.as_tensor(np.asarray(v)[:n]) for v in inputs.values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every float parameter with two or more dimensions larger than 1 (Linear/Conv weights, recurrent
    and attention projections, embedding tables) — what "the model's weights" means in a sparsity figure."""
    return {n: p for n, p in model.named_parameters()
            if p.is_floating_point() and sum(1 for d in p.shape if d > 1) >= 2}


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero values over all of the model's weight matrices (:func:`weight_matrices`),
    so the figure equals what a reader of the written file counts — pruned layers or not."""
    total = zeros = 0
    for w in weight_matrices(model).values():
        total += w.numel()
        zeros += int((w.detach() == 0).sum())
    return zeros / max(total, 1)


def left_dense(model: nn.Module, layers: dict[str, nn.Module]) -> str | None:
    """A warning naming the weight matrices unstructured pruning did not touch, with their share."""
    pruned = {f"{name}.weight" if name else "weight" for name in layers}
    mats = weight_matrices(model)
    rest = {n: p.numel() for n, p in mats.items() if n not in pruned}
    if not rest:
        return None
    share = sum(rest.values()) / max(sum(p.numel() for p in mats.values()), 1)
    names = ", ".join(list(rest)[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
    return (f"{len(rest)} weight matrices ({100 * share:.0f}% of the weights) were left dense: {names} — "
            "unstructured pruning covers Linear/Conv weights (and protected layers stay)")
