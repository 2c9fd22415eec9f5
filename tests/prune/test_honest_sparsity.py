"""The sparsity a prune reports is the share of zeros in all of the model's weight matrices, and the
matrices unstructured pruning left dense are named (a GRU's weights, attention in-projections)."""

import torch

from deepshrink.prune import MagnitudePruneConfig, prune_with_report


def test_gru_weights_left_dense_are_counted_and_named(gru_classifier):
    m, rep = prune_with_report(gru_classifier, MagnitudePruneConfig(sparsity=0.5), example_inputs=(torch.zeros(2, 8, 8),),
                               progress=False)
    mats = [p for n, p in m.named_parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in mats) / sum(p.numel() for p in mats)
    assert abs(rep.sparsity_after - zeros) < 1e-9 and rep.sparsity_after < 0.05  # 240 of 8,544: 2.8 %
    assert any("gru.weight_ih_l0" in w and "left dense" in w and "94%" in w for w in rep.warnings), rep.warnings
