"""Linear quantization math against a float64 numpy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from deepshrink.errors import InputError
from deepshrink.quantize.granularity import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    granularity_from_dict,
)
from deepshrink.quantize.linear import (
    dequantize,
    expand_params,
    fake_quantize,
    minmax,
    qparams_from_range,
    qrange,
    quantize,
    quantize_tensor,
)


def _reference(x: np.ndarray, bits: int, symmetric: bool, signed: bool, axes: tuple[int, ...] | None) -> np.ndarray:
    """Float64 fake-quant for per-tensor (axes=None) or reduce over ``axes`` (per-channel)."""
    lo = x.min(axis=axes, keepdims=axes is not None)
    hi = x.max(axis=axes, keepdims=axes is not None)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = np.where(amax > 0, amax / ((qmax - qmin) / 2), 1.0)
        zp = np.full_like(scale, (qmin + qmax + 1) // 2)
    else:
        scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    scale = scale.astype(np.float32).astype(np.float64)
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale, scale


def _assert_same_codes(got: np.ndarray, ref: np.ndarray, x: np.ndarray, scale: np.ndarray | float) -> None:
    """Codes agree except at exact .5 ties (e.g. +-max|x| in symmetric mode), where float32
    and float64 may round to either neighbour; both are then half a step away."""
    step = np.broadcast_to(scale, x.shape)
    differ = np.abs(got - ref) > 1e-3 * step
    frac = np.abs(np.abs(x / step) % 1.0 - 0.5)
    assert (frac[differ] < 1e-4).all()
    assert differ.mean() < 0.01  # only the extreme values sit on ties


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_matches_float64_reference_and_error_bound(bits: int, symmetric: bool) -> None:
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((37, 23)) * 3 + 0.5).astype(np.float32)
    signed = symmetric
    ref, scale = _reference(x.astype(np.float64), bits, symmetric, signed, None)
    got = fake_quantize(torch.from_numpy(x), bits, PerTensor(), symmetric).double().numpy()
    _assert_same_codes(got, ref, x.astype(np.float64), scale)
    err = np.abs(got - x.astype(np.float64)).max()
    assert err <= float(scale) / 2 * (1 + 1e-5)  # round-trip error within half a step


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_any_axis(axis: int, symmetric: bool) -> None:
    rng = np.random.default_rng(10 + axis)
    x = rng.standard_normal((5, 6, 7)) * rng.uniform(0.01, 10, size=(5, 1, 1))
    axes = tuple(d for d in range(3) if d != axis % 3)
    ref, scale = _reference(x, 4, symmetric, symmetric, axes)
    qt = quantize_tensor(torch.from_numpy(x.astype(np.float32)), 4, PerChannel(axis), symmetric)
    expected_shape = [1, 1, 1]
    expected_shape[axis % 3] = x.shape[axis]
    assert list(qt.scale.shape) == expected_shape
    got = qt.dequantize().double().numpy()
    _assert_same_codes(got, ref, x, scale)
    assert (np.abs(got - x) <= scale / 2 * (1 + 1e-4) + 1e-7).all()


@pytest.mark.parametrize("size", [8, 16, 32])
def test_per_group_shapes_and_bound(size: int) -> None:
    g = torch.Generator().manual_seed(size)
    w = torch.randn(12, 64, generator=g)
    qt = quantize_tensor(w, 4, PerGroup(size), symmetric=False)
    assert qt.scale.shape == (12, 64 // size) and qt.q.dtype == torch.uint8 and int(qt.q.max()) <= 15
    step = expand_params(qt.scale, w.shape, PerGroup(size))
    assert ((qt.dequantize() - w).abs() <= step / 2 * (1 + 1e-5)).all()
    # each group alone quantizes like a per-tensor tensor
    ref = fake_quantize(w[3, size:2 * size], 4, PerTensor(), symmetric=False)
    assert torch.allclose(qt.dequantize()[3, size:2 * size], ref, atol=1e-6)
    # smaller groups never hurt: error decreases with group size (mean abs)
    err_group = (qt.dequantize() - w).abs().mean()
    err_chan = (fake_quantize(w, 4, PerChannel(0), symmetric=False) - w).abs().mean()
    assert err_group < err_chan  # e.g. 0.056 vs 0.074 seen


def test_group_on_axis_zero_and_conv_weight() -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    qt = quantize_tensor(w, 8, PerGroup(4, axis=0), symmetric=True)
    assert qt.scale.shape == (4, 8, 3, 3)
    assert (qt.dequantize() - w).abs().max() <= qt.scale.max() / 2 * (1 + 1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zero_is_exact(bits: int, symmetric: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.rand(200, generator=g) * 5 + 0.3  # all positive: range is widened to include 0
    x[::7] = 0.0
    got = fake_quantize(x, bits, PerTensor(), symmetric)
    assert (got[::7] == 0.0).all()
    x2 = -torch.rand(50, generator=g) - 1.0
    x2[::5] = 0.0
    assert (fake_quantize(x2, bits, PerTensor(), symmetric)[::5] == 0.0).all()
    # the zero-point is an integer in the grid and dequantizes to exactly 0.0
    scale, zp = qparams_from_range(torch.tensor(-0.37), torch.tensor(2.9), bits=bits, symmetric=symmetric)
    qmin, qmax = qrange(bits, symmetric)
    assert qmin <= int(zp) <= qmax
    q0 = quantize(torch.zeros(1), scale, zp, bits, symmetric)
    assert float(dequantize(q0, scale, zp)) == 0.0


def test_zero_range_and_constant_tensors() -> None:
    z = torch.zeros(4, 4)
    for sym in (True, False):
        qt = quantize_tensor(z, 4, PerChannel(0), sym)
        assert (qt.dequantize() == 0).all() and torch.isfinite(qt.scale).all()
    c = torch.full((10,), 3.25)
    assert torch.allclose(fake_quantize(c, 8, PerTensor(), False), c, atol=3.25 / 255 / 2 + 1e-7)


def test_clamping_and_round_half_even() -> None:
    scale, zp = torch.tensor(1.0), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0])
    q = quantize(x, scale, zp, 4, signed=True)
    assert q.tolist() == [0, 2, 2, 0, -2, 7, -8]
    qu = quantize(x, scale, torch.tensor(3, dtype=torch.int32), 4, signed=False)
    assert qu.tolist() == [3, 5, 5, 3, 1, 15, 0]


def test_grid_sizes() -> None:
    assert qrange(8, True) == (-128, 127) and qrange(8, False) == (0, 255)
    assert qrange(4, True, narrow=True) == (-7, 7) and qrange(2, False) == (0, 3)


def test_minmax_numpy_input_and_shapes() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    lo, hi = minmax(x, PerChannel(1))
    assert lo.shape == (1, 3, 1) and hi.flatten().tolist() == [15.0, 19.0, 23.0]


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bad_bits(bits: object) -> None:
    with pytest.raises(InputError, match="bits must be an integer from 2 to 8"):
        quantize_tensor(torch.ones(3), bits, PerTensor())  # type: ignore[arg-type]


def test_bad_group_names_layer_and_dim() -> None:
    with pytest.raises(InputError, match=r"fc1: group size 48 does not divide dimension 1 of size 64"):
        quantize_tensor(torch.ones(3, 64), 4, PerGroup(48), name="fc1")
    with pytest.raises(InputError, match="group size must be a positive integer"):
        PerGroup(0)


def test_bad_tensors() -> None:
    with pytest.raises(InputError, match="NaN"):
        quantize_tensor(torch.tensor([1.0, float("nan")]), 8, name="w")
    with pytest.raises(InputError, match="empty"):
        quantize_tensor(torch.ones(0), 8)
    with pytest.raises(InputError, match="axis 3 is out of range"):
        quantize_tensor(torch.ones(2, 2), 8, PerChannel(3))
    with pytest.raises(InputError, match="minimum is above"):
        qparams_from_range(torch.tensor(2.0), torch.tensor(1.0), bits=8, symmetric=False)


def test_granularity_json_round_trip() -> None:
    for g in (PerTensor(), PerChannel(1), PerGroup(32, axis=0)):
        assert granularity_from_dict(json.loads(json.dumps(g.to_dict()))) == g

    class Holder(BaseModel):
        g: Granularity = PerChannel()

    for g in (PerTensor(), PerChannel(2), PerGroup(64)):
        h = Holder(g=g)
        back = Holder.model_validate_json(h.model_dump_json())
        assert back.g == g
    assert granularity_from_dict("per_group:32") == PerGroup(32)
    assert granularity_from_dict("per_channel:1") == PerChannel(1)
    with pytest.raises(InputError, match="unknown key"):
        granularity_from_dict({"kind": "per_channel", "axes": 1})
    with pytest.raises(InputError, match="unknown granularity"):
        granularity_from_dict("per_row")
