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

from ..backends.torch import call_batch
from ..errors import InputError, first_line

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
                 pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 prepare_input: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Mean of ``f(x, Ŵ) − f(x, W)`` per output channel of each layer over ``batches``.

    ``pairs[name] = (W, Ŵ)``; ``prepare_input`` maps a hooked input to what the layer
    multiplies (its input quantizer).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name: str) -> Callable[..., None]:
        w, wq = pairs[name]

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if prepare_input is not None:
                x = prepare_input(mod, x)
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
            call_batch(model, batch)
            seen += 1
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"bias correction: the data does not fit the model's inputs: {first_line(exc)}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise InputError("bias correction needs calibration data, got an empty dataset")
    return {name: (sums[name] / counts[name]).to(torch.float32) for name in sums}


@torch.no_grad()
def _correct(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any],
             pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
             prepare_input: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Subtract each layer's measured shift from its bias (creating one if needed)."""
    shifts = output_shift(model, layers, list(batches), pairs, prepare_input)
    for name, shift in shifts.items():
        mod = layers[name]
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=mod.weight.dtype, device=mod.weight.device))
        mod.bias.sub_(shift.to(mod.bias.dtype))
    return {name: float(s.abs().mean()) for name, s in shifts.items()}


@torch.no_grad()
def correct_bias(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Bias-correct every fake-quant layer of a prepared (and calibrated) model in place.

    Returns {layer: mean |shift| removed}, for the report.
    """
    # the fake-quant layers of prepare_qat (they carry a weight quantizer); found by that attribute so
    # this module and qat.py do not import each other
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "weight_fq")}
    if not layers:
        raise InputError("bias correction: the model has no fake-quant layers; call prepare_qat first")
    pairs = {}
    for name, m in layers.items():  # the quantized weight, whether or not the quantizer is enabled now
        enabled = m.weight_fq.enabled
        m.weight_fq.enabled = True
        try:
            pairs[name] = (m.weight, m.weight_fq(m.weight))
        finally:
            m.weight_fq.enabled = enabled
    return _correct(model, layers, batches, pairs, lambda m, x: m.act_fq(x) if m.act_fq is not None else x)


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
    return _correct(model, {n: mods[n] for n in quantized}, batches,
                    {n: (float_weights[n], quantized[n]) for n in quantized})
