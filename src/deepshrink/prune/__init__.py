"""Pruning: ``prune(model, config, *, data=None, **options)``.

One verb, one config per method (the torchao pattern): :class:`MagnitudePruneConfig`
(threshold / target sparsity, per layer or global), :class:`GradualPruneConfig` (Zhu &
Gupta cubic schedule while fine-tuning), :class:`NMPruneConfig` (2:4), and
:class:`StructuredPruneConfig` (channels / neurons / heads removed through a dependency
graph, so the network is physically smaller). ``model`` is an ``nn.Module`` or a torch
:class:`~deepshrink.core.handle.ModelHandle`; it is left as it was, and a
:class:`~deepshrink.core.result.Result` holding a handle on a pruned copy is returned. Structured pruning traces the model with
``example_inputs`` (a handle's own, or the data's). Fine-tuning goes through the shared trainer.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backends.torch import counted_parameters
from ..core.config import handler_for, register
from ..core.handle import ModelHandle
from ..core.result import Result, VerbReport
from ..errors import InputError, UnsupportedError, first_line
from ._common import (
    WEIGHTED,
    as_train_data,
    check_finite,
    count_params,
    first_inputs,
    left_dense,
    protected_names,
    sparsity_of,
    weighted_layers,
)
from .config import (
    GradualPruneConfig,
    MagnitudePruneConfig,
    NMPruneConfig,
    PruneConfig,
    StructuredPruneConfig,
    soft_targets_only,
)

ACTIVATION_SAMPLES = 256  # samples activation / Fisher importance ranks channels on (the data's first)
__all__ = ["GradualPruneConfig", "MagnitudePruneConfig", "NMPruneConfig", "PruneConfig", "PruneReport",
           "StructuredPruneConfig", "prune", "prune_with_report"]


@dataclass
class PruneReport:
    """What a prune did: parameters and zero-weight fraction before/after, the groups
    removed (structured), warnings about what was left alone, the sparsity schedule; ``reconstructed``
    (structured with ``reconstruct``): per re-fitted layer its calibration tokens and the relative squared
    error of its output against the unpruned layer's, before and after the fit; ``finetune_loss`` the first
    and last fine-tune step's loss and ``batchnorm_recalibrated`` how many BatchNorm layers with momentum 0
    had their statistics recomputed after it (:class:`deepshrink.train.Trainer`)."""

    method: str
    params_before: int
    params_after: int
    sparsity_before: float
    sparsity_after: float
    groups: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finetune_epochs: int = 0
    schedule: list[tuple[int, float]] = field(default_factory=list)
    reconstructed: list[dict[str, Any]] = field(default_factory=list)
    finetune_loss: list[float] | None = None  # training loss of the first and the last fine-tune step
    batchnorm_recalibrated: int = 0  # BatchNorm layers with momentum 0 whose statistics fine-tuning recomputed
    batchnorm_inserted: int = 0  # an ONNX import's convolutions given a BatchNorm while fine-tuning, folded after
    mixed_precision: str = "no"  # the fine-tune's forward passes: "no" (float32) or "bf16" (bfloat16 autocast)
    lr_schedule: str = "constant"  # the fine-tune's learning rate: "constant", or "cosine" / "linear" decay
    distilled: dict[str, float] | None = None  # fine-tuned on the unpruned model's soft targets: temperature, alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verb_report(self, config: PruneConfig, layers: list[dict[str, Any]] | None = None) -> VerbReport:
        """This report as the common :class:`~deepshrink.core.result.VerbReport` (``details`` is :meth:`to_dict`).
        ``layers``: the structured groups (kind, size, kept) when there are any, else what the caller gives."""
        summary = (f"parameters {self.params_before:,} → {self.params_after:,}, zero weights "
                   f"{100 * self.sparsity_before:.1f}% → {100 * self.sparsity_after:.1f}%")
        rows = [{"name": g.get("name"), "kind": g.get("kind"), "size": g.get("size"), "kept": g.get("kept")}
                for g in self.groups] or list(layers or [])
        return VerbReport("prune", self.method, summary, config=config.to_dict(), layers=rows,
                          measurements={"params_before": self.params_before, "params_after": self.params_after,
                                        "sparsity_before": self.sparsity_before, "sparsity_after": self.sparsity_after,
                                        "finetune_epochs": self.finetune_epochs},
                          warnings=self.warnings, details=self.to_dict())


def prune(model: nn.Module | ModelHandle, config: PruneConfig, *, data: Any = None,
          example_inputs: tuple[torch.Tensor, ...] | dict[str, np.ndarray] | None = None,
          batch_size: int = 64, seed: int = 0, progress: bool = True, mixed_precision: str = "no") -> Result:
    """Prune a copy of ``model`` per ``config`` (the caller's model is left as it was).

    Returns a :class:`~deepshrink.core.result.Result`: ``.model`` a torch handle on the pruned
    copy (``.model.model`` the ``nn.Module``), ``.report`` (parameters and zero-weight fraction
    before/after, per-layer sparsity or kept channels, ``details`` the :class:`PruneReport`),
    ``.save(path)``. See :func:`prune_with_report` for the options and the errors raised. What the
    report lists as left alone (layers pruning could not touch) is also issued once each as a
    ``UserWarning`` pointing at the caller."""
    pruned, report = prune_with_report(model, config, data=data, example_inputs=example_inputs,
                                       batch_size=batch_size, seed=seed, progress=progress,
                                       mixed_precision=mixed_precision)
    for m in report.warnings:
        warnings.warn(m, stacklevel=2)
    if not isinstance(pruned, ModelHandle):
        from ..loading import load

        pruned = load(pruned)
        inputs = first_inputs(data) or example_inputs
        if isinstance(inputs, dict):
            inputs = tuple(torch.as_tensor(np.asarray(v)) for v in inputs.values())
        if inputs and len(inputs) == len(pruned.inputs):
            pruned.example_inputs = {n: t.detach().cpu().numpy() for n, t in zip(pruned.input_names, inputs, strict=True)}
    return Result(pruned, report.verb_report(config, _layer_sparsity(pruned.model)))


def _layer_sparsity(module: nn.Module) -> list[dict[str, Any]]:
    """Per weighted layer: name, weight elements, fraction of exact zeros."""
    rows = []
    for name, layer in weighted_layers(module, ()).items():
        w = layer.weight.detach()
        rows.append({"name": name, "params": int(w.numel()), "sparsity": float((w == 0).sum()) / max(1, w.numel())})
    return rows


def prune_with_report(model: nn.Module | ModelHandle, config: PruneConfig, *, data: Any = None,
                      example_inputs: tuple[torch.Tensor, ...] | dict[str, np.ndarray] | None = None,
                      batch_size: int = 64, seed: int = 0, progress: bool = True, mixed_precision: str = "no"
                      ) -> tuple[nn.Module | ModelHandle, PruneReport]:
    """Prune a copy of ``model`` (the caller's module is not changed) and report.
    ``data``: ``(x..., y)`` arrays or a deepshrink ``Dataset`` with labels (needed for
    fine-tuning, gradual pruning and Taylor importance). ``example_inputs``: for the structured
    graph capture (defaults to the handle's examples or the data). Nothing is issued through
    :mod:`warnings`: what was left alone is in ``report.warnings``, each message once, for the
    caller to show (the CLI prints each as one ``warning:`` line). ``mixed_precision``: the fine-tune's (and
    gradual pruning's) forward passes, ``"no"`` (float32) or ``"bf16"`` (bfloat16 autocast,
    :class:`deepshrink.train.Trainer`); raises :class:`InputError` for another value. A config with
    ``distill=True`` fine-tunes against a frozen copy of ``model`` as given (its soft targets, Hinton et al. 2015),
    which the report records in ``distilled``."""
    from ..train.trainer import MIXED_PRECISION

    if mixed_precision not in MIXED_PRECISION:
        raise InputError(f"unknown mixed_precision {mixed_precision!r}; use {' or '.join(MIXED_PRECISION)}")
    handle = model if isinstance(model, ModelHandle) else None
    if handle is not None:
        if handle.kind != "torch":
            raise UnsupportedError(f"pruning needs a PyTorch model; {handle.source or 'this model'} is {handle.kind}")
        module = handle.model
        if example_inputs is None and handle.example_inputs is not None:
            example_inputs = {k: handle.example_inputs[k] for k in handle.input_names}
    else:
        module = model
    if not isinstance(module, nn.Module):
        raise InputError(f"cannot prune a {type(module).__name__}; pass a torch.nn.Module or a torch model handle")
    if isinstance(example_inputs, dict):
        example_inputs = tuple(torch.as_tensor(np.asarray(v)) for v in example_inputs.values())
    check_finite(module)
    module = copy.deepcopy(module)
    data_inputs = first_inputs(data)
    if data_inputs is not None:
        out = _check_data_fits(module, data_inputs, getattr(data, "source", "the data"))
        # labels cross-entropy (or Taylor importance) cannot read: refused now, not after pruning
        if config.contract().needs == "labels" or getattr(config, "importance", None) == "taylor":
            from ..backends.torch import flatten_outputs
            from ..core.data import check_class_labels

            labels = getattr(data, "labels", None) if not isinstance(data, (tuple, list)) else (
                data[-1] if len(data) > 1 else None)
            check_class_labels(labels, (flatten_outputs(out) or [None])[0], getattr(data, "source", "the data"))
    opts = {"data": data, "example_inputs": data_inputs or example_inputs, "batch_size": batch_size,
            "seed": seed, "progress": progress, "mixed_precision": mixed_precision}
    if getattr(config, "distill", False):  # the model as the caller gave it teaches the pruned one
        from ..train.kd import frozen_copy

        opts["teacher"] = frozen_copy(module)
    probe = _probe(data_inputs or example_inputs)
    used_before = counted_parameters(module, probe)
    pruned, report = handler_for(config)(module, config, **opts)
    if used_before is not None and used_before < report.params_before:
        # a part the output never reads (BERT's pooler under a sentence encoder) is not counted: the ONNX export
        # drops it, and the table after the command counts the written file
        used_after = counted_parameters(pruned, probe)
        if used_after is not None:
            report.params_before, report.params_after = used_before, used_after
    if handle is not None:
        return handle.with_model(pruned), report
    return pruned, report


def _probe(inputs: Any) -> tuple[torch.Tensor, ...] | None:
    """The first two samples of ``inputs`` to count the parameters the output depends on with (None: none; a model
    the count cannot run on, such as an exported graph, is left to :func:`~deepshrink.backends.torch.counted_parameters`)."""
    return tuple(torch.as_tensor(x)[:2] for x in inputs) if inputs else None


def _mode_switchable(module: nn.Module) -> bool:
    """Graphs loaded from ``.pt2`` refuse ``train()``/``eval()``."""
    try:
        module.train(module.training)
        return True
    except NotImplementedError:
        return False


def _is_exported_graph(module: nn.Module) -> bool:
    """A graph loaded from ``.pt2`` (torch.export): fixed shapes and inference semantics, no Python
    layers. Told by structure, since a copy of it no longer refuses ``train()`` as the original does."""
    return isinstance(module, torch.fx.GraphModule) and not any(isinstance(m, WEIGHTED) for m in module.modules())


def _check_data_fits(module: nn.Module, inputs: tuple[torch.Tensor, ...], source: str) -> Any:
    """Run ``module`` on ``inputs``; its output, or :class:`InputError` when data and model disagree."""
    was = module.training
    switch = _mode_switchable(module)
    if switch:
        module.eval()
    try:
        with torch.no_grad():
            return module(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here means data and model disagree
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise InputError(f"data {source} (inputs {shapes}) does not fit the model: "
                         f"{first_line(exc)}") from None
    finally:
        if switch:
            module.train(was)


def _finetune(module: nn.Module, data: Any, epochs: int, lr: float, *, batch_size: int, seed: int, progress: bool,
              callbacks: list[Any] | None = None, what: str, lr_schedule: str = "constant",
              mixed_precision: str = "no", teacher: nn.Module | None = None,
              kd: tuple[float, float] = (4.0, 0.5)) -> dict[str, Any]:
    """Fine-tune ``module`` in place on labelled ``data``; returns the :class:`PruneReport` fields it fills.
    ``teacher``: the unpruned model (frozen): the loss is then :func:`deepshrink.train.kd.kd_loss` against its
    outputs at ``kd`` = (temperature, alpha) instead of the labels' cross-entropy alone."""
    from ..train import Trainer
    from ..train.kd import kd_step
    from ..train.trainer import default_forward
    from .unstructured import HoldMasks

    train = as_train_data(data, what=what, labels_needed=teacher is None or kd[1] < 1.0)
    if _is_exported_graph(module) or not _mode_switchable(module):
        raise UnsupportedError(f"{what} of a model loaded from .pt2 is not possible (torch.export graphs cannot switch "
                               "to training mode); pass package.module:factory with --weights, or prune one-shot")
    labels = np.asarray(train[-1])
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)  # class ids stored as floats (1.0, 2.0)
        train = (*train[:-1], labels)
    if labels.dtype.kind not in "iu":
        raise InputError(f"{what}: labels must be integer class ids (got {labels.dtype})")
    # an ONNX import has its BatchNorm folded away by the exporter: put it back while training, fold it after
    from ..train.batchnorm import batchnorm_for_training, fold_batchnorm

    pairs = batchnorm_for_training(module, train[:-1], batch_size, steps=epochs * -(-len(labels) // batch_size))
    try:
        res = Trainer(module, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                      callbacks=[*(callbacks or []), HoldMasks(module)], lr_schedule=lr_schedule,
                      mixed_precision=mixed_precision, step_fn=kd_step(teacher, *kd) if teacher is not None else None,
                      forward_fn=default_forward).fit(train)
    except (RuntimeError, IndexError) as exc:
        raise InputError(f"{what} failed on the data: {first_line(exc)}") from None
    finally:
        fold_batchnorm(module, pairs)
    return {"finetune_loss": [res.losses[0], res.losses[-1]] if res.losses else None,
            "batchnorm_recalibrated": res.batchnorm_recalibrated, "batchnorm_inserted": len(pairs),
            "mixed_precision": mixed_precision, "lr_schedule": lr_schedule,
            "distilled": {"temperature": kd[0], "alpha": kd[1]} if teacher is not None else None}


def _training(config: PruneConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """The fine-tune's keyword arguments a config and the verb's options set (schedule, precision, teacher)."""
    return {"lr_schedule": getattr(config, "lr_schedule", "constant"), "mixed_precision": opts.get("mixed_precision", "no"),
            "teacher": opts.get("teacher"), "kd": (getattr(config, "kd_temperature", 4.0), getattr(config, "kd_alpha", 0.5))}


def _report(method: str, before: int, sp_before: float, module: nn.Module, layers: dict[str, nn.Module] | None = None,
            **kw: Any) -> PruneReport:
    if layers is not None and (dense := left_dense(module, layers)):
        kw["warnings"] = [*kw.get("warnings", []), dense]
    return PruneReport(method, before, count_params(module), sp_before, sparsity_of(module), **kw)


@register(MagnitudePruneConfig)
def _magnitude(module: nn.Module, config: MagnitudePruneConfig, *, data: Any, batch_size: int, seed: int,
               progress: bool, **opts: Any) -> tuple[nn.Module, PruneReport]:
    from .unstructured import apply_masks, magnitude_masks, remove_masks

    before, sp0 = count_params(module), sparsity_of(module)
    layers = weighted_layers(module, config.protect)
    if config.finetune_epochs:
        as_train_data(data, what="fine-tuning", labels_needed=not soft_targets_only(config))  # fail before any change
    apply_masks(layers, magnitude_masks(layers, sparsity=config.sparsity, threshold=config.threshold,
                                        scope=config.scope))
    trained: dict[str, Any] = {}
    if config.finetune_epochs:
        trained = _finetune(module, data, config.finetune_epochs, config.lr, batch_size=batch_size, seed=seed,
                            progress=progress, what="fine-tuning", **_training(config, opts))
    remove_masks(module)
    return module, _report("magnitude", before, sp0, module, layers, finetune_epochs=config.finetune_epochs, **trained)


@register(NMPruneConfig)
def _nm(module: nn.Module, config: NMPruneConfig, *, data: Any, batch_size: int, seed: int, progress: bool,
        **opts: Any) -> tuple[nn.Module, PruneReport]:
    from .unstructured import apply_masks, nm_masks, remove_masks

    before, sp0 = count_params(module), sparsity_of(module)
    layers = weighted_layers(module, config.protect)
    if config.finetune_epochs:
        as_train_data(data, what="fine-tuning", labels_needed=not soft_targets_only(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = nm_masks(layers, config.n, config.m)
    if not masks:
        raise InputError(f"no layer has an input size divisible by {config.m}; N:M pruning changed nothing")
    apply_masks(layers, masks)
    trained: dict[str, Any] = {}
    if config.finetune_epochs:
        trained = _finetune(module, data, config.finetune_epochs, config.lr, batch_size=batch_size, seed=seed,
                            progress=progress, what="fine-tuning", **_training(config, opts))
    remove_masks(module)
    msgs = _unique(str(w.message) for w in caught)
    return module, _report(f"nm {config.n}:{config.m}", before, sp0, module, layers, warnings=msgs,
                           finetune_epochs=config.finetune_epochs, **trained)


@register(GradualPruneConfig)
def _gradual(module: nn.Module, config: GradualPruneConfig, *, data: Any, batch_size: int, seed: int,
             progress: bool, **opts: Any) -> tuple[nn.Module, PruneReport]:
    from .unstructured import GradualPruneCallback, remove_masks

    before, sp0 = count_params(module), sparsity_of(module)
    layers = weighted_layers(module, config.protect)
    as_train_data(data, what="gradual pruning", labels_needed=not soft_targets_only(config))
    cb = GradualPruneCallback(layers, initial=config.initial_sparsity, final=config.final_sparsity,
                              begin=config.begin, end=config.end, frequency=config.frequency, scope=config.scope)
    trained = _finetune(module, data, config.epochs, config.lr, batch_size=batch_size, seed=seed, progress=progress,
                        callbacks=[cb], what="gradual pruning", **_training(config, opts))
    remove_masks(module)
    return module, _report("gradual", before, sp0, module, layers, finetune_epochs=config.epochs,
                           schedule=cb.history, **trained)


@register(StructuredPruneConfig)
def _structured(module: nn.Module, config: StructuredPruneConfig, *, data: Any, example_inputs: Any,
                batch_size: int, seed: int, progress: bool, **opts: Any) -> tuple[nn.Module, PruneReport]:
    from .structured import structured_prune
    from .structured.reconstruct import mask_index as reconstruct_mask_index

    before, sp0 = count_params(module), sparsity_of(module)
    if _is_exported_graph(module):
        raise UnsupportedError("structured pruning needs the model's Python modules: pass package.module:factory "
                               "with --weights, or the .onnx file the .pt2 came from (pruned through its PyTorch "
                               "import); a .pt2 archive holds a traced graph with fixed shapes")
    protected = protected_names(module, config.protect)
    if config.finetune_epochs:
        as_train_data(data, what="fine-tuning", labels_needed=not soft_targets_only(config))
    taylor_batches = None
    if config.importance == "taylor":
        train = as_train_data(data, what="Taylor importance")
        n = min(len(train[0]), 256)
        taylor_batches = [tuple(torch.as_tensor(np.asarray(a)[i:i + batch_size]) for a in train)
                          for i in range(0, n, batch_size)]
    act_batches = None
    if config.importance in ("activation", "fisher") and data is not None:
        xs = first_inputs(data, ACTIVATION_SAMPLES) or ()
        act_batches = [tuple(x[i:i + batch_size] for x in xs) for i in range(0, len(xs[0]), batch_size)] if xs else None
    recon_batches = recon_mask = None
    if config.reconstruct and data is not None:
        xs = first_inputs(data, config.reconstruct_samples) or ()
        recon_batches = [tuple(x[i:i + batch_size] for x in xs) for i in range(0, len(xs[0]), batch_size)] if xs else None
        names = list(data.inputs) if isinstance(getattr(data, "inputs", None), dict) else None
        recon_mask = reconstruct_mask_index(module, len(xs), names) if xs else None
    from ..train.trainer import default_step  # the loss Taylor importance differentiates: the fine-tune's

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = structured_prune(module, config, example_inputs, protected=protected,
                                 taylor_batches=taylor_batches, loss_fn=default_step, act_batches=act_batches,
                                 recon_batches=recon_batches, recon_mask=recon_mask)
    msgs = _unique(str(w.message) for w in caught)
    if recon_batches and "reconstruct_samples" in config.model_fields_set and (
            got := sum(len(b[0]) for b in recon_batches)) < config.reconstruct_samples:
        msgs.append(f"reconstruct_samples {config.reconstruct_samples}: the data holds {got} samples for it, so the "
                    f"layers were re-fitted on {got}")
    pruned = [g for g in graph.groups if g.keep is not None]
    if not pruned:
        raise InputError("structured pruning found no prunable channel group"
                         + (f" ({_reasons_in_short(msgs)})" if msgs else ""))
    trained: dict[str, Any] = {}
    if config.finetune_epochs:
        trained = _finetune(module, data, config.finetune_epochs, config.lr, batch_size=batch_size, seed=seed,
                            progress=progress, what="fine-tuning", **_training(config, opts))
    groups = [{"name": g.name, "kind": g.kind, "size": g.size, "kept": int(len(g.keep)),
               "members": sorted({m.module for m in g.members})} for g in pruned]  # type: ignore[arg-type]
    return module, _report("structured", before, sp0, module, groups=groups, warnings=msgs,
                           finetune_epochs=config.finetune_epochs, reconstructed=[f.to_dict() for f in graph.fits],
                           **trained)


def _reasons_in_short(msgs: list[str], most: int = 4) -> str:
    """The analysis's warnings in one line: "REASON: channel group A, channel group B, ... left unpruned" becomes
    "REASON (N groups: A, B, C, …)" — the count, and the first three names."""
    import re

    short = []
    for m in msgs:
        found = re.match(r"(.*?): ((?:\w+ group [^,]+(?:, )?)+) left unpruned$", m)
        if not found:
            short.append(m)
            continue
        names = re.findall(r"\w+ group ([^,]+)", found.group(2))
        n = len(names)
        short.append(f"{found.group(1)} ({n} group{'s' * (n != 1)}: {', '.join(names[:3])}{', …' * (n > 3)})")
    more = f"; and {len(short) - most} more" if len(short) > most else ""
    return "; ".join(short[:most]) + more


def _unique(msgs: Any) -> list[str]:
    """Messages in first-seen order, each once."""
    return list(dict.fromkeys(msgs))


class _CallableModule(types.ModuleType):
    """Importing ``deepshrink.prune`` binds the *package* to ``deepshrink.prune``, shadowing the
    lazy verb; making the package callable keeps ``ds.prune(model, config)`` working either way."""

    def __call__(self, model: nn.Module | ModelHandle, config: PruneConfig, **kw: Any) -> nn.Module | ModelHandle:
        return prune(model, config, **kw)


sys.modules[__name__].__class__ = _CallableModule
