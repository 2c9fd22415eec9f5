"""Linear (uniform) quantization math, written once and shared by every backend.

The seeds write ``Q(x) = round((x - min) / scale) * scale + min``. Done right that is the
affine scheme ``q = clamp(round(x / scale) + zp, qmin, qmax)``, ``x' = (q - zp) * scale``
with the range widened to include 0 so that 0.0 is exactly representable (zero padding,
ReLU outputs and pruned weights must stay exactly zero), an integer zero-point, clamping
to the integer grid and round-half-to-even (``torch.round``, the same rule as ONNX
``QuantizeLinear``). Symmetric quantization fixes the zero-point at the grid's middle.

Shapes: for ``PerTensor`` the parameters are 0-d; for ``PerChannel(axis)`` they keep
``x``'s rank with 1 everywhere but ``axis``; for ``PerGroup(size, axis)`` they have
``x``'s shape with ``axis`` divided by ``size`` (``(out, in // size)`` for a linear weight).
:func:`expand_params` broadcasts group parameters back to ``x``'s shape.

Why hand-written: torch's ``fake_quantize_per_*_affine`` and ONNX Runtime's helpers each
cover a subset (no per-group, no 2-bit, backend-specific), and part B needs the same
numbers for the ONNX side, so the arithmetic lives here in plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .granularity import PerChannel, PerGroup, PerTensor

GranularityT = PerTensor | PerChannel | PerGroup

__all__ = [
    "QTensor", "check_bits", "dequantize", "expand_params", "fake_quantize", "fake_quantize_with_qparams",
    "minmax", "qparams_from_range", "qrange", "quantize", "quantize_tensor",
]


def check_bits(bits: Any, name: str = "tensor") -> int:
    """Return ``bits`` as int or raise :class:`InputError` unless it is 2..8."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise InputError(f"{name}: bits must be an integer from 2 to 8, got {bits!r}")
    return int(bits)


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer grid: signed ``[-2^(b-1), 2^(b-1)-1]`` (narrow: ``[-(2^(b-1)-1), ...]``), unsigned ``[0, 2^b-1]``."""
    bits = check_bits(bits)
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, 2**bits - 1 - (1 if narrow else 0)


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if not t.is_floating_point():
        t = t.float()
    if t.numel() == 0:
        raise InputError(f"{name}: cannot quantize an empty tensor")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: tensor contains NaN or infinite values")
    return t


def _norm_axis(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= axis < ndim:
        raise InputError(f"{name}: axis {axis} is out of range for a tensor with {ndim} dimension(s)")
    return axis % ndim


def _check_group(shape: torch.Size | tuple[int, ...], g: PerGroup, name: str) -> int:
    axis = _norm_axis(g.axis, len(shape), name)
    dim = shape[axis]
    if dim % g.size != 0:
        divisors = [d for d in (8, 16, 32, 64, 128, 256) if dim % d == 0]
        raise InputError(f"{name}: group size {g.size} does not divide dimension {axis} of size {dim}"
                         f" (sizes that do: {divisors or [dim]})")
    return axis


def minmax(x: Any, granularity: GranularityT = PerTensor(), *, name: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` reduced to the parameter shape of ``granularity`` (see module doc)."""
    t = _as_tensor(x, name)
    if isinstance(granularity, PerTensor):
        return t.min(), t.max()
    if isinstance(granularity, PerChannel):
        axis = _norm_axis(granularity.axis, t.ndim, name)
        dims = [d for d in range(t.ndim) if d != axis]
        if not dims:
            return t.clone(), t.clone()
        return t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    if isinstance(granularity, PerGroup):
        axis = _check_group(t.shape, granularity, name)
        moved = t.movedim(axis, -1)
        grouped = moved.reshape(*moved.shape[:-1], moved.shape[-1] // granularity.size, granularity.size)
        lo, hi = grouped.amin(-1), grouped.amax(-1)
        return lo.movedim(-1, axis), hi.movedim(-1, axis)
    raise InputError(f"{name}: unknown granularity {granularity!r}")


def expand_params(p: torch.Tensor, shape: torch.Size | tuple[int, ...], granularity: GranularityT) -> torch.Tensor:
    """Broadcastable view of a parameter tensor against a tensor of ``shape``."""
    if isinstance(granularity, PerGroup):
        axis = _check_group(shape, granularity, "tensor")
        return p.repeat_interleave(granularity.size, dim=axis)
    return p


def qparams_from_range(min_val: Any, max_val: Any, *, bits: int, symmetric: bool, signed: bool | None = None,
                       narrow: bool = False, name: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero-point (int32) for an observed range, elementwise over its shape.

    The range is first widened to include 0. Affine: ``scale = (max - min) / (qmax - qmin)``,
    ``zp = clamp(round(qmin - min / scale))`` so that 0.0 maps to the integer ``zp`` exactly.
    Symmetric: ``zp`` is the grid's middle (0 when signed, ``2^(b-1)`` unsigned) and
    ``scale = max|x| / ((qmax - qmin) / 2)``, so the grid covers ``[-max|x|, max|x|]`` with the
    error of every value in it at most ``scale / 2``. A zero range gets scale 1.
    ``signed`` defaults to True for symmetric and False for affine.
    """
    bits = check_bits(bits, name)
    if signed is None:
        signed = symmetric
    qmin, qmax = qrange(bits, signed, narrow)
    lo = torch.as_tensor(min_val, dtype=torch.float64)
    hi = torch.as_tensor(max_val, dtype=torch.float64)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputError(f"{name}: observed range contains NaN or infinite values")
    if bool((lo > hi).any()):
        raise InputError(f"{name}: observed minimum is above the maximum")
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    tiny = float(torch.finfo(torch.float32).tiny)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = amax / ((qmax - qmin) / 2.0)
        zp = torch.full_like(scale, float((qmin + qmax + 1) // 2))
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
    else:
        span = hi - lo
        scale = torch.where(span > 0, span / (qmax - qmin), torch.ones_like(span))
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    scale = scale.to(torch.float32).clamp_min(tiny)
    return scale, zp.to(torch.int32)


def quantize(x: Any, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zp)`` as int8 (signed) or uint8 (unsigned).

    ``scale`` / ``zero_point`` must broadcast against ``x`` (use :func:`expand_params` for groups).
    """
    qmin, qmax = qrange(bits, signed)
    t = _as_tensor(x, "tensor").to(torch.float32)
    q = torch.clamp(torch.round(t / scale) + zero_point.to(torch.float32), qmin, qmax)
    return q.to(torch.int8 if signed else torch.uint8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``(q - zp) * scale`` in float32."""
    return (q.to(torch.int32) - zero_point.to(torch.int32)).to(torch.float32) * scale


def fake_quantize_with_qparams(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                               qmax: int) -> torch.Tensor:
    """Quantize-dequantize with given parameters, in x's float dtype (no gradient trick)."""
    zp = zero_point.to(x.dtype)
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


def fake_quantize(x: Any, bits: int, granularity: GranularityT = PerTensor(), symmetric: bool = True,
                  signed: bool | None = None, *, narrow: bool = False, name: str = "tensor") -> torch.Tensor:
    """``x`` quantized with its own min/max and dequantized again (float32)."""
    return quantize_tensor(x, bits, granularity, symmetric, signed, narrow=narrow, name=name).dequantize()


@dataclass(frozen=True)
class QTensor:
    """Integer codes plus the parameters to decode them; ``q`` has the original shape."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    granularity: GranularityT
    signed: bool

    def dequantize(self) -> torch.Tensor:
        shape = self.q.shape
        return dequantize(self.q, expand_params(self.scale, shape, self.granularity),
                          expand_params(self.zero_point, shape, self.granularity))


def quantize_tensor(x: Any, bits: int, granularity: GranularityT = PerTensor(), symmetric: bool = True,
                    signed: bool | None = None, *, narrow: bool = False, name: str = "tensor") -> QTensor:
    """Quantize ``x`` with parameters from its own range at the given granularity."""
    bits = check_bits(bits, name)
    if signed is None:
        signed = symmetric
    t = _as_tensor(x, name).to(torch.float32)
    lo, hi = minmax(t, granularity, name=name)
    scale, zp = qparams_from_range(lo, hi, bits=bits, symmetric=symmetric, signed=signed, narrow=narrow, name=name)
    q = quantize(t, expand_params(scale, t.shape, granularity), expand_params(zp, t.shape, granularity), bits, signed)
    return QTensor(q, scale, zp, bits, granularity, signed)
