"""k-means codebooks and power-of-two quantization against brute-force float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepshrink.errors import InputError
from deepshrink.quantize.granularity import PerChannel, PerTensor
from deepshrink.quantize.linear import fake_quantize
from deepshrink.quantize.nonlinear import codebook_gradient, kmeans_quantize, pow2_quantize


def _w(seed: int = 0, shape: tuple[int, ...] = (40, 64)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_kmeans_is_a_fixed_point_of_lloyd(bits: int, axis: int | None) -> None:
    w = _w(bits)
    cb = kmeans_quantize(w, bits, axis=axis, iters=1000)  # run Lloyd to convergence
    assert cb.indices.dtype == torch.uint8 and cb.indices.shape == w.shape
    k = 2**bits
    assert cb.codebook.shape == ((k,) if axis is None else (w.shape[axis], k))
    assert int(cb.indices.max()) < k
    w64 = w.double().numpy()
    table = cb.codebook.double().numpy().reshape(-1, k)
    idx = cb.indices.numpy()
    rows = [w64.ravel()] if axis is None else list(np.moveaxis(w64, axis, 0).reshape(w.shape[axis], -1))
    irows = [idx.ravel()] if axis is None else list(np.moveaxis(idx, axis, 0).reshape(w.shape[axis], -1))
    for t, r, ir in zip(table, rows, irows, strict=True):
        # every value sits at its nearest centroid (brute force over the table)
        nearest = np.abs(r[:, None] - t[None]).min(1)
        assert np.allclose(np.abs(r - t[ir]), nearest, atol=1e-7)
        # every used centroid is the mean of its members (Lloyd converged)
        for j in np.unique(ir):
            assert abs(r[ir == j].mean() - t[j]) < 1e-5


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_uniform_grid(bits: int) -> None:
    w = _w(7, (64, 128))
    for axis, gran in ((None, PerTensor()), (0, PerChannel(0))):
        km = (kmeans_quantize(w, bits, axis=axis).dequantize() - w).pow(2).mean()
        lin = (fake_quantize(w, bits, gran, symmetric=False) - w).pow(2).mean()
        assert km < 0.8 * lin  # gaussian weights: 4 bits per-tensor 1.2e-4 vs 2.6e-4 seen


def test_kmeans_inits_and_conv_weight() -> None:
    w = _w(3, (16, 8, 3, 3))
    errs = {}
    for init in ("linear", "kmeans++", "quantile"):
        cb = kmeans_quantize(w, 3, axis=0, init=init, seed=1)
        assert cb.dequantize().shape == w.shape
        errs[init] = float((cb.dequantize() - w).pow(2).mean())
    assert max(errs.values()) < 2.0 * min(errs.values())  # all converge to comparable optima
    assert kmeans_quantize(w, 3, init="kmeans++", seed=5).indices.equal(
        kmeans_quantize(w, 3, init="kmeans++", seed=5).indices)  # seeded


def test_codebook_gradient_sums_per_centroid() -> None:
    w = _w(4, (6, 10))
    cb = kmeans_quantize(w, 2, axis=0)
    grad = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    g = codebook_gradient(cb, grad)
    assert g.shape == (6, 4)
    for c in range(6):
        for j in range(4):
            assert torch.isclose(g[c, j], grad[c][cb.indices[c] == j].sum(), atol=1e-6)
    gt = codebook_gradient(kmeans_quantize(w, 2), grad)
    assert torch.isclose(gt.sum(), grad.sum(), atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_pow2_matches_bruteforce_nearest(bits: int, axis: int | None) -> None:
    w = _w(bits, (12, 50))
    w[0, :5] = 0.0
    cb = pow2_quantize(w, bits, axis=axis)
    d = cb.dequantize().double().numpy()
    w64 = w.double().numpy()
    n_exp = 2 ** (bits - 1) - 1
    rows = [w64] if axis is None else [w64[i:i + 1] for i in range(12)]
    outs = [d] if axis is None else [d[i:i + 1] for i in range(12)]
    for r, o in zip(rows, outs, strict=True):
        amax = np.abs(r).max()
        e_max = np.floor(np.log2(amax)) + (1 if amax >= 1.5 * 2.0 ** np.floor(np.log2(amax)) else 0)
        mags = 2.0 ** (e_max - np.arange(n_exp))
        values = np.concatenate([[0.0], mags, -mags])
        nearest_err = np.abs(r[..., None] - values).min(-1)
        assert np.allclose(np.abs(r - o), nearest_err, atol=1e-9)
        nz = o[o != 0]
        assert np.allclose(np.log2(np.abs(nz)), np.round(np.log2(np.abs(nz))))  # powers of two only
    assert (d[0, :5] == 0).all()  # zero exact
    assert int(cb.indices.max()) < 2**bits


def test_pow2_relative_error_in_range() -> None:
    x = torch.exp2(torch.linspace(-6, 0, 1000, dtype=torch.float64)).float()  # magnitudes 1/64..1
    x = torch.cat([x, -x])
    cb = pow2_quantize(x, 4)  # 7 magnitudes: 1 .. 1/64
    rel = ((cb.dequantize() - x).abs() / x.abs()).max()
    assert rel <= 1 / 3 + 1e-6  # 0.3333 seen (at 1.5 * 2^k)


def test_pow2_two_bits_is_ternary() -> None:
    w = _w(1)
    vals = torch.unique(pow2_quantize(w, 2).dequantize())
    assert len(vals) == 3 and float(vals[1]) == 0.0 and float(vals[0]) == -float(vals[2])


def test_bad_input() -> None:
    with pytest.raises(InputError, match="bits must be an integer from 2 to 8"):
        kmeans_quantize(_w(), 9)
    with pytest.raises(InputError, match="bits must be an integer from 2 to 8"):
        pow2_quantize(_w(), 1)
    with pytest.raises(InputError, match="NaN"):
        kmeans_quantize(torch.tensor([1.0, float("nan")]), 4, name="fc1.weight")
    with pytest.raises(InputError, match="axis 2 is out of range"):
        pow2_quantize(_w(), 4, axis=2)
    with pytest.raises(InputError, match="unknown k-means init"):
        kmeans_quantize(_w(), 4, init="random")
    with pytest.raises(InputError, match="empty"):
        kmeans_quantize(torch.ones(0), 4)
