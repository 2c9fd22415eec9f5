"""Calibration observers: watch activations (or weights) batch by batch, then propose a range.

Common interface::

    obs = PercentileObserver(p=99.99, granularity=PerChannel(axis=1))
    for batch in data: obs.observe(x)
    lo, hi = obs.range()                      # per-tensor: 0-d; per-channel: shape (C,)
    scale, zp = obs.qparams(bits=8, symmetric=False)

Per-channel observers reduce every axis but ``axis`` and return 1-D ``(C,)`` ranges.
``MSEObserver`` and ``EntropyObserver`` pick a clipping range for a given bit-width, so
``range()`` uses the ``bits`` / ``symmetric`` given at construction unless
``qparams`` is asked for others.

Why hand-written: ``torch.ao`` observers are tied to torch.ao's quantization flow and
ONNX Runtime's calibrators to ONNX graphs; part B needs the same statistics for both
backends. The entropy observer follows the published TensorRT idea (histogram of |x|,
choose the threshold minimising KL(P||Q)); the code is our own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .granularity import PerChannel, PerTensor
from .linear import check_bits, fake_quantize_with_qparams, qparams_from_range, qrange

__all__ = ["EntropyObserver", "MSEObserver", "MinMaxObserver", "MovingAverageMinMaxObserver", "Observer",
           "PercentileObserver", "make_observer"]


class Observer:
    """Base: granularity handling, ``observe`` → ``range`` → ``qparams``."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, bits: int = 8, symmetric: bool = False,
                 name: str = "activation") -> None:
        if not isinstance(granularity, (PerTensor, PerChannel)):
            raise InputError(f"{name}: observers support PerTensor or PerChannel, got {granularity!r}")
        self.granularity = granularity
        self.bits = check_bits(bits, name)
        self.symmetric = symmetric
        self.name = name
        self.count_ = 0
        self.channels_: int | None = None

    # -- helpers ---------------------------------------------------------------------
    def _rows(self, x: Any) -> torch.Tensor:
        """``x`` as (C, N) float32 (C = 1 per-tensor), checked."""
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        t = t.to(torch.float32)
        if t.numel() == 0:
            raise InputError(f"{self.name}: observed an empty tensor")
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{self.name}: observed NaN or infinite values")
        if isinstance(self.granularity, PerTensor):
            return t.reshape(1, -1)
        axis = self.granularity.axis
        if not -t.ndim <= axis < t.ndim:
            raise InputError(f"{self.name}: channel axis {axis} out of range for shape {tuple(t.shape)}")
        rows = t.movedim(axis, 0).reshape(t.shape[axis], -1)
        if self.channels_ is not None and rows.shape[0] != self.channels_:
            raise InputError(f"{self.name}: channel count changed from {self.channels_} to {rows.shape[0]}")
        self.channels_ = rows.shape[0]
        return rows

    def _out(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(()) if isinstance(self.granularity, PerTensor) else v

    def _require(self) -> None:
        if self.count_ == 0:
            raise InputError(f"{self.name}: the observer saw no data; calibration data is empty")

    # -- interface ---------------------------------------------------------------------
    def observe(self, x: Any) -> None:
        rows = self._rows(x)
        self._update(rows)
        self.count_ += 1

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._require()
        lo, hi = self._range(self.bits, self.symmetric)
        return self._out(lo), self._out(hi)

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def qparams(self, bits: int | None = None, symmetric: bool | None = None,
                signed: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._require()
        bits = self.bits if bits is None else check_bits(bits, self.name)
        symmetric = self.symmetric if symmetric is None else symmetric
        lo, hi = self._range(bits, symmetric)
        return qparams_from_range(self._out(lo), self._out(hi), bits=bits, symmetric=symmetric, signed=signed,
                                  name=self.name)

    def _track_extremes(self, rows: torch.Tensor) -> None:
        """Running per-row minimum and maximum (``min_``, ``max_``), shared by the observers that need them."""
        lo, hi = rows.amin(1), rows.amax(1)
        if self.count_ == 0:
            self.min_, self.max_ = lo, hi
        else:
            self.min_, self.max_ = torch.minimum(self.min_, lo), torch.maximum(self.max_, hi)


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything observed."""

    def _update(self, rows: torch.Tensor) -> None:
        self._track_extremes(rows)

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_, self.max_


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min/max: ``m += momentum * (batch - m)``."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, momentum: float = 0.1, **kw: Any) -> None:
        super().__init__(granularity, **kw)
        if not 0.0 < momentum <= 1.0:
            raise InputError(f"{self.name}: momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(1), rows.amax(1)
        if self.count_ == 0:
            self.min_, self.max_ = lo, hi
        else:
            self.min_ = self.min_ + self.momentum * (lo - self.min_)
            self.max_ = self.max_ + self.momentum * (hi - self.max_)

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_, self.max_


class _SampleObserver(Observer):
    """Keeps exact min/max plus a bounded, seeded random sample of values per channel."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, max_samples: int = 1 << 20,
                 seed: int = 0, **kw: Any) -> None:
        super().__init__(granularity, **kw)
        self.max_samples = max_samples
        self._gen = torch.Generator().manual_seed(seed)
        self._chunks: list[torch.Tensor] = []
        self._kept = 0

    def _update(self, rows: torch.Tensor) -> None:
        self._track_extremes(rows)
        per_channel_cap = max(256, self.max_samples // rows.shape[0])
        n = rows.shape[1]
        take = min(n, per_channel_cap // 4 if self._kept else per_channel_cap)
        if take < n:
            idx = torch.randperm(n, generator=self._gen)[:take]
            rows = rows[:, idx]
        self._chunks.append(rows.clone())
        self._kept += rows.shape[1]
        if self._kept > 2 * per_channel_cap:  # thin out uniformly to stay bounded
            allv = torch.cat(self._chunks, 1)
            idx = torch.randperm(allv.shape[1], generator=self._gen)[:per_channel_cap]
            self._chunks, self._kept = [allv[:, idx]], per_channel_cap

    def samples(self) -> torch.Tensor:
        return torch.cat(self._chunks, 1)


class PercentileObserver(_SampleObserver):
    """Range from the ``100 - p`` and ``p`` percentiles (e.g. 99.99) of the observed values."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, p: float = 99.99, **kw: Any) -> None:
        super().__init__(granularity, **kw)
        if not 50.0 < p <= 100.0:
            raise InputError(f"{self.name}: percentile must be in (50, 100], got {p}")
        self.p = p

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples().to(torch.float64)
        q = torch.tensor([1.0 - self.p / 100.0, self.p / 100.0], dtype=torch.float64)
        lo, hi = torch.quantile(s, q, dim=1)
        return lo.to(torch.float32), hi.to(torch.float32)


class MSEObserver(_SampleObserver):
    """Clip the min/max range by the factor (grid search) that minimises quantization MSE."""

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, grid: int = 80,
                 min_ratio: float = 0.2, **kw: Any) -> None:
        super().__init__(granularity, **kw)
        self.grid, self.min_ratio = grid, min_ratio

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()
        lo0, hi0 = torch.clamp(self.min_, max=0.0), torch.clamp(self.max_, min=0.0)
        best_err = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        qmin, qmax = qrange(bits, symmetric)
        for r in torch.linspace(1.0, self.min_ratio, self.grid):
            lo, hi = lo0 * r, hi0 * r
            scale, zp = qparams_from_range(lo, hi, bits=bits, symmetric=symmetric, name=self.name)
            err = (fake_quantize_with_qparams(s, scale[:, None], zp[:, None].float(), qmin, qmax) - s).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


class EntropyObserver(Observer):
    """KL-divergence calibration on a histogram of |x| (the TensorRT idea, our own code).

    Keeps a ``bins``-bin histogram of |x| per channel whose bin width doubles (merging bin
    pairs) whenever a larger value arrives, so memory stays fixed. ``range`` tries
    thresholds ``t`` and keeps the one whose clipped distribution P (outliers folded into
    the last bin) is closest in KL to its requantized version Q with ``2^(bits-1)`` levels
    (``2^bits`` when nothing negative was seen). Symmetric around 0 unless all values are
    non-negative, in which case it returns ``(min, t)``.
    """

    def __init__(self, granularity: PerTensor | PerChannel = PerTensor(), *, bins: int = 2048,
                 candidates: int = 160, **kw: Any) -> None:
        super().__init__(granularity, **kw)
        if bins < 256 or bins & (bins - 1):
            raise InputError(f"{self.name}: bins must be a power of two >= 256, got {bins}")
        self.bins, self.candidates = bins, candidates

    def _update(self, rows: torch.Tensor) -> None:
        c = rows.shape[0]
        a = rows.abs().to(torch.float64)
        amax = a.amax(1)
        if self.count_ == 0:
            self.width_ = torch.where(amax > 0, amax / self.bins, torch.ones_like(amax))
            self.hist_ = torch.zeros(c, self.bins, dtype=torch.float64)
        self._track_extremes(rows)
        # grow bin widths by powers of two until every channel's max fits
        while True:
            need = amax > self.width_ * self.bins
            if not bool(need.any()):
                break
            merged = self.hist_.reshape(c, self.bins // 2, 2).sum(-1)
            merged = torch.cat([merged, torch.zeros_like(merged)], 1)
            self.hist_ = torch.where(need[:, None], merged, self.hist_)
            self.width_ = torch.where(need, self.width_ * 2, self.width_)
        idx = torch.clamp((a / self.width_[:, None]).floor().long(), max=self.bins - 1)
        self.hist_.scatter_add_(1, idx, torch.ones_like(a))

    def _threshold(self, hist: np.ndarray, width: float, levels: int) -> float:
        nz = np.nonzero(hist)[0]
        if len(nz) == 0:
            return 1.0
        last = int(nz[-1]) + 1
        if last <= levels:
            return last * width
        step = max(1, (last - levels) // self.candidates)
        best_kl, best_i = float("inf"), last
        for i in list(range(levels, last, step)) + [last]:
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()
            level = (np.arange(i) * levels) // i  # which of the `levels` quantized bins each bin joins
            sums = np.bincount(level, weights=hist[:i], minlength=levels)
            nonzero = np.bincount(level, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
            q = np.where(hist[:i] > 0, sums[level] / np.maximum(nonzero[level], 1.0), 0.0)
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            p, q = p / ps, q / qs
            m = p > 0
            kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return best_i * width

    def _range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.hist_.numpy()
        lows, highs = [], []
        for ch in range(hist.shape[0]):
            nonneg = bool(self.min_[ch] >= 0) and not symmetric
            levels = 2 ** bits if nonneg else 2 ** (bits - 1)
            t = self._threshold(hist[ch], float(self.width_[ch]), levels)
            t = min(t, float(max(-self.min_[ch], self.max_[ch])))
            lows.append(float(self.min_[ch]) if nonneg else -t)
            highs.append(t)
        return torch.tensor(lows, dtype=torch.float32), torch.tensor(highs, dtype=torch.float32)


_OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "percentile": PercentileObserver,
    "mse": MSEObserver, "entropy": EntropyObserver,
}


def make_observer(kind: str, granularity: PerTensor | PerChannel = PerTensor(), **kw: Any) -> Observer:
    """Build an observer by name: minmax, moving_average, percentile, mse, entropy."""
    cls = _OBSERVERS.get(kind)
    if cls is None:
        raise InputError(f"unknown observer {kind!r}; use one of {', '.join(_OBSERVERS)}")
    return cls(granularity, **kw)
