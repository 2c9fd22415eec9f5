"""Knowledge distillation: ``distill(teacher, student=None, data, config)``.

The student is the caller's model or one derived from the teacher (``DistillConfig.derive``:
``layers=K`` keeps K transformer layers chosen by measured importance, ``width=F`` narrows
every layer by structured pruning); it is checked for output compatibility on the data before
any training. Training goes through the shared :class:`~deepshrink.train.Trainer`: seeded,
resumable from checkpoints (``checkpoint_dir``), and data-parallel under ``torchrun`` with
the global batch fixed (N processes reproduce the one-process run up to summation order).
Losses: :mod:`deepshrink.distill.losses`. The teacher and the caller's student are not changed.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..backends.torch import flatten_outputs, used_parameter_count
from ..core.handle import ModelHandle
from ..core.result import Result, VerbReport
from ..errors import InputError, UnsupportedError, first_line
from .config import DistillConfig, parse_derive
from .derive import LayerChoice, choose_layers, derive_width, find_layer_stack, with_layers
from .features import Capture
from .losses import attention_loss, embedding_loss, hidden_loss, kd_loss, uniform_layer_map

__all__ = ["DistillConfig", "DistillReport", "check_compatible", "derive_student", "distill", "distill_with_report"]

RUN_FILE = "distill-run.json"


@dataclass
class DistillReport:
    """What a distillation did: the student's origin, sizes, the losses optimised and the run's figures."""

    student_from: str  # "given", "layers=3", "width=0.5"
    loss: str  # the output term: kd or embedding
    teacher_params: int
    student_params: int
    layers: dict[str, Any] | None = None  # LayerChoice.to_dict() when derived by layers
    width: dict[str, Any] | None = None  # the structured-pruning report when derived by width
    layer_map: list[int] | None = None
    steps: int = 0
    epochs: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    evals: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    world_size: int = 1
    objective: str = ""  # the whole loss optimised, e.g. "embedding + 1×hidden (mse)"; first/last_loss are of it
    batchnorm_recalibrated: int = 0  # BatchNorm layers with momentum 0 whose statistics were recomputed at the end
    batchnorm_inserted: int = 0  # an ONNX import's convolutions given a BatchNorm while training, folded after
    mixed_precision: str = "no"  # "bf16": forward passes under bfloat16 autocast

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verb_report(self, config: DistillConfig) -> VerbReport:
        """This report as the common :class:`~deepshrink.core.result.VerbReport` (``details`` is :meth:`to_dict`)."""
        summary = (f"distilled {self.student_from}: parameters {self.teacher_params:,} → {self.student_params:,}, "
                   f"{self.objective or self.loss} loss {self.first_loss or 0:.4f} → {self.last_loss or 0:.4f}")
        return VerbReport("distill", self.student_from, summary, config=config.to_dict(),
                          measurements={"teacher_params": self.teacher_params, "student_params": self.student_params,
                                        "steps": self.steps, "first_loss": self.first_loss, "last_loss": self.last_loss},
                          details=self.to_dict())


def distill(teacher: Any, student: Any = None, data: Any = None, config: DistillConfig | None = None,
            **options: Any) -> Result:
    """Distil ``teacher`` into a student; see :func:`distill_with_report` for the arguments and errors.

    Returns a :class:`~deepshrink.core.result.Result`: ``.model`` a torch handle on the student
    (``.model.model`` the ``nn.Module``), ``.report`` (``details`` the :class:`DistillReport`)."""
    out, rep = distill_with_report(teacher, student, data, config, **options)
    if not isinstance(out, ModelHandle):
        from ..loading import load

        out = load(out)
    return Result(out, rep.verb_report(config or DistillConfig()))


def distill_with_report(teacher: Any, student: Any = None, data: Any = None, config: DistillConfig | None = None, *,
                        eval_data: Any = None, checkpoint_dir: str | os.PathLike[str] | None = None,
                        resume: bool = False, progress: bool = True, deterministic: bool | None = None,
                        targets: torch.Tensor | np.ndarray | None = None) -> tuple[Any, DistillReport]:
    """Distil ``teacher`` into ``student`` (or one derived per ``config.derive``) on ``data``.

    ``teacher``/``student``: ``nn.Module``, torch :class:`ModelHandle` or a source ``ds.load`` reads.
    ``data``: a deepshrink ``Dataset`` (named inputs, optional labels) or arrays ``(x..., [y])`` —
    labels are used when the teacher takes one fewer input than the tuple holds. Unlabelled data is
    enough: the teacher provides the targets. ``eval_data``: what the per-epoch fidelity figure is
    measured on (default: the first 256 training samples). ``checkpoint_dir``: a checkpoint every
    ``config.checkpoint_every`` steps (0: every epoch) and at the end; a checkpoint already there is
    continued only with ``resume=True``. ``targets``: the teacher's outputs on ``data`` (N, ...), computed
    once by the caller and shared by several students (output losses only; checked against the teacher
    on the first samples).

    Raises :class:`InputError` (before any training) for empty data, a student whose output does not
    line up with the teacher's (shape, vocabulary), both or neither of ``student`` and ``derive``, a
    derivation that leaves no layers, or a checkpoint from other settings.
    """
    cfg = config or DistillConfig()
    t_handle = _handle(teacher, "teacher")
    t_mod = t_handle.model
    inputs, labels = _arrays(data, t_handle, "data")
    probe = tuple(x[: min(8, len(x))] for x in inputs)
    t_mod.eval()
    with torch.no_grad():
        t_probes = _outputs(t_mod(*probe))
    t_probe = t_probes[0]
    n_out = len(t_probes)  # a detector's boxes and landmarks beside its scores: every one is distilled
    out_kind = resolve_loss(cfg.loss, t_handle, t_probe, n_outputs=n_out)
    if out_kind == "kd":
        _check_label_range(labels, int(t_probe.shape[-1]), "data")
    if cfg.attention_weight > 0:  # refuse a teacher without attention maps now, not after deriving the student
        Capture(t_mod, hidden=False, attention=True, probe=lambda m: m(*probe)).close()
    s_mod, origin, layer_choice, width = derive_student(t_mod, student, cfg, inputs, progress=progress)
    check_compatible(t_mod, s_mod, probe, out_kind, t_probes)
    # the outputs after the first: mean squared error over the teacher output's variance (scale-free, so boxes in
    # [0, 1] weigh as much as landmarks in pixels); the first too when it is matched by MSE among several
    # (the teacher's outputs on all the data are computed once here when training needs them precomputed)
    t_every = (_teacher_outputs(t_mod, inputs, every=True)
               if n_out > 1 and cfg.hidden_weight <= 0 and cfg.attention_weight <= 0 else None)
    scales = None if n_out == 1 else _output_scales(
        t_every if t_every is not None else _teacher_outputs(t_mod, [x[:SCALE_SAMPLES] for x in inputs], every=True))
    frozen = _freeze_named(s_mod, cfg.freeze)  # the student is a copy: refused names leave nothing changed
    dropouts = _dropouts(s_mod, cfg.dropout)
    functional_dropout = _functional_dropout(s_mod, cfg.dropout, probe)

    layer_map = None
    hidden, attention = cfg.hidden_weight > 0, cfg.attention_weight > 0
    _refuse_unused(cfg, out_kind, hidden, attention)
    from ..train.batchnorm import batchnorm_for_training, fold_batchnorm

    cap_t = cap_s = None
    bn_pairs: list[Any] = []
    unused = list(frozen)
    try:  # from here on the teacher carries capture hooks: a refusal below leaves it as it was given
        projections = None
        if hidden or attention:
            def run(m: nn.Module) -> Any:
                return m(*probe)

            cap_t = Capture(t_mod, hidden=hidden, attention=attention, probe=run)
            cap_s = Capture(s_mod, hidden=hidden, attention=attention, probe=run)
            layer_map = _layer_map(cfg.layer_map, layer_choice, cap_s.n_layers, cap_t.n_layers)
            if len(layer_map) != cap_s.n_layers or any(not 0 <= i < cap_t.n_layers for i in layer_map):
                raise InputError(f"layer_map {layer_map}: give one teacher layer (0..{cap_t.n_layers - 1}) for each of the "
                                 f"student's {cap_s.n_layers} layers")
            if hidden:
                with torch.no_grad():
                    cap_t.clear()
                    cap_s.clear()
                    t_mod(*probe)
                    s_mod.eval()
                    s_mod(*probe)
                tw = [s.shape[-1] for s in cap_t.states]
                sw = [s.shape[-1] for s in cap_s.states]
                if any(sw[j] != tw[t] for j, t in enumerate(layer_map)):
                    torch.manual_seed(cfg.seed)
                    projections = nn.ModuleList([nn.Linear(sw[j], tw[t], bias=False) for j, t in enumerate(layer_map)])

        module = _Student(s_mod, projections)
        precompute = not (hidden or attention)
        train_arrays: list[torch.Tensor] = list(inputs)
        if precompute and n_out > 1:
            train_arrays.extend(t_every)
        elif precompute:
            if targets is not None:
                given = torch.as_tensor(np.asarray(targets)).float()
                if len(given) != len(inputs[0]) or not torch.allclose(given[: len(t_probe)], t_probe.float(), atol=1e-4):
                    raise InputError("targets are not the teacher's outputs on this data (length or values differ)")
                train_arrays.append(given)
            else:
                train_arrays.append(_teacher_outputs(t_mod, inputs))
        if labels is not None:
            train_arrays.append(labels)
        n_in = len(inputs)
        trim = _trim_index(t_handle, inputs)
        use_labels = labels is not None and out_kind == "kd"

        def step(wrapped: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
            xs = _trimmed(tuple(batch[:n_in]), trim)
            rest = batch[n_in:]
            if cap_s is not None:
                cap_s.clear()
            with functional_dropout:
                s_outs = _as_float(_outputs(wrapped(*xs)))
            if precompute:
                t_outs = list(rest[:n_out])
            else:
                assert cap_t is not None
                cap_t.clear()
                _follow(t_mod, xs[0])
                with torch.no_grad():
                    t_outs = _as_float(_outputs(t_mod(*xs)))
            s_out, t_out = s_outs[0], t_outs[0]
            if out_kind == "kd":
                loss = kd_loss(s_out, t_out, rest[-1] if use_labels else None, cfg.temperature, cfg.alpha)
            elif scales is not None and cfg.metric == "mse":
                loss = F.mse_loss(s_out, t_out) / scales[0]
            else:
                loss = embedding_loss(s_out, t_out, cfg.metric)
            if scales is not None:
                for k in range(1, n_out):
                    loss = loss + F.mse_loss(s_outs[k], t_outs[k]) / scales[k]
            if hidden:
                assert cap_s is not None and cap_t is not None and layer_map is not None
                mask = xs[trim] if trim is not None else None
                loss = loss + cfg.hidden_weight * hidden_loss(cap_s.states, cap_t.states, layer_map, module.proj, cfg.metric,
                                                              mask=mask)
            if attention:
                assert cap_s is not None and cap_t is not None and layer_map is not None
                mask = xs[trim] if trim is not None else None
                loss = loss + cfg.attention_weight * attention_loss(cap_s.maps, cap_t.maps, layer_map, heads=cap_s.heads,
                                                                    mask=mask)
            return loss

        def forward(wrapped: nn.Module, batch: Sequence[torch.Tensor]) -> Any:  # the student alone (BatchNorm recalibration)
            if cap_s is not None:
                cap_s.clear()
            return wrapped(*_trimmed(tuple(batch[:n_in]), trim))

        lengths = None
        if cfg.group_by_length:
            if trim is None or inputs[trim].dim() != 2:
                raise InputError("group_by_length needs the teacher to take an attention_mask input (token sequences)")
            lengths = inputs[trim].sum(1).tolist()
        eval_fn = _eval_fn(t_mod, t_handle, eval_data, inputs, labels, out_kind, trim)
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is not None:
            _check_run(ckpt, cfg, origin, len(inputs[0]), resume)
        from ..train import Trainer

        lr = cfg.lr or (1e-4 if find_layer_stack(s_mod) is not None else 1e-3)
        steps_per_epoch = -(-len(inputs[0]) // cfg.batch_size)
        warmup_steps = int(round(cfg.warmup * steps_per_epoch * cfg.epochs))
        trainer = Trainer(module, step_fn=step, optimizer=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay,
                          epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, eval_fn=eval_fn,
                          checkpoint_dir=ckpt, checkpoint_every=cfg.checkpoint_every or steps_per_epoch,
                          progress=progress, lr_schedule=cfg.lr_schedule, deterministic=deterministic,
                          global_batch=True, warmup_steps=warmup_steps, lengths=lengths,
                          forward_fn=forward, mixed_precision=cfg.mixed_precision)
        unused = frozen + _freeze_unused(module, step, tuple(a[:2] for a in train_arrays))
        # a student imported from ONNX lost its BatchNorm to the exporter: put back while training, folded after
        bn_pairs = batchnorm_for_training(s_mod, inputs, cfg.batch_size, steps=steps_per_epoch * cfg.epochs)
        torch.manual_seed(cfg.seed)  # dropout masks: the same on every process and every resume
        res = trainer.fit(tuple(train_arrays))
    finally:
        fold_batchnorm(s_mod, bn_pairs)
        for cap in (cap_s, cap_t):
            if cap is not None:
                cap.close()
        for p in unused:
            p.requires_grad_(True)
        for mod, p_drop in dropouts:
            mod.p = p_drop
    world = _leave_process_group()
    s_mod.eval()
    report = DistillReport(
        student_from=origin, loss=out_kind, teacher_params=used_parameter_count(t_mod, probe),
        student_params=used_parameter_count(s_mod, probe),
        layers=layer_choice.to_dict() if layer_choice else None, width=width, layer_map=layer_map,
        steps=res.steps, epochs=res.epochs, first_loss=res.losses[0] if res.losses else None,
        last_loss=res.losses[-1] if res.losses else None, evals=res.evals, resumed_from=res.resumed_from,
        world_size=world, objective=(out_kind if scales is None else f"{n_out}-output MSE/variance" if out_kind == "embedding"
                                     and cfg.metric == "mse" else f"{out_kind} + {n_out - 1}-output MSE/variance")
        + (f" + {cfg.hidden_weight:g}×hidden ({cfg.metric})" if hidden else "")
        + (f" + {cfg.attention_weight:g}×attention" if attention else ""), batchnorm_recalibrated=res.batchnorm_recalibrated,
        batchnorm_inserted=len(bn_pairs), mixed_precision=cfg.mixed_precision)
    if isinstance(teacher, ModelHandle) or not isinstance(teacher, nn.Module):
        s_handle = student if isinstance(student, ModelHandle) else t_handle
        out = s_handle.with_model(s_mod, metadata={**t_handle.metadata, "deepshrink.distilled": origin})
        return out, report
    return s_mod, report


# ------------------------------------------------------------------------------------------
# the student

def derive_student(teacher: nn.Module, student: Any, cfg: DistillConfig, inputs: Sequence[torch.Tensor],
                   progress: bool = False) -> tuple[nn.Module, str, LayerChoice | None, dict[str, Any] | None]:
    """(student module, where it came from, the layer choice, the width-pruning report)."""
    if student is not None and cfg.derive:
        raise InputError("give either a student or derive=..., not both")
    if student is not None:
        return copy.deepcopy(_handle(student, "student").model), "given", None, None
    if not cfg.derive:
        raise InputError("no student: pass a student model, or derive one from the teacher (derive='layers=K' or "
                         "derive='width=F')")
    kind, value = parse_derive(cfg.derive)
    batches = [tuple(x[i:i + 32] for x in inputs) for i in range(0, min(len(inputs[0]), 64), 32)]
    if kind == "layers":
        choice = choose_layers(teacher, int(value), batches, selection=cfg.layer_selection, progress=progress)
        s = with_layers(teacher, choice.keep)
        return s, f"layers={int(value)}", choice, None
    s, rep = derive_width(teacher, float(value), tuple(x[:8] for x in inputs), act_batches=batches)
    return s, f"width={value:g}", None, rep


def _layer_map(spec: Any, choice: LayerChoice | None, n_student: int, n_teacher: int) -> list[int]:
    """The teacher layer for each student layer: given, ``uniform`` (TinyBERT) or ``kept`` (where a
    ``layers=K`` student's layers were copied from)."""
    if spec is None or spec == "uniform":
        return uniform_layer_map(n_student, n_teacher)
    if spec == "kept":
        if choice is None:
            raise InputError("layer_map 'kept' maps each student layer to the teacher layer it was copied from; "
                             "it needs a student derived with derive='layers=K' (give the map, or 'uniform')")
        return list(choice.keep)
    return list(spec)


def resolve_loss(loss: str, handle: ModelHandle, probe_out: torch.Tensor, *, n_outputs: int = 1) -> str:
    """``auto`` → ``embedding`` for an encoder (tokenizer attached, an output named ``*embedding*``,
    or unit-norm output rows), for outputs that are already probabilities (every value in [0, 1]:
    a sigmoid or softmax head, whose softmax again would be near uniform and teach nothing — the
    student then matches the outputs themselves, ``metric`` MSE by default) and for a model with several
    floating-point outputs (``n_outputs`` > 1: which of them, if any, are class logits cannot be told
    from their values — MTCNN's ONet returns box offsets first — so each is matched as it is); ``kd``
    otherwise (logits)."""
    if loss != "auto":
        return loss
    if n_outputs > 1:
        return "embedding"
    names = " ".join(handle.output_names).lower()
    if "embedding" in names or handle.tokenizer_dir is not None:
        return "embedding"
    if probe_out.dim() == 2 and probe_out.is_floating_point():
        norms = probe_out.norm(dim=-1)
        if torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            return "embedding"
    if probe_out.is_floating_point() and probe_out.numel() and bool(((probe_out >= 0) & (probe_out <= 1)).all()):
        return "embedding"
    return "kd"


@torch.no_grad()
def check_compatible(teacher: nn.Module, student: nn.Module, probe: tuple[torch.Tensor, ...], loss: str,
                     t_outs: list[torch.Tensor] | None = None) -> None:
    """Refuse, in one line, a student whose outputs cannot be compared with the teacher's on ``probe``
    (the teacher's inputs): a student that fails on them, another number of floating-point outputs, another
    output shape, another vocabulary. ``t_outs``: the teacher's floating-point outputs on ``probe``
    (:func:`_outputs`), computed here when None."""
    t_outs = _outputs(teacher(*probe)) if t_outs is None else t_outs
    t_out = t_outs[0]
    was = student.training
    student.eval()
    try:
        out = student(*probe)
        s_outs = _outputs(out) if flatten_outputs(out) else []
        s_out = s_outs[0] if s_outs else out
    except Exception as exc:
        raise InputError(f"the student cannot run on the teacher's inputs ({type(exc).__name__}: {first_line(exc)})") from None
    finally:
        student.train(was)
    if not isinstance(s_out, torch.Tensor):
        raise InputError(f"the student returns {type(s_out).__name__}, not a tensor to compare with the teacher's output")
    if loss == "kd" and t_out.shape[-1] != s_out.shape[-1]:
        raise InputError(f"teacher and student outputs do not line up: {t_out.shape[-1]} vs {s_out.shape[-1]} classes "
                         f"(vocabulary) in the last axis; soft-target KD compares them class by class")
    if len(s_outs) != len(t_outs):
        raise InputError(f"teacher and student outputs do not line up: the teacher returns {len(t_outs)} "
                         f"floating-point output(s), the student {len(s_outs)}; every one is distilled")
    for k, (t, s) in enumerate(zip(t_outs, s_outs, strict=True)):
        if tuple(t.shape) != tuple(s.shape):
            which = f"output {k}: " if len(t_outs) > 1 else ""
            raise InputError(f"teacher and student outputs do not line up: {which}teacher {tuple(t.shape)}, student "
                             f"{tuple(s.shape)} on the same {len(probe[0])} samples")


class _Student(nn.Module):
    """What the trainer trains (and checkpoints): the student and, for hidden-state losses across
    widths, the learned projections (dropped after training)."""

    def __init__(self, student: nn.Module, proj: nn.ModuleList | None) -> None:
        super().__init__()
        self.student = student
        self.proj = proj

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.student(*xs)


def _dropouts(student: nn.Module, p: float | None) -> list[tuple[nn.Module, float]]:
    """Set every ``nn.Dropout`` of ``student`` to ``p`` for the run; return (module, its own p) to restore."""
    if p is None:
        return []
    mods = [m for m in student.modules() if isinstance(m, nn.Dropout)]
    own = [(m, float(m.p)) for m in mods]
    for m in mods:
        m.p = p
    return own


# the functional dropouts and their signatures, read once: the mode binds every dropout call of every training
# step against them
_DROPOUT_SIGNATURES = {f: inspect.signature(f) for f in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                                                         F.alpha_dropout, F.feature_alpha_dropout)}


class _DropoutOverride(TorchFunctionMode):
    """Inside the block, every functional dropout call made in training mode (``F.dropout(x, 0.25,
    training=self.training)``: the dropout a model calls without an ``nn.Dropout`` module) drops with
    probability ``p`` instead of its own; ``calls`` counts the training-mode calls, ``changed`` those whose
    own ``p`` differed. A ``torch.overrides.TorchFunctionMode``: every torch call inside goes through it, so
    it is entered only when the student has such dropout at another probability."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.calls = 0
        self.changed = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        signature = _DROPOUT_SIGNATURES.get(func)
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments.get("training"):
                self.calls += 1
                if bound.arguments["p"] != self.p:
                    self.changed += 1
                    bound.arguments["p"] = self.p
            return func(*bound.args, **bound.kwargs)
        return func(*args, **kwargs)


def _functional_dropout(student: nn.Module, p: float | None, probe: tuple[torch.Tensor, ...]) -> Any:
    """A context for the student's training forward passes: :class:`_DropoutOverride` (``p``) when the student
    calls functional dropout at another probability once its ``nn.Dropout`` modules are set (one forward pass
    on ``probe`` in training mode tells: a module's own ``nn.Dropout`` calls ``F.dropout`` too, at ``p``
    already), else a no-op. Raises :class:`InputError` when ``p`` is given and the
    student has no dropout of either kind."""
    if p is None:
        return contextlib.nullcontext()
    probe_mode = _DropoutOverride(p)
    was = student.training
    buffers = [(b, b.clone()) for b in student.buffers()]  # BatchNorm statistics stay as they were
    student.train()
    try:
        with torch.no_grad(), probe_mode:
            student(*probe)
    finally:
        student.train(was)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if probe_mode.changed:
        return _DropoutOverride(p)
    if not probe_mode.calls and not any(isinstance(m, nn.Dropout) for m in student.modules()):
        raise InputError(f"dropout {p:g}: the student has no dropout (torch.nn.Dropout or functional) to set; "
                         "leave dropout out")
    return contextlib.nullcontext()


def _freeze_named(student: nn.Module, patterns: Sequence[str]) -> list[nn.Parameter]:
    """The student's parameters whose names match a glob in ``patterns`` (``*word_embeddings*``), frozen for the
    run; a pattern that matches nothing is refused in one line (a typo would silently train everything)."""
    import fnmatch

    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    out: list[nn.Parameter] = []
    for pat in patterns:
        hits = [p for n, p in named if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            sample = ", ".join(n for n, _ in named[:3])
            raise InputError(f"freeze {pat!r} matches none of the student's parameters (names such as {sample})")
        out += [p for p in hits if all(p is not q for q in out)]
    for p in out:
        p.requires_grad_(False)
    return out


def _freeze_unused(module: nn.Module, step: Any, batch: tuple[torch.Tensor, ...]) -> list[nn.Parameter]:
    """Parameters the loss does not reach (a pooler beside the pooled output the loss reads), frozen for the
    run: the optimiser skips them and DistributedDataParallel need not search for them every step."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]  # BatchNorm statistics: left as they were
    module.train()
    step(module, batch).backward()
    with torch.no_grad():
        for b, v in saved:
            b.copy_(v)
    unused = [p for p in module.parameters() if p.requires_grad and p.grad is None]
    for p in unused:
        p.requires_grad_(False)
    module.zero_grad(set_to_none=True)
    return unused


# ------------------------------------------------------------------------------------------
# data, evaluation, run bookkeeping

def _handle(src: Any, what: str) -> ModelHandle:
    from ..convert.onnx2torch.route import trainable_handle
    from ..loading import load

    h = src if isinstance(src, ModelHandle) else load(src)
    h = trainable_handle(h)  # an ONNX file is trained / run as its PyTorch import (convert's ONNX → PyTorch route)
    if h.kind != "torch" or not isinstance(h.model, nn.Module):
        raise UnsupportedError(f"the {what} must be a PyTorch model to distil with; {h.source or 'it'} is {h.kind}")
    if _is_exported(h.model):
        raise UnsupportedError(f"the {what} is a traced .pt2 graph; distillation needs the model's Python modules "
                               "(package.module:factory with --weights, a Hugging Face folder, or the .onnx file the "
                               ".pt2 came from)")
    return h


def _is_exported(m: nn.Module) -> bool:
    try:
        m.train(m.training)
        return False
    except NotImplementedError:
        return True


def _arrays(data: Any, handle: ModelHandle, what: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if data is None:
        raise InputError(f"distillation needs {what}: inputs for the teacher (labels optional)")
    if hasattr(data, "inputs") and isinstance(data.inputs, dict):
        arrays = [np.asarray(v) for v in data.inputs.values()]
        labels = getattr(data, "labels", None)
    elif isinstance(data, (tuple, list)):
        arrays = [np.asarray(a) for a in data]
        n_in = len(handle.inputs) or 1
        labels = arrays.pop() if len(arrays) == n_in + 1 else None
    else:
        raise InputError(f"cannot distil on {type(data).__name__}; pass a deepshrink Dataset or arrays (x..., [y])")
    if not arrays or any(len(a) == 0 for a in arrays):
        raise InputError(f"the {what} is empty (0 samples)")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays) or (labels is not None and len(labels) != n):
        raise InputError(f"the {what}'s arrays disagree on the number of samples")
    tensors = [torch.as_tensor(a) for a in arrays]
    tensors = [t.float() if t.is_floating_point() else t for t in tensors]
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.bool_)
                                 or (np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)))):
            raise InputError(f"the {what}'s labels must be class indices (one whole number per sample), got "
                             f"{lab.dtype} of shape {tuple(lab.shape)}" + (f" such as {lab.flat[0]!r}" if lab.size else ""))
        labels = lab
    return tensors, None if labels is None else torch.as_tensor(np.asarray(labels)).long()


def _refuse_unused(cfg: DistillConfig, out_kind: str, hidden: bool, attention: bool) -> None:
    """An option the resolved losses do not read is refused, not ignored (as ``quantize`` does); only
    values other than the default can be told from "not given"."""
    defaults = DistillConfig()
    unused = []
    if cfg.layer_map is not None and not (hidden or attention):
        unused.append(("layer_map", "--layer-map", cfg.layer_map, "the hidden-state and attention losses"))
    if cfg.metric != defaults.metric and out_kind == "kd" and not hidden:
        unused.append(("metric", "--metric", cfg.metric, "the embedding and hidden-state losses"))
    if cfg.temperature != defaults.temperature and out_kind != "kd":
        unused.append(("temperature", "--temperature", cfg.temperature, "the kd loss"))
    if unused:
        field, flag, value, what = unused[0]
        raise InputError(f"{field} ({flag}) {value} is not used by the {out_kind} loss"
                         f"{' + hidden states' if hidden else ''}: it applies to {what}; leave it out")


def _check_label_range(labels: torch.Tensor | None, classes: int, what: str) -> None:
    """Refuse class indices outside ``[0, classes)`` of the teacher's output, before any training."""
    if labels is None or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise InputError(f"the {what}'s labels run from {lo} to {hi}, but the teacher has {classes} classes "
                         f"(labels 0..{classes - 1})")


def _trim_index(handle: ModelHandle, inputs: Sequence[torch.Tensor]) -> int | None:
    """Which input is an attention mask (batches are cut to their longest sequence), if any."""
    names = handle.input_names
    if "attention_mask" in names and len(names) == len(inputs):
        return names.index("attention_mask")
    return None


def _trimmed(xs: tuple[torch.Tensor, ...], trim: int | None) -> tuple[torch.Tensor, ...]:
    if trim is None or xs[trim].dim() != 2:
        return xs
    length = int(xs[trim].sum(1).max().clamp(min=1))
    return tuple(x[:, :length] if x.dim() >= 2 and x.shape[1] == xs[trim].shape[1] else x for x in xs)


def _follow(model: nn.Module, x: torch.Tensor) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device != x.device:
        model.to(x.device)


def _as_float(outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Floating outputs in float32 (a bfloat16 forward pass's, under mixed precision); others as they are."""
    return [o.float() if o.is_floating_point() else o for o in outs]


def _outputs(out: Any) -> list[torch.Tensor]:
    """A model's floating-point output tensors, in order (the first alone when none is floating-point: a
    model whose only output is integer is refused later, with its own line). Raises :class:`InputError`
    when the output holds no tensor."""
    tensors = flatten_outputs(out)
    if not tensors:
        raise InputError(f"the model's output ({type(out).__name__}) holds no tensor")
    floats = [t for t in tensors if t.is_floating_point()]
    return floats or tensors[:1]


@torch.no_grad()
def _teacher_outputs(teacher: nn.Module, inputs: Sequence[torch.Tensor], batch: int = 64, *,
                     every: bool = False) -> Any:
    """The model's first output on ``inputs`` in batches of ``batch`` (float32); with ``every``, the list of all
    its floating-point outputs."""
    teacher.eval()
    chunks = [_outputs(teacher(*(x[i:i + batch] for x in inputs))) for i in range(0, len(inputs[0]), batch)]
    joined = [torch.cat([c[k] for c in chunks]).float() for k in range(len(chunks[0]))]
    return joined if every else joined[0]


SCALE_SAMPLES = 256


def _output_scales(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The variance of each of the teacher's floating-point ``outputs`` over its first ``SCALE_SAMPLES`` samples
    (a floor of 1e-12): what its squared error is divided by when a model's several outputs are distilled
    together."""
    return [o[:SCALE_SAMPLES].var().clamp_min(1e-12) for o in outputs]


def _eval_fn(teacher: nn.Module, handle: ModelHandle, eval_data: Any, inputs: list[torch.Tensor],
             labels: torch.Tensor | None, out_kind: str, trim: int | None) -> Any:
    if eval_data is not None:
        e_in, e_lab = _arrays(eval_data, handle, "evaluation data")
    else:
        e_in, e_lab = [x[:256] for x in inputs], None if labels is None else labels[:256]
    t_outs = _teacher_outputs(teacher, e_in, every=True)
    t_out = t_outs[0]
    if eval_data is not None and out_kind == "kd":
        _check_label_range(e_lab, int(t_out.shape[-1]), "evaluation data")

    def cosine(s: torch.Tensor, t: torch.Tensor) -> float:  # mean per-sample cosine
        return float(F.cosine_similarity(s.reshape(len(s), -1), t.reshape(len(t), -1), dim=-1).mean())

    @torch.no_grad()
    def fn(module: nn.Module) -> dict[str, float]:
        s_outs = _teacher_outputs(module, e_in, every=True)
        s_out = s_outs[0]
        if out_kind == "embedding":  # several outputs: the worst one's
            return {"cosine": min(cosine(s, t) for s, t in zip(s_outs, t_outs, strict=True))}
        out = {"agreement": float((s_out.argmax(-1) == t_out.argmax(-1)).float().mean())}
        if e_lab is not None:
            out["accuracy"] = float((s_out.argmax(-1) == e_lab).float().mean())
        if len(t_outs) > 1:  # the outputs after the class scores: the worst one's cosine
            out["cosine"] = min(cosine(s, t) for s, t in zip(s_outs[1:], t_outs[1:], strict=True))
        return out

    return fn


def _check_run(ckpt: Path, cfg: DistillConfig, origin: str, n: int, resume: bool) -> None:
    """A checkpoint is continued only when asked, and only by the same settings."""
    marker = ckpt / RUN_FILE
    run = {"config": cfg.to_dict(), "student": origin, "samples": n}
    if (ckpt / "last.ckpt").exists():
        if not resume:
            raise InputError(f"{ckpt} holds the checkpoint of an earlier run; resume it (--resume) or delete it")
        try:
            before = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            before = None
        if before != json.loads(json.dumps(run)):
            raise InputError(f"the checkpoint in {ckpt} is from other settings (config, student or data); "
                             "delete it to start over")
        return
    if _rank() == 0:
        from ..core.fileio import write_text_atomic

        ckpt.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, json.dumps(run))


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _leave_process_group() -> int:
    """Wait for every rank, then close the process group the trainer opened; returns the world size."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return 1
    world = dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
    return world


from ..core.verbs import make_callable  # noqa: E402

make_callable(__name__, distill)
