"""Non-linear quantization: k-means codebooks and power-of-two (log2) values.

Both produce the same representation, :class:`Codebook`: a float32 table of values
(``(K,)`` per tensor or ``(C, K)`` per channel along ``axis``) plus uint8 indices with the
tensor's shape, decoded by a gather. That is what the ONNX side stores (initializer
codebook + uint8 indices + ``Gather``) and what Deep Compression fine-tunes
(:func:`codebook_gradient` sums weight gradients per centroid, as in Han et al.).

k-means is a small batched torch implementation rather than scikit-learn's ``KMeans``:
the data are scalars, so assigning a value to its nearest centroid is a ``searchsorted``
over the sorted centroids' midpoints — exact, O(N log K), no N×K distance matrix — and
all channels of a per-channel codebook run in one batched Lloyd iteration instead of a
Python loop of C separate sklearn fits. Initialisation: ``"linear"`` (evenly spaced
between min and max — the one Han et al. found best for Deep Compression, since it keeps
the rare large weights), ``"kmeans++"`` (seeded), or ``"quantile"``.

Power-of-two: ``bits`` include the sign; the other ``bits - 1`` bits code an exponent,
with code 0 reserved for an exact zero, so the magnitudes are
``2^e_max, 2^(e_max-1), ..., 2^(e_max - 2^(bits-1) + 2)`` and 0, with ``e_max`` chosen
per tensor / channel so that the largest magnitude is representable. Values round to the
nearest representable value (linear distance), so in-range relative error is at most 1/3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .linear import check_bits

__all__ = ["Codebook", "codebook_gradient", "kmeans_quantize", "pow2_quantize", "dequantize_codebook"]


@dataclass
class Codebook:
    """``values[..., indices]`` decoding; per-channel tables are indexed along ``axis``."""

    codebook: torch.Tensor  # float32, (K,) or (C, K)
    indices: torch.Tensor  # uint8, same shape as the original tensor
    axis: int | None = None  # None: one table for the tensor
    bits: int = 8

    def dequantize(self) -> torch.Tensor:
        return dequantize_codebook(self.codebook, self.indices, self.axis)

    @property
    def nbytes(self) -> int:
        """Storage with one byte per index (before any bit packing or entropy coding)."""
        return self.indices.numel() + self.codebook.numel() * 4


def dequantize_codebook(codebook: torch.Tensor, indices: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Look every index up in its table."""
    idx = indices.long()
    if axis is None:
        return codebook[idx]
    moved = idx.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = torch.gather(codebook, 1, flat)
    return out.reshape(moved.shape).movedim(0, axis)


def codebook_gradient(cb: Codebook, weight_grad: torch.Tensor) -> torch.Tensor:
    """Gradient of the loss w.r.t. each centroid: the sum of its weights' gradients."""
    idx = cb.indices.long()
    if cb.axis is None:
        return torch.zeros_like(cb.codebook).scatter_add_(0, idx.flatten(), weight_grad.flatten().to(cb.codebook.dtype))
    gi = idx.movedim(cb.axis, 0).reshape(cb.codebook.shape[0], -1)
    gg = weight_grad.movedim(cb.axis, 0).reshape(cb.codebook.shape[0], -1).to(cb.codebook.dtype)
    return torch.zeros_like(cb.codebook).scatter_add_(1, gi, gg)


def _rows(x: Any, axis: int | None, name: str) -> tuple[torch.Tensor, int | None]:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(torch.float32)
    if t.numel() == 0:
        raise InputError(f"{name}: cannot quantize an empty tensor")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: tensor contains NaN or infinite values")
    if axis is None:
        return t.reshape(1, -1), None
    if not -t.ndim <= axis < t.ndim:
        raise InputError(f"{name}: axis {axis} is out of range for a tensor with {t.ndim} dimension(s)")
    axis %= t.ndim
    return t.movedim(axis, 0).reshape(t.shape[axis], -1), axis


def _assign(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per value; ``centroids`` must be sorted along dim 1."""
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), rows.contiguous())


def kmeans_quantize(x: Any, bits: int, *, axis: int | None = None, init: str = "linear", iters: int = 100,
                    seed: int = 0, name: str = "tensor") -> Codebook:
    """k-means codebook with ``2^bits`` entries per tensor (``axis=None``) or per ``axis`` slice.

    Lloyd iterations until assignments stop changing (at most ``iters``). Empty clusters
    keep their previous centroid. Indices are uint8; the codebook is float32, sorted.
    """
    bits = check_bits(bits, name)
    if init not in ("linear", "kmeans++", "quantile"):
        raise InputError(f"{name}: unknown k-means init {init!r}; use linear, kmeans++ or quantile")
    rows, ax = _rows(x, axis, name)
    shape = x.shape if isinstance(x, torch.Tensor) else np.shape(x)
    r64 = rows.to(torch.float64)
    c, n = r64.shape
    k = 2**bits
    lo, hi = r64.amin(1, keepdim=True), r64.amax(1, keepdim=True)
    if init == "linear":
        cent = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=torch.float64)[None]
    elif init == "quantile":
        cent = torch.quantile(r64, torch.linspace(0, 1, k, dtype=torch.float64), dim=1).T.contiguous()
    else:
        cent = _kmeanspp(r64, k, seed)
    cent, _ = cent.sort(1)
    prev: torch.Tensor | None = None
    for _ in range(iters):
        assign = _assign(r64, cent)
        if prev is not None and torch.equal(assign, prev):
            break
        prev = assign
        sums = torch.zeros(c, k, dtype=torch.float64).scatter_add_(1, assign, r64)
        counts = torch.zeros(c, k, dtype=torch.float64).scatter_add_(1, assign, torch.ones_like(r64))
        cent = torch.where(counts > 0, sums / counts.clamp_min(1), cent)
        cent, _ = cent.sort(1)
    assign = _assign(r64, cent)
    idx = assign.to(torch.uint8)
    out_shape = tuple(shape)
    if ax is None:
        indices = idx.reshape(out_shape)
        table = cent[0].to(torch.float32)
    else:
        moved_shape = (out_shape[ax],) + tuple(s for d, s in enumerate(out_shape) if d != ax)
        indices = idx.reshape(moved_shape).movedim(0, ax)
        table = cent.to(torch.float32)
    return Codebook(table, indices.contiguous(), ax, bits)


def _kmeanspp(rows: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means++ seeding, batched over rows, on a subsample of at most 4096 values per row."""
    g = torch.Generator().manual_seed(seed)
    c, n = rows.shape
    if n > 4096:
        rows = rows[:, torch.randperm(n, generator=g)[:4096]]
        n = 4096
    cent = torch.empty(c, k, dtype=rows.dtype)
    first = torch.randint(0, n, (c,), generator=g)
    cent[:, 0] = rows[torch.arange(c), first]
    d2 = (rows - cent[:, :1]).pow(2)
    for j in range(1, k):
        probs = d2 + 1e-30
        pick = torch.multinomial(probs, 1, generator=g).squeeze(1)
        cent[:, j] = rows[torch.arange(c), pick]
        d2 = torch.minimum(d2, (rows - cent[:, j:j + 1]).pow(2))
    return cent


def pow2_quantize(x: Any, bits: int, *, axis: int | None = None, name: str = "tensor") -> Codebook:
    """Sign + exponent codes with an exact zero, as a :class:`Codebook` of ``2^bits`` entries.

    Index layout: bit ``bits-1`` is the sign, the low bits the exponent code (0 = zero,
    code ``j >= 1`` = magnitude ``2^(e_max - j + 1)``). The table entry at the negative zero
    code is 0.0 too, so decoding is a plain lookup.
    """
    bits = check_bits(bits, name)
    rows, ax = _rows(x, axis, name)
    shape = tuple(x.shape if isinstance(x, torch.Tensor) else np.shape(x))
    r = rows.to(torch.float64)
    c = r.shape[0]
    n_exp = 2 ** (bits - 1) - 1  # non-zero magnitudes
    amax = r.abs().amax(1)
    # largest exponent: the nearest power of two to the largest magnitude (1.5 boundary)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    e_floor = torch.floor(torch.log2(safe))
    e_max = torch.where(safe >= 1.5 * torch.exp2(e_floor), e_floor + 1, e_floor)
    e_max = torch.clamp(e_max, -126 + n_exp, 127)
    codes = torch.arange(1, n_exp + 1, dtype=torch.float64)
    mags = torch.exp2(e_max[:, None] - codes[None] + 1)  # (C, n_exp), descending
    table_pos = torch.cat([torch.zeros(c, 1, dtype=torch.float64), mags], 1)  # index = code
    # nearest magnitude, linear distance: candidates sorted ascending = zero + reversed mags
    asc = torch.cat([torch.zeros(c, 1, dtype=torch.float64), mags.flip(1)], 1)
    pos = _assign(r.abs(), asc)  # 0 = zero, i>0 -> asc[i] = mags[n_exp - i] -> code n_exp - i + 1
    code = torch.where(pos == 0, torch.zeros_like(pos), n_exp - pos + 1)
    sign = (r < 0) & (code > 0)
    idx = (code + sign.long() * 2 ** (bits - 1)).to(torch.uint8)
    table = torch.cat([table_pos, -table_pos], 1).to(torch.float32)  # (C, 2^bits)
    table[:, 2 ** (bits - 1)] = 0.0  # negative zero code decodes to +0.0
    if ax is None:
        return Codebook(table[0], idx.reshape(shape), None, bits)
    moved_shape = (shape[ax],) + tuple(s for d, s in enumerate(shape) if d != ax)
    return Codebook(table, idx.reshape(moved_shape).movedim(0, ax).contiguous(), ax, bits)


def log2_levels(bits: int) -> int:
    """Number of distinct non-zero magnitudes a ``bits``-bit power-of-two code holds."""
    return 2 ** (check_bits(bits) - 1) - 1


