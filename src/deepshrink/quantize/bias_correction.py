"""Bias correction: remove the mean output shift that weight quantization adds to each layer.

Rounding a weight ``W`` to ``Ŵ`` changes a layer's output by ``(Ŵ − W)·x``. Its noise part
averages out downstream, but its mean ``(Ŵ − W)·E[x]`` does not: it is a constant offset
per output channel, and at 2–4 bits it is large enough to shift every later activation
(Nagel et al., "Data-Free Quantization", 2019; Banner et al., 2019). Adding
``−(Ŵ − W)·E[x]`` to the bias cancels it exactly for the calibration distribution.

The correction here is *empirical*: for each quantized layer the calibration batches are run
through the quantized model once; a forward hook sees the layer's real input ``x`` (with
the quantized layers before it, and its own input quantizer applied) and accumulates, per
output channel, the mean of ``f(x, Ŵ) − f(x, W)``. That covers convolution padding and
grouped convolutions without special cases. A layer without a bias gets one.

Works on any model prepared by :func:`deepshrink.quantize.qat.prepare_qat` (fake-quant
``Linear``/``Conv2d``), i.e. the PTQ and QAT paths, and on plain modules through
:func:`correct_bias_pairs` given the float and quantized weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError

__all__ = ["correct_bias", "correct_bias_pairs", "output_shift"]


def _apply(mod: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return F.linear(x, weight)
    if isinstance(mod, nn.Conv2d):
        return mod._conv_forward(x, weight, None)
    raise InputError(f"bias correction supports Linear and Conv2d layers, not {type(mod).__name__}")


def _channel_mean(d: torch.Tensor, mod: nn.Module) -> tuple[torch.Tensor, int]:
    """Sum over every axis but the output-channel one, and the count of summed positions."""
    if isinstance(mod, nn.Conv2d):
        d = d.transpose(0, 1).reshape(d.shape[1], -1)
    else:
        d = d.reshape(-1, d.shape[-1]).transpose(0, 1)
    return d.sum(1, dtype=torch.float64), d.shape[1]


@torch.no_grad()
def output_shift(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any],
                 weights: Callable[[str, nn.Module], tuple[torch.Tensor, torch.Tensor]],
                 prepare_input: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 run: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, torch.Tensor]:
    """Mean of ``f(x, Ŵ) − f(x, W)`` per output channel of each layer over ``batches``.

    ``weights(name, module) -> (W, Ŵ)``; ``prepare_input`` maps a hooked input to what the
    layer multiplies (its input quantizer); ``run(model, batch)`` calls the model.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if prepare_input is not None:
                x = prepare_input(mod, x)
            w, wq = weights(name, mod)
            s, n = _channel_mean(_apply(mod, x, wq) - _apply(mod, x, w), mod)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + n
        return hook

    for name, mod in layers.items():
        hooks.append(mod.register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            (run or _default_run)(model, batch)
            seen += 1
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"bias correction: the data does not fit the model's inputs: {str(exc).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise InputError("bias correction needs calibration data, got an empty dataset")
    return {name: (sums[name] / counts[name]).to(torch.float32) for name in sums}


def _default_run(model: nn.Module, batch: Any) -> Any:
    from .qat import _call

    return _call(model, batch)


def _subtract(mod: nn.Module, shift: torch.Tensor) -> None:
    if mod.bias is None:
        mod.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=mod.weight.dtype, device=mod.weight.device))
    with torch.no_grad():
        mod.bias.sub_(shift.to(mod.bias.dtype))


@torch.no_grad()
def correct_bias(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Bias-correct every fake-quant layer of a prepared (and calibrated) model in place.

    Returns {layer: mean |shift| removed}, for the report.
    """
    from .qat import quant_layers

    layers = quant_layers(model)
    if not layers:
        raise InputError("bias correction: the model has no fake-quant layers; call prepare_qat first")

    def weights(_: str, m: Any) -> tuple[torch.Tensor, torch.Tensor]:
        enabled = m.weight_fq.enabled
        m.weight_fq.enabled = True
        try:
            return m.weight, m.weight_fq(m.weight)
        finally:
            m.weight_fq.enabled = enabled

    def prepare_input(m: Any, x: torch.Tensor) -> torch.Tensor:
        return m.act_fq(x) if m.act_fq is not None else x

    shifts = output_shift(model, layers, list(batches), weights, prepare_input)
    for name, s in shifts.items():
        _subtract(layers[name], s)
    return {name: float(s.abs().mean()) for name, s in shifts.items()}


@torch.no_grad()
def correct_bias_pairs(model: nn.Module, quantized: Mapping[str, torch.Tensor], batches: Iterable[Any],
                       float_weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Bias-correct plain ``Linear``/``Conv2d`` layers that already hold their quantized weights.

    ``quantized[name]`` is the quantized weight now in the layer, ``float_weights[name]`` the
    original; the model is run with the quantized weights (the deployed function).
    """
    mods = dict(model.named_modules())
    missing = [n for n in quantized if n not in mods]
    if missing:
        raise InputError(f"bias correction: no layer named {missing[0]!r} in the model")
    layers = {n: mods[n] for n in quantized}
    shifts = output_shift(model, layers, list(batches), lambda n, _m: (float_weights[n], quantized[n]))
    for name, s in shifts.items():
        _subtract(layers[name], s)
    return {name: float(s.abs().mean()) for name, s in shifts.items()}
