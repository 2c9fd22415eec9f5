"""Students made from the teacher: fewer transformer layers (weights copied) or narrower layers.

Which layers to keep is measured, not assumed: :func:`choose_layers` removes layers one at a
time, each time the one whose absence changes the teacher's output on the data least (greedy
backward elimination on the relative output error), and reports every candidate's error — the
"drop one layer" importance of the first round included. ``uniform`` spacing (every other layer
when keeping half) is the fixed alternative that sentence-transformers' and DistilBERT's layer
reduction use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..backends.torch import first_output as _first
from ..errors import InputError

Batches = Sequence[tuple[torch.Tensor, ...]]


def find_layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """The model's stack of repeated blocks: the ``nn.ModuleList`` (≥ 2 entries, all one class, with
    parameters) holding the most parameters — ``encoder.layer`` in BERT, ``h`` in GPT-2, ``layers``
    in Llama. Returns (parent module, attribute name, the list) or None."""
    best, best_n = None, 0
    for mod in model.modules():
        for attr, child in mod.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) < 2:
                continue
            kinds = {type(c) for c in child}
            n = sum(p.numel() for p in child.parameters())
            if len(kinds) == 1 and n > best_n:
                best, best_n = (mod, attr, child), n
    return best


def stack_depth(model: nn.Module) -> int | None:
    found = find_layer_stack(model)
    return None if found is None else len(found[2])


def with_layers(model: nn.Module, keep: Sequence[int], *, copy_model: bool = True) -> nn.Module:
    """The model with only the layers ``keep`` (indices into its layer stack, in order) — a deep copy
    unless ``copy_model`` is False. Hugging Face configs found in the model are updated
    (``num_hidden_layers``, ``layer_types``) so the model still describes itself."""
    out = copy.deepcopy(model) if copy_model else model
    found = find_layer_stack(out)
    if found is None:
        raise InputError("the model has no stack of repeated layers (nn.ModuleList of transformer blocks) to drop from")
    parent, attr, layers = found
    n = len(layers)
    if not keep:
        raise InputError(f"keeping 0 of the teacher's {n} layers leaves no layers; keep at least one")
    if any(not 0 <= i < n for i in keep) or len(set(keep)) != len(keep):
        raise InputError(f"layers {list(keep)}: indices must be distinct and within 0..{n - 1}")
    setattr(parent, attr, nn.ModuleList([layers[i] for i in sorted(keep)]))
    for m in out.modules():
        cfg = getattr(m, "config", None)
        if cfg is None or not hasattr(cfg, "num_hidden_layers"):
            continue
        if getattr(cfg, "num_hidden_layers", None) == n:
            cfg.num_hidden_layers = len(keep)
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            cfg.layer_types = [types[i] for i in sorted(keep)]
    return out


def relative_error(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """Σ‖out − ref‖² / Σ‖ref‖² over the batches."""
    num = sum(float(((o - r) ** 2).sum()) for r, o in zip(ref, out, strict=True))
    den = sum(float((r ** 2).sum()) for r in ref)
    return num / max(den, 1e-12)


@dataclass
class LayerChoice:
    """The layers kept, how they were chosen, and the measured error of every removal tried."""

    keep: list[int]
    n_layers: int
    selection: str
    drop_one: dict[int, float] = field(default_factory=dict)  # layer -> output error with only it removed
    removal_order: list[tuple[int, float]] = field(default_factory=list)  # (layer removed, error after)
    error: float | None = None  # relative output error of the kept layers, no training

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "n_layers": self.n_layers, "selection": self.selection,
                "drop_one": {str(k): round(v, 6) for k, v in self.drop_one.items()},
                "removal_order": [[i, round(e, 6)] for i, e in self.removal_order],
                "error": None if self.error is None else round(self.error, 6)}


def uniform_layers(n: int, k: int) -> list[int]:
    """k of n layers evenly spaced from the first: every other layer for k = n/2 ([0, 2, 4] of 6)."""
    return sorted({(i * n) // k for i in range(k)})


@torch.no_grad()
def _outputs(model: nn.Module, batches: Batches, run: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
             ) -> list[torch.Tensor]:
    model.eval()
    return [run(model, b).float() for b in batches]


@torch.no_grad()
def choose_layers(model: nn.Module, k: int, batches: Batches, *, selection: str = "importance",
                  run: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor] | None = None,
                  progress: bool = False) -> LayerChoice:
    """Which k layers of ``model``'s stack to keep.

    ``importance``: greedy backward elimination — repeatedly remove the layer whose removal gives the
    smallest relative output error against the full model on ``batches`` (model inputs, in order);
    n + (n−1) + … + (k+1) forward passes (``progress``: a bar over them — minutes on a 12-layer
    base model). ``uniform``: :func:`uniform_layers`. Raises
    :class:`InputError` for k < 1 or k > the number of layers.
    """
    run = run or (lambda m, b: _first(m(*b)))
    found = find_layer_stack(model)
    if found is None:
        raise InputError("derive layers=K needs a model with a stack of transformer layers (an nn.ModuleList of "
                         "blocks); for an MLP or CNN use derive width=F")
    parent, attr, layers = found
    n = len(layers)
    if k < 1:
        raise InputError(f"derive layers={k} would leave zero of the teacher's {n} layers; keep at least one")
    if k > n:
        raise InputError(f"derive layers={k}: the teacher has only {n} layers")
    from ..core.progress import progress_bar

    passes = 2 + (sum(range(k + 1, n + 1)) if selection == "importance" else 0)
    with progress_bar(show=progress) as bar:
        task = bar.add_task(f"measuring which {k} of {n} layers to keep", total=passes)
        return _choose_layers(model, parent, attr, layers, k, batches, selection, run,
                              lambda: bar.update(task, advance=1))


def _choose_layers(model: nn.Module, parent: nn.Module, attr: str, layers: nn.ModuleList, k: int, batches: Batches,
                   selection: str, run: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
                   tick: Callable[[], None]) -> LayerChoice:
    n = len(layers)
    ref = _outputs(model, batches, run)
    tick()
    choice = LayerChoice(keep=list(range(n)), n_layers=n, selection=selection)

    def error_with(keep: list[int]) -> float:
        setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
        try:
            return relative_error(ref, _outputs(model, batches, run))
        finally:
            setattr(parent, attr, layers)
            tick()

    if selection == "uniform":
        choice.keep = uniform_layers(n, k)
    elif selection == "importance":
        keep = list(range(n))
        while len(keep) > k:
            errs = {i: error_with([j for j in keep if j != i]) for i in keep}
            if len(keep) == n:
                choice.drop_one = errs
            drop = min(errs, key=lambda i: (errs[i], i))
            keep.remove(drop)
            choice.removal_order.append((drop, errs[drop]))
        choice.keep = keep
    else:
        raise InputError(f"layer selection {selection!r}: use importance or uniform")
    choice.error = error_with(choice.keep) if k < n else 0.0
    return choice


def derive_width(model: nn.Module, fraction: float, example_inputs: tuple[torch.Tensor, ...],
                 act_batches: list[tuple[torch.Tensor, ...]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` keeping ``fraction`` of every prunable channel group (conv filters, linear
    neurons, transformer FFN neurons) through structured pruning — activation importance when data
    is given, L2 otherwise. Returns the student and the pruning report (dict)."""
    from ..prune import prune_with_report
    from ..prune.config import StructuredPruneConfig

    importance = "activation" if act_batches else "l2"
    cfg = StructuredPruneConfig(ratio=1.0 - fraction, importance=importance)  # FFN neurons follow ratio
    data = None
    if act_batches:
        data = tuple(torch.cat([b[i] for b in act_batches]).numpy() for i in range(len(act_batches[0])))
    student, report = prune_with_report(model, cfg, data=_ActData(data) if data else None,
                                        example_inputs=example_inputs, progress=False)
    return student, report.to_dict()


class _ActData:
    """Unlabelled inputs in the shape ``prune``'s ``first_inputs`` reads (a deepshrink Dataset look-alike)."""

    def __init__(self, arrays: tuple[Any, ...]) -> None:
        self.inputs = {f"x{i}": a for i, a in enumerate(arrays)}
        self.labels = None
        self.source = "the distillation data"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))
