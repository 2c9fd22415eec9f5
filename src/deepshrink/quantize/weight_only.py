"""Weight-only group-wise int2..int8 quantization of ``nn.Linear`` layers: RTN and GPTQ.

Layout (what ONNX Runtime's ``MatMulNBits`` wants, part B packs the bits): for a weight
``W`` of shape ``(N, K)`` (``nn.Linear``: out × in) and group size ``g``, codes ``q`` are
uint8 ``(N, K)`` in ``[0, 2^bits)``, and ``scales`` / ``zeros`` are ``(N, K // g)``;
``W ≈ (q - zeros) * scales`` per group. Asymmetric (uint codes with a zero-point) by
default — the form GPTQ was published with; ``symmetric=True`` pins ``zeros`` to
``2^(bits-1)``.

RTN rounds each group to its own min/max grid. GPTQ (Frantar et al., 2022) quantizes the
columns of ``W`` one at a time and spreads each column's rounding error over the
not-yet-quantized columns through the inverse Hessian ``H = 2 X Xᵀ`` of the layer inputs
``X``, in blocks of columns with lazy updates, from a Cholesky factor of ``H⁻¹`` with
``damp · mean(diag H)`` added to the diagonal. Group parameters are fixed when the first
column of a group is reached, from the error-updated weights; with ``act_order`` (the default)
columns go in order of decreasing Hessian diagonal and the group grids are fixed up front
("static groups", so groups stay contiguous for ``MatMulNBits``). Calibration inputs come from
forward pre-hooks; layers are processed in model order and each layer's Hessian is
collected with the previous layers already quantized (``sequential=True``), as in the paper.

Why hand-written: the reference GPTQ code (and AutoGPTQ / llm-compressor) targets
HF causal-LM classes and CUDA kernels; we need it on any ``nn.Module`` on CPU, reusing
the grid math of :mod:`.linear`, and emitting the codes/scales/zeros layout above.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backends.torch import call_batch
from ..errors import InputError, first_line
from .granularity import PerGroup
from .linear import check_bits, minmax, qparams_from_range

__all__ = ["WeightOnlyLayer", "gptq_quantize_model", "gptq_quantize_weight", "linear_layers", "rtn_quantize_model",
           "rtn_quantize_weight"]


@dataclass(frozen=True)
class WeightOnlyLayer:
    """One layer's weight-only result: ``W ≈ (q - zeros) * scales`` per group of columns."""

    q: torch.Tensor  # uint8 (N, K)
    scales: torch.Tensor  # float32 (N, K // group_size)
    zeros: torch.Tensor  # uint8 (N, K // group_size)
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        s = self.scales.repeat_interleave(self.group_size, dim=1)
        z = self.zeros.repeat_interleave(self.group_size, dim=1).to(torch.float32)
        return (self.q.to(torch.float32) - z) * s


def linear_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """The model's ``nn.Linear`` layers by name, minus fnmatch ``exclude`` patterns (each must match one)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not layers:
        raise InputError(f"{type(model).__name__} has no nn.Linear layer for weight-only quantization")
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in layers):
            raise InputError(f"exclude pattern {pat!r} matches no Linear layer; layers: {', '.join(layers)}")
    return {n: m for n, m in layers.items() if not any(fnmatch.fnmatchcase(n, p) for p in exclude)}


def _check(weight: torch.Tensor, bits: int, group_size: int, name: str) -> tuple[int, int]:
    bits = check_bits(bits, name)
    if weight.ndim != 2:
        raise InputError(f"{name}: weight-only quantization needs a 2-D weight, got shape {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise InputError(f"{name}: weight contains NaN or infinite values")
    k = weight.shape[1]
    g = k if group_size in (-1, 0) else group_size
    if not isinstance(g, int) or g < 1 or k % g:
        raise InputError(f"{name}: group size {group_size} does not divide the input dimension {k}")
    return bits, g


def _group_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero (as float) for the columns ``w`` (N, g), each row its own grid."""
    lo, hi = w.amin(1), w.amax(1)
    scale, zp = qparams_from_range(lo, hi, bits=bits, symmetric=symmetric, signed=False)
    return scale.to(w.dtype), zp.to(w.dtype)


def rtn_quantize_weight(weight: torch.Tensor, bits: int = 4, group_size: int = 128, *, symmetric: bool = False,
                        name: str = "weight") -> WeightOnlyLayer:
    """Round-to-nearest, each group of ``group_size`` input columns on its own grid."""
    bits, g = _check(weight, bits, group_size, name)
    w = weight.detach().to(torch.float32)
    lo, hi = minmax(w, PerGroup(g, axis=1), name=name)
    scale, zp = qparams_from_range(lo, hi, bits=bits, symmetric=symmetric, signed=False, name=name)
    s = scale.repeat_interleave(g, dim=1)
    z = zp.repeat_interleave(g, dim=1).to(torch.float32)
    q = torch.clamp(torch.round(w / s) + z, 0, 2**bits - 1)
    return WeightOnlyLayer(q.to(torch.uint8), scale, zp.to(torch.uint8), bits, g)


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int = 128, *,
                         damp: float = 0.01, block_size: int = 128, symmetric: bool = False, act_order: bool = True,
                         name: str = "weight", dtype: torch.dtype = torch.float64) -> WeightOnlyLayer:
    """GPTQ for one weight ``(N, K)`` given the input Hessian ``(K, K)`` (see module docstring).

    ``dtype``: the working precision of the weight, the Hessian and its inverse Cholesky factor.
    ``torch.float32`` is what the reference implementation uses (Frantar et al.'s ``gptq.py``); it
    halves the memory (a K = 8192 Hessian is 256 MiB instead of 512) and roughly doubles the speed
    of the factorization and the lazy block updates. ``torch.float64`` (the default) keeps the
    results of earlier releases. Scales and zero points are computed in ``dtype`` and returned as
    float32 / uint8 either way.

    ``act_order`` quantizes the columns with the largest Hessian diagonal (the inputs with the
    most energy) first, so their rounding error can still be compensated by the rest. The
    group grids are then fixed up front from the original contiguous groups ("static groups"),
    which keeps the ``MatMulNBits`` layout: one scale/zero per run of ``group_size`` columns.
    """
    bits, g = _check(weight, bits, group_size, name)
    if not 0 < damp < 1:
        raise InputError(f"{name}: damp must be in (0, 1), got {damp}")
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise InputError(f"{name}: Hessian shape {tuple(hessian.shape)} does not match input dimension {k}")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"{name}: GPTQ works in float32 or float64, not {dtype}")
    # One working copy of each: the permutation makes it (act_order), else a clone; the inputs stay as given.
    src_w, src_h = weight.detach().to(dtype), hessian.detach().to(dtype)
    diag = torch.diag(src_h).clone()
    dead = diag == 0  # inputs that were always zero: their columns are zeroed, their Hessian diagonal set to 1
    diag[dead] = 1.0
    block = max(g, (block_size // g) * g) if g <= block_size else g
    qmax = 2**bits - 1
    codes = torch.zeros(n, k, dtype=torch.uint8)
    scales = torch.zeros(n, k // g, dtype=dtype)
    zeros = torch.zeros(n, k // g, dtype=dtype)
    perm = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(k)
    if act_order:
        for j in range(k // g):  # static groups: grids from the original weights, fixed before any update
            wg = src_w[:, j * g:(j + 1) * g].clone()
            wg[:, dead[j * g:(j + 1) * g]] = 0.0
            scales[:, j], zeros[:, j] = _group_params(wg, bits, symmetric)
        w, h = src_w[:, perm], src_h[perm][:, perm]
    else:
        w, h = src_w.clone(), src_h.clone()
    del src_w, src_h
    dead = dead[perm]
    w[:, dead] = 0.0
    h[dead, dead] = 1.0
    hinv = _inverse_cholesky(h, damp, name)
    del h
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        scale = zp = None
        for i in range(i2 - i1):
            col = int(perm[i1 + i])  # the original column
            if act_order:
                scale, zp = scales[:, col // g], zeros[:, col // g]
            elif col % g == 0:  # a new group: fix its grid from the error-updated weights
                scale, zp = _group_params(w1[:, i:i + g], bits, symmetric)
                scales[:, col // g], zeros[:, col // g] = scale, zp
            assert scale is not None and zp is not None
            wc = w1[:, i]
            q = torch.clamp(torch.round(wc / scale) + zp, 0, qmax)
            codes[:, col] = q.to(torch.uint8)
            dq = (q - zp) * scale
            e = (wc - dq) / hinv1[i, i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)  # rank-1 update in place, no (N, block) temporary
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return WeightOnlyLayer(codes, scales.to(torch.float32), zeros.to(torch.uint8), bits, g)


def _inverse_cholesky(h: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``; λ grows tenfold if H is not positive definite.

    ``h`` is left as it was; at most three (K, K) matrices are alive at once (``h``, the damped copy
    that becomes the factor, the inverse)."""
    mean_diag = float(torch.diag(h).mean())
    lam = damp
    for _ in range(6):
        damped = h.clone()
        damped.diagonal().add_(lam * mean_diag)
        chol, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            del chol
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            del hinv
            if int(info) == 0:
                return upper
        lam *= 10
    raise InputError(f"{name}: the calibration Hessian is not positive definite even with damping; "
                     "use more calibration data")


def _progress(total: int, label: str, show: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from ..core.progress import progress_bar

    bar = progress_bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[layer]}"), TimeElapsedColumn(), show=show)
    return bar


@torch.no_grad()
def rtn_quantize_model(model: nn.Module, bits: int = 4, group_size: int = 128, exclude: Sequence[str] = (), *,
                       symmetric: bool = False, inplace: bool = False,
                       progress: bool = True) -> tuple[nn.Module, dict[str, WeightOnlyLayer]]:
    """Round-to-nearest weight-only quantization of every Linear layer (a copy unless ``inplace``).

    Returns the model with quantize-dequantized weights and the per-layer codes/scales/zeros.
    """
    check_bits(bits, "bits")
    work = model if inplace else copy.deepcopy(model)
    layers = linear_layers(work, exclude)
    for name, lin in layers.items():  # validate every layer before changing any
        _check(lin.weight, bits, group_size, name)
    out: dict[str, WeightOnlyLayer] = {}
    with _progress(len(layers), "RTN", progress) as bar:
        task = bar.add_task("rtn", total=len(layers), layer="")
        for name, lin in layers.items():
            bar.update(task, layer=name)
            res = rtn_quantize_weight(lin.weight, bits, group_size, symmetric=symmetric, name=name)
            lin.weight.copy_(res.dequantize().to(lin.weight.dtype))
            out[name] = res
            bar.advance(task)
    return work, out


def _batches_list(calib_batches: Iterable[Any]) -> list[Any]:
    batches = list(calib_batches)
    if not batches:
        raise InputError("calibration data is empty")
    return batches


def _run(model: nn.Module, batch: Any) -> None:
    try:
        call_batch(model, batch)
    except (RuntimeError, TypeError, IndexError) as exc:
        raise InputError(f"calibration data does not fit the model's inputs: {first_line(exc)}") from None


class _HessianHook:
    """Accumulates ``H = 2/n Σ x xᵀ`` over the rows of a Linear layer's inputs."""

    def __init__(self, k: int) -> None:
        self.h = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        self.h += (2.0 / self.n) * (x.T @ x)


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, calib_batches: Iterable[Any], bits: int = 4, group_size: int = 128,
                        exclude: Sequence[str] = (), damp: float = 0.01, *, block_size: int = 128,
                        symmetric: bool = False, sequential: bool = True, act_order: bool = True,
                        inplace: bool = False, progress: bool = True) -> tuple[nn.Module, dict[str, WeightOnlyLayer]]:
    """GPTQ weight-only quantization of every Linear layer (a copy unless ``inplace``).

    ``calib_batches``: tensors, tuples of positional inputs or dicts of named inputs.
    ``sequential=True`` recollects each layer's Hessian with all earlier layers already
    quantized (one calibration pass per layer); ``False`` collects all Hessians in one pass
    from the float model. Returns the model with quantize-dequantized weights and the
    per-layer codes/scales/zeros.
    """
    check_bits(bits, "bits")
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    layers = linear_layers(work, exclude)
    for name, lin in layers.items():
        _check(lin.weight, bits, group_size, name)
    batches = _batches_list(calib_batches)
    out: dict[str, WeightOnlyLayer] = {}

    def collect(names: list[str]) -> dict[str, _HessianHook]:
        hooks = {n: _HessianHook(layers[n].in_features) for n in names}
        handles = [layers[n].register_forward_pre_hook(hooks[n]) for n in names]
        try:
            for b in batches:
                _run(work, b)
        finally:
            for hd in handles:
                hd.remove()
        for n, hk in hooks.items():
            if hk.n == 0:
                raise InputError(f"layer {n} was never called on the calibration data; exclude it")
        return hooks

    names = list(layers)
    all_hooks = None if sequential else collect(names)
    with _progress(len(names), "GPTQ", progress) as bar:
        task = bar.add_task("gptq", total=len(names), layer="")
        for name in names:
            bar.update(task, layer=name)
            hook = collect([name])[name] if all_hooks is None else all_hooks[name]
            lin = layers[name]
            res = gptq_quantize_weight(lin.weight, hook.h, bits, group_size, damp=damp, block_size=block_size,
                                       symmetric=symmetric, act_order=act_order, name=name)
            lin.weight.copy_(res.dequantize().to(lin.weight.dtype))
            out[name] = res
            bar.advance(task)
    return work, out
