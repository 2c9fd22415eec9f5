"""Deep Compression options for conv nets: BatchNorm folding, distillation during fine-tuning,
per-layer k-means bits (issue 16, session c)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.codec import DeepCompressionConfig, pack, tensors_equal, unpack
from deepshrink.codec.compress import fold_batchnorm
from deepshrink.errors import InputError, UnsupportedError


class _Net(nn.Module):
    """conv → BN → ReLU twice (the second conv has a bias), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1, bias=True)
        self.b2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class _Shared(nn.Module):
    """One BatchNorm applied after two different convs: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.c(x))
        return x


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    m = _Net()
    with torch.no_grad():  # non-trivial statistics so folding has something to do
        for bn in (m.b1, m.b2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3.0)
        m.c2.bias.uniform_(-0.3, 0.3)
    return m.eval()


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 3:].mean(axis=(1, 2)) > 0)
    return x, y


def test_fold_batchnorm_keeps_the_function() -> None:
    m = _net()
    x = torch.from_numpy(_data()[0])
    ref = m(x)
    folded = fold_batchnorm(m)
    assert folded == [m.b1, m.b2]
    # float rounding only: outputs are O(1)
    assert torch.allclose(m(x), ref, atol=1e-5) and not torch.equal(m.c1.weight, _net().c1.weight)
    for bn in folded:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(m.c2.bias, torch.zeros_like(m.c2.bias))  # moved into b2's shift


def test_fold_batchnorm_leaves_shared_or_untraceable_alone() -> None:
    m = _Shared().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert fold_batchnorm(m) == []
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(UnsupportedError, match="torch.fx"):
        fold_batchnorm(_Untraceable())
    assert fold_batchnorm(nn.Sequential(nn.Linear(2, 2))) == []  # no BatchNorm: nothing traced


def test_pack_with_fold_distill_and_layer_bits(tmp_path) -> None:
    m = _net()
    x, y = _data()
    cfg = DeepCompressionConfig(fc_sparsity=0.5, conv_sparsity=0.6, conv_bits=3, fc_bits=2, other_bits=3,
                                layer_bits={"c1": 4, "fc.bias": 2}, fold_bn=True, distill=True,
                                prune_epochs=2, finetune_epochs=2, batch_size=32)
    out = tmp_path / "n.dsz"
    res = pack(m, cfg, output=out, data=(x, y))
    clusters = {s.name: s.clusters for s in res.stats}
    assert clusters["c1.weight"] > 8 and clusters["c1.weight"] <= 16  # 4 bits wins over conv_bits 3
    assert clusters["c2.weight"] <= 8 and clusters["fc.weight"] <= 4
    # fc.bias: 3 values ≤ 2^2, so only rounded to float16
    assert clusters["fc.bias"] == 3
    st = res.tensors
    assert np.all(st["b1.weight"] == 1) and np.all(st["b2.running_var"] == 1) and np.all(st["b1.running_mean"] == 0)
    # the folded norms' constants are constant tensors (.dsz version 3: value in the metadata, no record)
    rec = {r.name: r for r in res.records}
    assert {rec[f"b{i}.{t}"].encoding for i in (1, 2) for t in ("weight", "running_mean", "running_var")} == {"constant"}
    assert out.read_bytes()[4] == 3 and {rec[f"b{i}.weight"].nbytes for i in (1, 2)} == {0}
    assert tensors_equal(unpack(out).tensors, res.tensors)
    # the input model is not modified
    assert torch.equal(m.b1.running_var, _net().b1.running_var)


def test_distillation_changes_the_fine_tuning() -> None:
    x, y = _data()
    base = DeepCompressionConfig(fc_sparsity=0.5, conv_sparsity=0.5, conv_bits=3, fc_bits=3, other_bits=3,
                                 prune_epochs=1, finetune_epochs=1, batch_size=32)
    a = pack(_net(), base, data=(x, y)).tensors
    b = pack(_net(), base.replace(distill=True), data=(x, y)).tensors
    c = pack(_net(), base.replace(distill=True, kd_alpha=0.0), data=(x, y)).tensors
    assert not tensors_equal(a, b)
    assert tensors_equal(a, c)  # alpha 0: the plain cross-entropy, bit for bit


def test_new_options_reject_bad_input() -> None:
    with pytest.raises(InputError, match="layer_bits"):
        DeepCompressionConfig.build(layer_bits={"c1": 1})
    with pytest.raises(InputError, match="kd_alpha"):
        DeepCompressionConfig.build(kd_alpha=1.5)
    cfg = DeepCompressionConfig(layer_bits={"nope*": 4}, prune_epochs=0, finetune_epochs=0)
    with pytest.raises(InputError, match="nope"):
        pack(_net(), cfg)
    cfg = DeepCompressionConfig(fold_bn=True, prune_epochs=0, finetune_epochs=0)
    with pytest.raises(UnsupportedError, match="torch.fx"):
        pack(_Untraceable(), cfg)
    assert DeepCompressionConfig.from_dict(cfg.to_dict()) == cfg


def test_kernel_masks_zero_whole_kernels_first() -> None:
    from deepshrink.codec.compress import kernel_masks

    torch.manual_seed(0)
    conv, lin = nn.Conv2d(4, 5, 3), nn.Linear(8, 4)
    masks = kernel_masks({"conv": conv, "lin": lin}, sparsity=0.6, kernel_sparsity=0.5)
    kernels = masks["conv"].reshape(20, 9)
    assert int((masks["conv"] == 0).sum()) == round(0.6 * 180)
    dead = kernels.sum(dim=1) == 0
    assert int(dead.sum()) == 10  # half the kernels whole
    # the dead kernels are the 10 of smallest L2 norm
    norms = conv.weight.detach().reshape(20, 9).norm(dim=1)
    assert set(torch.argsort(norms)[:10].tolist()) == set(torch.nonzero(dead).reshape(-1).tolist())
    # Linear layers: plain magnitude (the 19 smallest of 32 weights)
    w = lin.weight.detach().abs().reshape(-1)
    assert torch.equal(masks["lin"].reshape(-1) == 0, w <= torch.sort(w).values[18])
    # a kernel share above the sparsity raises the zeros to whole kernels
    assert int((kernel_masks({"c": conv}, 0.1, 0.5)["c"] == 0).sum()) == 90


def test_pack_with_kernel_sparsity(tmp_path) -> None:
    x, y = _data()
    cfg = DeepCompressionConfig(fc_sparsity=0.3, conv_sparsity=0.75, kernel_sparsity=0.5, conv_bits=3, fc_bits=3,
                                other_bits=3, prune_epochs=2, finetune_epochs=1, batch_size=32)
    res = pack(_net(), cfg, output=tmp_path / "k.dsz", data=(x, y))
    w = res.tensors["c2.weight"].reshape(-1, 9)
    assert (w == 0).mean() == pytest.approx(0.75, abs=1 / w.size)
    assert (np.abs(w).sum(axis=1) == 0).sum() >= round(0.5 * len(w))
    assert int((res.tensors["fc.weight"] == 0).sum()) == round(0.3 * 18)  # fc: no kernels, plain magnitude
    assert tensors_equal(unpack(tmp_path / "k.dsz").tensors, res.tensors)
