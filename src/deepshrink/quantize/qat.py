"""Fake-quantization in PyTorch: post-training simulation and quantization-aware training.

``prepare_qat`` swaps every ``nn.Linear`` / ``nn.Conv2d`` (minus ``exclude`` patterns)
for :class:`FakeQuantLinear` / :class:`FakeQuantConv2d`, which quantize-dequantize their
weight (per output channel, symmetric, signed) and their input activation (per tensor,
affine, unsigned by default) on every forward pass. BatchNorm is folded into the
preceding convolution first (``torch.fx.experimental.optimization.fuse``) because that is
the weight the deployed integer model multiplies with.

Gradients: the rounding uses the straight-through estimator and the step sizes are
learned LSQ-style (Esser et al., 2020: ``d out / d scale = round(x/s) - x/s`` inside the
grid, the clamp bound outside, with the gradient scaled by ``1/sqrt(n * qmax)``). The
zero-points stay fixed at their calibrated integers.

Flow: ``prepare_qat`` → ``calibrate`` (observers set activation ranges) → optionally
``train_qat`` (the shared ``deepshrink.train.Trainer`` with :class:`QATCallback`) →
``finalize`` (plain modules holding the quantize-dequantized weights, plus the
per-layer scales and zero-points part B writes as ONNX QDQ). ``simulate_ptq`` is
prepare + calibrate without training, for the PTQ-vs-QAT comparison.

Why hand-written: ``torch.ao.quantization`` QAT (eager and FX) only offers 8-bit
observers/fake-quant with fixed-range semantics tied to its own convert step, has no
learned step size, and its eager mode needs QuantStub edits to the user's model; here
the same math module (:mod:`.linear`, :mod:`.observers`) serves PTQ, QAT and the ONNX export.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..backends.torch import call_batch
from ..errors import InputError, first_line
from ..train import Callback, Trainer
from .granularity import PerChannel, PerTensor
from .linear import check_bits, qrange
from .observers import Observer, make_observer

__all__ = ["FakeQuant", "FakeQuantConv2d", "FakeQuantLinear", "LayerQuant", "QATCallback", "calibrate", "finalize",
           "fold_batchnorm", "prepare_qat", "quant_layers", "simulate_ptq", "train_qat"]


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _scale_grad(s: torch.Tensor, g: float) -> torch.Tensor:
    return (s - s * g).detach() + s * g


class FakeQuant(nn.Module):
    """Learned-step fake quantizer; ``axis=None`` per tensor, else one step per ``axis`` index.

    Modes: ``observing`` (pass values through and feed the observer), enabled (quantize),
    disabled (identity). Not initialised = identity.
    """

    def __init__(self, bits: int, *, symmetric: bool, signed: bool | None = None, axis: int | None = None,
                 observer: str = "minmax", learn_scale: bool = True, name: str = "") -> None:
        super().__init__()
        self.bits = check_bits(bits, name or "quantizer")
        self.symmetric = symmetric
        self.signed = symmetric if signed is None else signed
        self.axis = axis
        self.observer_kind = observer
        self.name = name
        self.qmin, self.qmax = qrange(self.bits, self.signed)
        self.scale = nn.Parameter(torch.ones(()), requires_grad=learn_scale)
        self.register_buffer("zero_point", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = True
        self.observing = False
        self._observer: Observer | None = None

    def _granularity(self) -> PerTensor | PerChannel:
        return PerTensor() if self.axis is None else PerChannel(self.axis)

    def start_observing(self) -> None:
        self._observer = make_observer(self.observer_kind, self._granularity(), bits=self.bits,
                                       symmetric=self.symmetric, name=self.name or "activation")
        self.observing = True

    def stop_observing(self) -> None:
        if self._observer is None:
            raise InputError(f"{self.name}: stop_observing called before start_observing")
        scale, zp = self._observer.qparams(self.bits, self.symmetric, self.signed)
        self.set_qparams(scale, zp)
        self.observing = False
        self._observer = None

    def init_from(self, x: torch.Tensor) -> None:
        """Set the step from one tensor (weights) with this quantizer's observer kind."""
        obs = make_observer(self.observer_kind, self._granularity(), bits=self.bits, symmetric=self.symmetric,
                            name=self.name or "weight")
        obs.observe(x.detach())
        scale, zp = obs.qparams(self.bits, self.symmetric, self.signed)
        self.set_qparams(scale, zp)

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        learn = self.scale.requires_grad
        self.scale = nn.Parameter(scale.detach().to(torch.float32).clone(), requires_grad=learn)
        self.zero_point = zero_point.detach().to(torch.float32).clone()
        self.initialized.fill_(True)

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None or p.ndim == 0:
            return p
        shape = [1] * x.ndim
        shape[self.axis] = -1
        return p.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            assert self._observer is not None
            self._observer.observe(x)
            return x
        if not self.enabled or not bool(self.initialized):
            return x
        per_step = x.numel() / max(1, self.scale.numel())
        s = _scale_grad(self.scale.abs().clamp_min(1e-12), 1.0 / math.sqrt(per_step * max(1, self.qmax)))
        s, zp = self._view(s, x), self._view(self.zero_point, x)
        v = torch.clamp(_round_ste(x / s + zp), self.qmin, self.qmax)
        return (v - zp) * s

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> torch.Tensor:
        s, zp = self._view(self.scale.abs(), x), self._view(self.zero_point, x)
        q = torch.clamp(torch.round(x / s + zp), self.qmin, self.qmax)
        return q.to(torch.int8 if self.signed else torch.uint8)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"bits={self.bits}, {'symmetric' if self.symmetric else 'affine'}, {kind}, observer={self.observer_kind}"


class _QuantMixin:
    weight_fq: FakeQuant
    act_fq: FakeQuant | None


class FakeQuantLinear(nn.Linear, _QuantMixin):
    """``nn.Linear`` whose weight and input go through fake quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fq is not None:
            x = self.act_fq(x)
        return F.linear(x, self.weight_fq(self.weight), self.bias)


class FakeQuantConv2d(nn.Conv2d, _QuantMixin):
    """``nn.Conv2d`` whose weight and input go through fake quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fq is not None:
            x = self.act_fq(x)
        return self._conv_forward(x, self.weight_fq(self.weight), self.bias)


def _wrap(mod: nn.Module, name: str, weight_bits: int, act_bits: int | None, weight_observer: str,
          act_observer: str, act_symmetric: bool, learn_scales: bool, per_channel: bool = True) -> nn.Module:
    new: nn.Module
    if isinstance(mod, nn.Linear):
        new = FakeQuantLinear.__new__(FakeQuantLinear)
    else:
        new = FakeQuantConv2d.__new__(FakeQuantConv2d)
    new.__dict__.update(mod.__dict__)  # shares parameters, keeps hyper-parameters (stride, padding…)
    new._parameters = dict(mod._parameters)
    new._buffers = dict(mod._buffers)
    new._modules = dict(mod._modules)
    wfq = FakeQuant(weight_bits, symmetric=True, axis=0 if per_channel else None, observer=weight_observer,
                    learn_scale=learn_scales,
                    name=f"{name}.weight")
    wfq.init_from(mod.weight)
    new.weight_fq = wfq
    new.act_fq = None
    if act_bits is not None:
        new.act_fq = FakeQuant(act_bits, symmetric=act_symmetric, observer=act_observer, learn_scale=learn_scales,
                               name=f"{name}.input")
    return new


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv→BatchNorm pair into the convolution (returns a traced copy in eval mode).

    Models without BatchNorm come back unchanged. Models torch.fx cannot trace raise
    :class:`InputError` naming the reason; pass ``fold_bn=False`` to skip folding.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    was_training = model.training
    try:
        folded = fuse(model.eval(), inplace=False)
    except Exception as exc:
        raise InputError(f"cannot fold BatchNorm: torch.fx failed to trace {type(model).__name__} "
                         f"({type(exc).__name__}: {exc}); use fold_bn=False") from None
    model.train(was_training)
    return folded


def _quantizable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) or isinstance(m, (FakeQuantLinear, FakeQuantConv2d))}


def _select(names: Iterable[str], exclude: Sequence[str], what: str = "layer", include: Sequence[str] = ()) -> list[str]:
    """``names`` matched by ``include`` (all when empty) and by no ``exclude`` pattern; a pattern that matches
    nothing is an :class:`InputError`, and so is a selection that leaves nothing."""
    names = list(names)
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise InputError(f"{kind} pattern {pat!r} matches no {what}; {what}s: {', '.join(names) or 'none'}")
    chosen = [n for n in names if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
              and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if names and not chosen:
        raise InputError(f"include/exclude leave no {what} to quantize; {what}s: {', '.join(names)}")
    return chosen


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def prepare_qat(model: nn.Module, *, weight_bits: int = 4, act_bits: int | None = 8, exclude: Sequence[str] = (),
                weight_observer: str = "mse", act_observer: str = "minmax", act_symmetric: bool = False,
                fold_bn: bool = True, learn_scales: bool = True, weight_per_channel: bool = True,
                inplace: bool = False, include: Sequence[str] = ()) -> nn.Module:
    """Return the model (a copy unless ``inplace``) with fake-quant Linear/Conv2d layers.

    ``include`` / ``exclude``: fnmatch patterns on module names (``"fc"``, ``"blocks.*.mlp.fc2"``):
    only layers matched by ``include`` (every layer when empty) and by no ``exclude`` pattern are
    quantized; a pattern that matches no Linear/Conv2d layer is an :class:`InputError`.
    ``weight_per_channel``: one weight scale per output channel (axis 0), else one per tensor. ``act_bits=None``
    quantizes weights only. Activation quantizers start uncalibrated (identity) until
    :func:`calibrate` runs.
    """
    weight_bits = check_bits(weight_bits, "weight_bits")
    if act_bits is not None:
        act_bits = check_bits(act_bits, "act_bits")
    work = model if inplace else copy.deepcopy(model)
    if fold_bn:
        work = fold_batchnorm(work)
    layers = _quantizable(work)
    if not layers:
        raise InputError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    chosen = _select(layers, exclude, include=include)
    for name in chosen:
        mod = layers[name]
        if isinstance(mod, (FakeQuantLinear, FakeQuantConv2d)):
            continue
        _set_submodule(work, name, _wrap(mod, name, weight_bits, act_bits, weight_observer, act_observer,
                                         act_symmetric, learn_scales, weight_per_channel))
    return work


def quant_layers(model: nn.Module) -> dict[str, FakeQuantLinear | FakeQuantConv2d]:
    """The fake-quant layers of a prepared model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (FakeQuantLinear, FakeQuantConv2d))}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Run ``batches`` (tensors, tuples of positional inputs, or dicts of named inputs) through
    the prepared model with every activation quantizer observing, then fix their ranges."""
    quants = [m.act_fq for m in quant_layers(model).values() if m.act_fq is not None]
    if not quant_layers(model):
        raise InputError("calibrate: the model has no fake-quant layers; call prepare_qat first")
    for q in quants:
        q.start_observing()
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            call_batch(model, batch)
            n += 1
    except (RuntimeError, TypeError) as exc:
        for q in quants:
            q.observing = False
        raise InputError(f"calibration data does not fit the model's inputs: {first_line(exc)}") from None
    if n == 0:
        for q in quants:
            q.observing = False
        raise InputError("calibration data is empty")
    for q in quants:
        q.stop_observing()
    model.train(was_training)
    return model


def simulate_ptq(model: nn.Module, calib_batches: Iterable[Any], *, weight_bits: int = 8, act_bits: int | None = 8,
                 observer: str = "minmax", weight_observer: str = "mse", exclude: Sequence[str] = (),
                 fold_bn: bool = True, weight_per_channel: bool = True, bias_correction: bool = False) -> nn.Module:
    """Post-training fake quantization: prepare (a copy), calibrate activations, no training.

    ``bias_correction`` then removes each layer's mean output shift on the same batches.
    """
    prepared = prepare_qat(model, weight_bits=weight_bits, act_bits=act_bits, exclude=exclude,
                           weight_observer=weight_observer, act_observer=observer, fold_bn=fold_bn,
                           weight_per_channel=weight_per_channel)
    batches = list(calib_batches)
    calibrate(prepared, batches)
    if bias_correction:
        from .bias_correction import correct_bias

        correct_bias(prepared, batches)
    return prepared.eval()


class QATCallback(Callback):
    """Trainer hook for QAT: checks the model is prepared and calibrated, and freezes the
    learned steps for the last ``1 - freeze_at`` fraction of training so the weights settle
    on a fixed grid."""

    def __init__(self, freeze_at: float | None = 0.8) -> None:
        self.freeze_at = freeze_at
        self.frozen = False

    def on_train_begin(self, trainer: Trainer) -> None:
        layers = quant_layers(trainer.model)
        if not layers:
            raise InputError("QAT needs a prepared model (prepare_qat) with fake-quant layers")
        for name, m in layers.items():
            if m.act_fq is not None and not bool(m.act_fq.initialized):
                raise InputError(f"layer {name}: activation range not calibrated; run calibrate() before training")

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if self.freeze_at is None or self.frozen or trainer.total_steps == 0:
            return
        if trainer.step >= self.freeze_at * trainer.total_steps:
            for m in quant_layers(trainer.model).values():
                for q in (m.weight_fq, m.act_fq):
                    if q is not None:
                        q.scale.requires_grad_(False)
            self.frozen = True

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen", False))


def train_qat(model: nn.Module, train_data: Any, *, epochs: int = 3, lr: float = 1e-4, batch_size: int = 64,
              seed: int = 0, optimizer: str = "adam", freeze_at: float | None = 0.8, progress: bool = True,
              **trainer_kw: Any) -> nn.Module:
    """Fine-tune a prepared, calibrated model with the shared Trainer (STE + LSQ steps)."""
    Trainer(model, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, optimizer=optimizer,
            callbacks=[QATCallback(freeze_at), *trainer_kw.pop("callbacks", [])], progress=progress,
            **trainer_kw).fit(train_data)
    return model.eval()


@dataclass(frozen=True)
class LayerQuant:
    """What part B needs to write one layer as ONNX QDQ.

    Weight: int codes ``weight_q`` (same shape as the weight), per-output-channel
    ``weight_scale`` (C,) and ``weight_zero_point`` (C,) on axis 0. Input activation:
    per-tensor ``input_scale`` / ``input_zero_point`` (None when not quantized).
    """

    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    weight_bits: int
    weight_signed: bool
    input_scale: torch.Tensor | None
    input_zero_point: torch.Tensor | None
    input_bits: int | None
    input_signed: bool | None


@torch.no_grad()
def finalize(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, dict[str, LayerQuant]]:
    """Replace fake-quant layers with plain ``nn.Linear``/``nn.Conv2d`` holding the
    quantize-dequantized weights; return that model and the per-layer quantization record."""
    work = model if inplace else copy.deepcopy(model)
    record: dict[str, LayerQuant] = {}
    layers = quant_layers(work)
    if not layers:
        raise InputError("finalize: the model has no fake-quant layers")
    for name, m in layers.items():
        wfq = m.weight_fq
        wfq_enabled = wfq.enabled
        wfq.enabled = True
        w_qdq = wfq(m.weight).detach()
        wfq.enabled = wfq_enabled
        plain: nn.Module
        if isinstance(m, FakeQuantLinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        else:
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
        plain.weight.copy_(w_qdq)
        if m.bias is not None:
            plain.bias.copy_(m.bias)
        a = m.act_fq
        act_ok = a is not None and bool(a.initialized) and a.enabled
        record[name] = LayerQuant(
            weight_q=wfq.integer_codes(m.weight), weight_scale=wfq.scale.detach().abs().reshape(-1).clone(),
            weight_zero_point=wfq.zero_point.reshape(-1).to(torch.int32).expand(wfq.scale.numel()).clone(),
            weight_bits=wfq.bits, weight_signed=wfq.signed,
            input_scale=a.scale.detach().abs().clone() if act_ok and a is not None else None,
            input_zero_point=a.zero_point.to(torch.int32).clone() if act_ok and a is not None else None,
            input_bits=a.bits if act_ok and a is not None else None,
            input_signed=a.signed if act_ok and a is not None else None)
        _set_submodule(work, name, plain.train(m.training))
    return work.eval(), record
