"""Fake-quant modules, LSQ/STE gradients, PTQ simulation, QAT through the Trainer, finalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.errors import InputError
from deepshrink.examples import DigitsMLP, digits_data, trained_digits_cnn, trained_digits_mlp
from deepshrink.quantize.qat import (
    FakeQuant,
    FakeQuantConv2d,
    FakeQuantLinear,
    calibrate,
    finalize,
    fold_batchnorm,
    prepare_qat,
    quant_layers,
    simulate_ptq,
    train_qat,
)
from deepshrink.train import accuracy_of

# Thresholds on figures that depend on the trained models, derived by benchmarks/seed_spread.py (8 seeds, see
# tests/README.md): upper bound max(mean + 3 std, worst + margin), lower bound min(mean - 3 std, worst - margin).
W8A8_CHANGE = 0.0056  # |W8A8 PTQ accuracy change|, 8 seeds: 0.0000 every one
W2_QAT_DROP = 0.0173  # W2A8 QAT accuracy drop, 8 seeds: -0.0111-0.0083 (mean -0.0003, std 0.0058)
W2_QAT_PTQ_LOSS_RATIO = 0.247  # test loss above fp32, QAT / PTQ, 8 seeds: -0.266-0.020 (mean -0.071, std 0.106)
W4A8_CNN_DROP = 0.0204  # W4A8 PTQ accuracy drop, 8 seeds: 0.0000-0.0139 (mean 0.0056, std 0.0049)


def test_ste_and_lsq_gradients_match_the_formula() -> None:
    fq = FakeQuant(4, symmetric=True)  # signed grid -8..7
    fq.set_qparams(torch.tensor(0.5), torch.tensor(0))
    x = torch.tensor([0.1, 0.3, -0.74, 1.2, 3.9, -5.0, 9.0], requires_grad=True)
    y = fq(x)
    expected = torch.clamp(torch.round(x.detach() / 0.5), -8, 7) * 0.5
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    inside = (x.detach() / 0.5 >= -8) & (x.detach() / 0.5 <= 7)
    assert torch.equal(x.grad, inside.float())  # straight-through inside the grid, 0 outside
    v = x.detach() / 0.5
    lsq = torch.where(inside, torch.round(v) - v, torch.clamp(v, -8, 7).round())
    g = 1.0 / (len(x) * 7) ** 0.5
    assert torch.isclose(fq.scale.grad, lsq.sum() * g, atol=1e-6)


def test_per_channel_weight_quantizer_lies_on_grid() -> None:
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    fq = FakeQuant(3, symmetric=True, axis=0, observer="minmax")
    fq.init_from(w)
    assert fq.scale.shape == (6,)
    codes = fq(w).detach() / fq.scale.detach()[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.round().min() >= -4 and codes.round().max() <= 3
    assert (codes.round().abs().amax(1) >= 3).all()  # min-max init uses the whole grid in every row


def test_prepare_replaces_layers_and_respects_exclude() -> None:
    torch.manual_seed(0)
    m = DigitsMLP()
    q = prepare_qat(m, weight_bits=4, act_bits=8, exclude=["fc3"])
    assert isinstance(q.fc1, FakeQuantLinear) and isinstance(q.fc2, FakeQuantLinear)
    assert type(q.fc3) is nn.Linear and type(m.fc1) is nn.Linear  # original untouched (a copy)
    assert set(quant_layers(q)) == {"fc1", "fc2"}
    pt = prepare_qat(m, weight_bits=4, weight_per_channel=False)
    assert pt.fc1.weight_fq.scale.shape == () and q.fc1.weight_fq.scale.shape == (300,)
    with pytest.raises(InputError, match="exclude pattern 'fc9' matches no layer"):
        prepare_qat(m, exclude=["fc9"])
    with pytest.raises(InputError, match="weight_bits: bits must be an integer from 2 to 8"):
        prepare_qat(m, weight_bits=1)
    with pytest.raises(InputError, match="act_bits"):
        prepare_qat(m, act_bits=16)


def test_calibration_errors() -> None:
    q = prepare_qat(DigitsMLP(), weight_bits=8)
    with pytest.raises(InputError, match="calibration data is empty"):
        calibrate(q, [])
    with pytest.raises(InputError, match="does not fit the model's inputs"):
        calibrate(q, [torch.zeros(4, 63)])
    d = digits_data().flat()
    with pytest.raises(InputError, match="not calibrated"):
        train_qat(prepare_qat(DigitsMLP()), (d.x_train[:64], d.y_train[:64]), epochs=1, progress=False)


@torch.no_grad()
def _test_loss(net: nn.Module, d) -> float:
    return float(nn.functional.cross_entropy(net(torch.from_numpy(d.x_test)), torch.from_numpy(d.y_test)))


@pytest.mark.trains
def test_ptq_vs_qat_on_digits_mlp(seed, measured) -> None:
    m = trained_digits_mlp(seed)
    d = digits_data().flat()
    calib = [torch.from_numpy(d.x_train[i:i + 128]) for i in range(0, 512, 128)]
    fp32 = accuracy_of(m, d.x_test, d.y_test)
    ptq8 = accuracy_of(simulate_ptq(m, calib, weight_bits=8, act_bits=8), d.x_test, d.y_test)
    # 2-bit weights with a plain min-max grid: PTQ breaks, QAT repairs it
    ptq2_model = simulate_ptq(m, calib, weight_bits=2, weight_observer="minmax")
    q = calibrate(prepare_qat(m, weight_bits=2, act_bits=8, weight_observer="minmax"), calib)
    train_qat(q, (d.x_train, d.y_train), epochs=2, lr=1e-3, progress=False)
    qat2 = accuracy_of(q, d.x_test, d.y_test)
    w8a8 = measured("W8A8 PTQ: |accuracy change|", abs(fp32 - ptq8), "upper")
    qat2_drop = measured("W2A8 QAT: accuracy drop", fp32 - qat2, "upper")
    # PTQ's 2-bit accuracy drop is too uneven across models to bound (8 seeds: 0.003-0.047); the test loss QAT
    # trains down is the steady figure
    ce = {k: _test_loss(net, d) for k, net in (("ptq", ptq2_model), ("qat", q), ("fp32", m))}
    ce_ratio = measured("W2A8: test cross-entropy above fp32, QAT / PTQ", (ce["qat"] - ce["fp32"]) / (ce["ptq"] - ce["fp32"]),
                        "upper", margin=0.05)
    assert w8a8 <= W8A8_CHANGE
    assert qat2_drop <= W2_QAT_DROP and ce_ratio < W2_QAT_PTQ_LOSS_RATIO
    # finalize: plain Linear layers holding grid weights; same function with act quant off
    plain, rec = finalize(q)
    assert all(type(mod) is nn.Linear for mod in (plain.fc1, plain.fc2, plain.fc3))
    r = rec["fc1"]
    assert r.weight_q.shape == (300, 64) and r.weight_scale.shape == (300,) and r.weight_bits == 2
    assert r.input_scale is not None and r.input_bits == 8 and not r.input_signed
    assert torch.allclose(plain.fc1.weight, r.weight_q.float() * r.weight_scale[:, None], atol=1e-6)
    for layer in quant_layers(q).values():
        assert layer.act_fq is not None
        layer.act_fq.enabled = False
    x = torch.from_numpy(d.x_test)
    assert torch.allclose(plain(x), q(x), atol=1e-5)


@pytest.mark.trains
def test_cnn_batchnorm_folding_and_w4a8(seed, measured) -> None:
    m = trained_digits_cnn(seed)
    d = digits_data()
    x = torch.from_numpy(d.x_test)
    folded = fold_batchnorm(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert torch.allclose(folded(x), m(x), atol=1e-4)
    calib = [torch.from_numpy(d.x_train[i:i + 128]) for i in range(0, 512, 128)]
    p = simulate_ptq(m, calib, weight_bits=4, act_bits=8)
    assert sum(isinstance(mod, FakeQuantConv2d) for mod in p.modules()) == 4
    drop = measured("W4A8 PTQ: accuracy drop", accuracy_of(m, d.x_test, d.y_test) - accuracy_of(p, d.x_test, d.y_test),
                    "upper")
    assert drop <= W4A8_CNN_DROP
